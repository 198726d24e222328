//! Launcher for `kernels/layer_norm.cu`: `y = LN(sum of parts + bias + residual)`.

use cudarc::driver::LaunchConfig;
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr};

use super::KernelModule;
use super::raw::{opt_ptr, ptr, ptr_mut};
use super::shape::check_len;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};

/// Mirrors `LayerNormArgs` in `kernels/layer_norm.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LayerNormArgs {
    parts: u64,
    bias: u64,
    residual: u64,
    gamma: u64,
    beta: u64,
    y: u64,
    add: u64,
    y_plus: u64,
    rows: i64,
    part_stride: i64,
    c: i32,
    n_parts: i32,
    eps: f32,
}

// SAFETY: plain old data with the C struct's layout.
unsafe impl DeviceRepr for LayerNormArgs {}

/// Rows per block: one warp each.
const ROWS_PER_BLOCK: usize = 8;
/// The widest row the kernel keeps in registers (`MAX_C` in the .cu file).
const MAX_C: usize = 1024;

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

/// `add_layer_norm_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct LayerNormKernel {
    kernel: Kernel,
}

impl LayerNormKernel {
    pub fn load(gpu: &Gpu) -> Result<LayerNormKernel> {
        Ok(LayerNormKernel {
            kernel: gpu.kernel(KernelModule::LayerNorm, "add_layer_norm_f32")?,
        })
    }

    /// `y = LN(input) * gamma + beta` over rows of `c = gamma.len()`, and optionally
    /// `y_plus = y + add`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        stream: &CudaStream,
        input: NormInput<'_>,
        gamma: &impl DevicePtr<f32>,
        beta: &impl DevicePtr<f32>,
        eps: f32,
        y: &mut impl DevicePtrMut<f32>,
        plus: Option<PlusOutput<'_>>,
    ) -> Result<()> {
        let name = self.kernel.name();
        let c = gamma.len();
        if c == 0 || c > MAX_C || input.n_parts == 0 {
            return Err(Error::invalid(
                name,
                format!("rows of {c} (1 to {MAX_C}) and {} parts", input.n_parts),
            ));
        }
        check_len(name, "beta", beta.len(), c)?;
        let rows = y.len() / c;
        check_len(name, "y", y.len(), rows * c)?;
        check_len(name, "parts", input.parts.len(), input.n_parts * rows * c)?;
        if let Some(b) = &input.bias {
            check_len(name, "bias", b.len(), c)?;
        }
        if let Some(r) = &input.residual {
            check_len(name, "residual", r.len(), rows * c)?;
        }
        let (add, y_plus) = match plus {
            Some((add, mut y_plus)) => {
                check_len(name, "add", add.len(), rows * c)?;
                check_len(name, "y_plus", y_plus.len(), rows * c)?;
                (ptr(&add, stream), ptr_mut(&mut y_plus, stream))
            }
            None => (0, 0),
        };
        if rows == 0 {
            return Ok(());
        }
        let args = LayerNormArgs {
            parts: ptr(&input.parts, stream),
            bias: opt_ptr(input.bias.as_ref(), stream),
            residual: opt_ptr(input.residual.as_ref(), stream),
            gamma: ptr(gamma, stream),
            beta: ptr(beta, stream),
            y: ptr_mut(y, stream),
            add,
            y_plus,
            rows: rows as i64,
            part_stride: (rows * c) as i64,
            c: c as i32,
            n_parts: input.n_parts as i32,
            eps,
        };
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1),
            block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `args` mirrors the kernel's struct; every buffer was checked against the
        // rows and parts the kernel reads or writes.
        unsafe { self.kernel.on(stream).arg(&args).go(cfg) }
    }
}
