//! Launchers for `kernels/layer_norm.cu`: `y = LN(sum of parts + bias + residual)`, the same
//! forward saving what the backward reads, and the backward.

pub mod cpu;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr};

use super::KernelModule;
use super::launch::{Args, check_len, opt_ptr, ptr, ptr_mut, warp_rows};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};

/// Mirrors `LayerNormArgs` in `kernels/layer_norm.cuh` (also a parameter of `linear.cu`'s
/// `linear_rows_split_k_norm_*`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LayerNormArgs {
    parts: u64,
    bias: u64,
    residual: u64,
    gamma: u64,
    beta: u64,
    y: u64,
    add: u64,
    y_plus: u64,
    xhat: u64,
    rstd: u64,
    rows: i64,
    part_stride: i64,
    c: i32,
    n_parts: i32,
    eps: f32,
}

// SAFETY: plain old data with the C struct's layout.
unsafe impl DeviceRepr for LayerNormArgs {}

// The size `static_assert`ed in the .cu file: the two sides must change together.
const _: () = assert!(std::mem::size_of::<LayerNormArgs>() == 112);

/// The widest row the forward keeps in registers (`MAX_C` in `layer_norm.cuh`).
pub const MAX_WIDTH: usize = 1024;

/// What is normalised: `parts[0] + ... + parts[n-1] + bias + residual` per row, where
/// `parts` holds `n_parts` blocks of `(rows, c)` (the partial products of a k-split linear).
pub struct NormInput<'a> {
    pub parts: CudaView<'a, f32>,
    pub n_parts: usize,
    /// `(c)`.
    pub bias: Option<CudaView<'a, f32>>,
    /// `(rows, c)`.
    pub residual: Option<CudaView<'a, f32>>,
}

impl<'a> NormInput<'a> {
    /// Plain LayerNorm of `x`.
    pub fn of(x: CudaView<'a, f32>) -> NormInput<'a> {
        NormInput {
            parts: x,
            n_parts: 1,
            bias: None,
            residual: None,
        }
    }
}

/// The optional fused sum `y_plus = y + add`: `(add, y_plus)`.
pub type PlusOutput<'a> = (CudaView<'a, f32>, CudaViewMut<'a, f32>);

/// What the forward writes besides `y`.
pub enum Extra<'a> {
    Nothing,
    /// `y_plus = y + add` (inference).
    Plus(PlusOutput<'a>),
    /// `xhat` and `rstd` for the backward (training).
    Saved(Saved<'a>),
}

/// What the training forward keeps for the backward: `xhat` `(rows, c)`, the normalised
/// input, and `rstd` `(rows)`, each row's `1 / std`.
pub struct Saved<'a> {
    pub xhat: CudaViewMut<'a, f32>,
    pub rstd: CudaViewMut<'a, f32>,
}

impl LayerNormArgs {
    /// The forward's arguments for rows of `c = gamma.len()` (1 to [`MAX_WIDTH`]) written to
    /// `y` (`rows = y.len() / c`), with no parts, bias or residual yet.
    pub(super) fn forward(
        name: &str,
        stream: &CudaStream,
        gamma: &impl DevicePtr<f32>,
        beta: &impl DevicePtr<f32>,
        eps: f32,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<LayerNormArgs> {
        let c = gamma.len();
        if c == 0 || c > MAX_WIDTH {
            return Err(Error::invalid(
                name,
                format!("rows of {c} (1 to {MAX_WIDTH})"),
            ));
        }
        check_len(name, "beta", beta.len(), c)?;
        let rows = y.len() / c;
        check_len(name, "y", y.len(), rows * c)?;
        Ok(LayerNormArgs {
            gamma: ptr(gamma, stream),
            beta: ptr(beta, stream),
            y: ptr_mut(y, stream),
            rows: rows as i64,
            part_stride: (rows * c) as i64,
            c: c as i32,
            eps,
            ..LayerNormArgs::default()
        })
    }

    /// What is summed before the residual: `n_parts` blocks of `(rows, c)` at `parts`, and
    /// the `(c)` bias at `bias` (0: none). The caller has checked both lengths.
    pub(super) fn sum_of(&mut self, parts: u64, n_parts: usize, bias: u64) {
        (self.parts, self.n_parts, self.bias) = (parts, n_parts as i32, bias);
    }

    /// Adds the optional `(rows, c)` residual.
    pub(super) fn residual_from(
        &mut self,
        name: &str,
        residual: Option<&CudaView<'_, f32>>,
        stream: &CudaStream,
    ) -> Result<()> {
        if let Some(r) = residual {
            check_len(
                name,
                "residual",
                r.len(),
                (self.rows * self.c as i64) as usize,
            )?;
        }
        self.residual = opt_ptr(residual, stream);
        Ok(())
    }

    /// Adds `y_plus = y + add`, both `(rows, c)`.
    pub(super) fn plus_from(
        &mut self,
        name: &str,
        (add, mut y_plus): PlusOutput<'_>,
        stream: &CudaStream,
    ) -> Result<()> {
        let len = (self.rows * self.c as i64) as usize;
        check_len(name, "add", add.len(), len)?;
        check_len(name, "y_plus", y_plus.len(), len)?;
        self.add = ptr(&add, stream);
        self.y_plus = ptr_mut(&mut y_plus, stream);
        Ok(())
    }
}

/// The forwards' row widths: `add_layer_norm_f32_cW` and `layer_norm_f32_cW` (and `linear.cu`'s
/// `linear_rows_split_k_norm_cW_*`) take rows of at most `W`, a lane holding `W / 32` values in
/// registers; a launch takes the narrowest that holds its rows (fewer registers, more warps
/// resident).
pub(crate) const FORWARD_WIDTHS: [usize; 3] = [256, 512, MAX_WIDTH];

/// The index in [`FORWARD_WIDTHS`] of the narrowest forward that holds rows of `c` (past
/// [`MAX_WIDTH`] the widest, whose name the width error then names).
pub(crate) fn forward_width(c: usize) -> usize {
    FORWARD_WIDTHS
        .iter()
        .position(|&w| c <= w)
        .unwrap_or(FORWARD_WIDTHS.len() - 1)
}

/// `add_layer_norm_f32_c*` (inference), `layer_norm_f32_c*` (training: also saves `xhat` and
/// `rstd`), one of each per [`FORWARD_WIDTHS`], and `layer_norm_backward_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct LayerNormKernels {
    forward: [Kernel; FORWARD_WIDTHS.len()],
    forward_saving: [Kernel; FORWARD_WIDTHS.len()],
    backward: Kernel,
}

impl LayerNormKernels {
    pub fn load(gpu: &Gpu) -> Result<LayerNormKernels> {
        let k = |name| gpu.kernel(KernelModule::LayerNorm, name);
        Ok(LayerNormKernels {
            forward: [
                k("add_layer_norm_f32_c256")?,
                k("add_layer_norm_f32_c512")?,
                k("add_layer_norm_f32_c1024")?,
            ],
            forward_saving: [
                k("layer_norm_f32_c256")?,
                k("layer_norm_f32_c512")?,
                k("layer_norm_f32_c1024")?,
            ],
            backward: k("layer_norm_backward_f32")?,
        })
    }

    /// `y = LN(input) * gamma + beta` over rows of `c = gamma.len()` (at most
    /// [`MAX_WIDTH`]), and what `extra` asks for: `y_plus = y + add`, or (the training
    /// forward, `layer_norm_f32_c*`) `xhat` and `rstd` for the backward.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        stream: &CudaStream,
        input: NormInput<'_>,
        gamma: &impl DevicePtr<f32>,
        beta: &impl DevicePtr<f32>,
        eps: f32,
        y: &mut impl DevicePtrMut<f32>,
        extra: Extra<'_>,
    ) -> Result<()> {
        let family = match extra {
            Extra::Saved(_) => &self.forward_saving,
            _ => &self.forward,
        };
        let kernel = &family[forward_width(gamma.len())];
        let name = kernel.name();
        let mut args = LayerNormArgs::forward(name, stream, gamma, beta, eps, y)?;
        let (rows, c) = (args.rows as usize, args.c as usize);
        if input.n_parts == 0 {
            return Err(Error::invalid(name, "0 parts"));
        }
        check_len(name, "parts", input.parts.len(), input.n_parts * rows * c)?;
        if let Some(b) = &input.bias {
            check_len(name, "bias", b.len(), c)?;
        }
        let bias = opt_ptr(input.bias.as_ref(), stream);
        args.sum_of(ptr(&input.parts, stream), input.n_parts, bias);
        args.residual_from(name, input.residual.as_ref(), stream)?;
        match extra {
            Extra::Nothing => {}
            Extra::Plus(plus) => args.plus_from(name, plus, stream)?,
            Extra::Saved(mut saved) => {
                check_len(name, "xhat", saved.xhat.len(), rows * c)?;
                check_len(name, "rstd", saved.rstd.len(), rows)?;
                args.xhat = ptr_mut(&mut saved.xhat, stream);
                args.rstd = ptr_mut(&mut saved.rstd, stream);
            }
        }
        if rows == 0 {
            return Ok(());
        }
        // SAFETY: `args` mirrors the kernel's struct; every buffer was checked against the
        // rows and parts the kernel reads or writes. One warp per row, 8 rows a block.
        unsafe { kernel.on(stream).arg(&args).go(warp_rows(rows)) }
    }

    /// The backward over `rows x d`, from the forward's saved `xhat` and `rstd`: `dx` (added
    /// to when `accumulate`), and `dyxhat = dy * xhat`, whose column sums are gamma's gradient
    /// (beta's are dy's).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        stream: &CudaStream,
        dy: &impl DevicePtr<f32>,
        (xhat, rstd): (&impl DevicePtr<f32>, &impl DevicePtr<f32>),
        gamma: &impl DevicePtr<f32>,
        dx: &mut impl DevicePtrMut<f32>,
        dyxhat: &mut impl DevicePtrMut<f32>,
        (rows, d): (usize, usize),
        accumulate: bool,
    ) -> Result<()> {
        let args = Args::new(&self.backward, stream)
            .input("dy", dy, rows * d)?
            .input("xhat", xhat, rows * d)?
            .input("rstd", rstd, rows)?
            .input("gamma", gamma, d)?
            .output("dx", dx, rows * d)?
            .output("dyxhat", dyxhat, rows * d)?
            .int("rows", rows)?
            .int("d", d)?
            .int("accumulate", usize::from(accumulate))?;
        // SAFETY: layer_norm_backward_f32(const float* dy, const float* xhat, const float*
        // rstd, const float* gamma, float* dx, float* dyxhat, int rows, int d,
        // int accumulate); one warp per row, sizes checked.
        unsafe { args.launch(warp_rows(rows)) }
    }
}
