//! Launchers for `kernels/linear.cu`: `out = x W^T + bias` with a fused epilogue.

use cudarc::driver::{CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig};

use super::KernelModule;
use super::raw::{check_len, opt_ptr, ptr, ptr_mut};
use crate::error::{Error, Result};
use crate::gpu::{DeviceBuffer, Gpu, Kernel};

/// Mirrors `LinearArgs` in `kernels/linear.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LinearArgs {
    x: u64,
    weight: u64,
    bias: u64,
    residual: u64,
    out: u64,
    token_slot: u64,
    n: i64,
    m: i64,
    k: i64,
    scale: f32,
    batch: i32,
    l_all: i32,
    heads: i32,
    hd: i32,
}

// SAFETY: plain old data with the C struct's layout (`#[repr(C)]`, same field order).
unsafe impl DeviceRepr for LinearArgs {}

/// The tile edge of the kernel's output blocks (`BM`, `BN` in the .cu file).
const TILE: usize = 64;
const THREADS: u32 = 256;

/// What happens to each result element `acc` (row `r`, column `c`).
#[derive(Debug)]
pub enum Epilogue<'a> {
    /// `out[r][c] = (acc + bias[c]) * scale`.
    Bias { scale: f32 },
    /// `out[r][c] = relu(acc + bias[c])`.
    BiasRelu,
    /// `out[r][c] = acc + bias[c] + residual[r][c]`.
    BiasResidual { residual: CudaView<'a, f32> },
    /// The encoder's QKV projection (`m = 3c`, rows `token * batch + b`): q (times `scale`),
    /// k and v go to `out[which][head][b][slot][hd]` with `slot = token_slot[head][token]`.
    QkvWindows {
        token_slot: &'a DeviceBuffer<u32>,
        batch: usize,
        heads: usize,
        scale: f32,
    },
}

/// The kernels of `linear.cu`, loaded once.
#[derive(Debug, Clone)]
pub struct LinearKernels {
    bias: Kernel,
    bias_relu: Kernel,
    bias_residual: Kernel,
    qkv_windows: Kernel,
}

impl LinearKernels {
    pub fn load(gpu: &Gpu) -> Result<LinearKernels> {
        let k = |name| gpu.kernel(KernelModule::Linear, name);
        Ok(LinearKernels {
            bias: k("linear_bias_f32")?,
            bias_relu: k("linear_bias_relu_f32")?,
            bias_residual: k("linear_bias_residual_f32")?,
            qkv_windows: k("linear_qkv_windows_f32")?,
        })
    }

    /// `out = epilogue(x W^T + bias)` with `x` `(n, k)`, `weight` `(m, k)`, `bias` `(m)`; `out`
    /// is `(n, m)` (for `QkvWindows`, `3 * n * m / 3` elements in the window layout).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<f32>,
        weight: &impl DevicePtr<f32>,
        bias: &impl DevicePtr<f32>,
        (n, m, k): (usize, usize, usize),
        out: &mut impl DevicePtrMut<f32>,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        let kernel = match &epilogue {
            Epilogue::Bias { .. } => &self.bias,
            Epilogue::BiasRelu => &self.bias_relu,
            Epilogue::BiasResidual { .. } => &self.bias_residual,
            Epilogue::QkvWindows { .. } => &self.qkv_windows,
        };
        let name = kernel.name();
        check_len(name, "x", x.len(), n * k)?;
        check_len(name, "weight", weight.len(), m * k)?;
        check_len(name, "bias", bias.len(), m)?;
        check_len(name, "out", out.len(), n * m)?;
        let mut args = LinearArgs {
            x: ptr(x, stream),
            weight: ptr(weight, stream),
            bias: ptr(bias, stream),
            residual: 0,
            out: 0,
            token_slot: 0,
            n: n as i64,
            m: m as i64,
            k: k as i64,
            scale: 1.0,
            batch: 0,
            l_all: 0,
            heads: 0,
            hd: 0,
        };
        match &epilogue {
            Epilogue::Bias { scale } => args.scale = *scale,
            Epilogue::BiasRelu => {}
            Epilogue::BiasResidual { residual } => {
                check_len(name, "residual", residual.len(), n * m)?;
                args.residual = opt_ptr(Some(residual), stream);
            }
            Epilogue::QkvWindows {
                token_slot,
                batch,
                heads,
                scale,
            } => {
                let c = m / 3;
                if !m.is_multiple_of(3)
                    || *heads == 0
                    || !c.is_multiple_of(*heads)
                    || *batch == 0
                    || !n.is_multiple_of(*batch)
                {
                    return Err(Error::invalid(
                        name,
                        format!(
                            "m = {m} must be 3c with c divisible by {heads} heads, and \
                             n = {n} a multiple of batch {batch}"
                        ),
                    ));
                }
                let l_all = n / batch;
                check_len(name, "token_slot", token_slot.len(), heads * l_all)?;
                args.token_slot = ptr(*token_slot, stream);
                args.scale = *scale;
                args.batch = *batch as i32;
                args.l_all = l_all as i32;
                args.heads = *heads as i32;
                args.hd = (c / heads) as i32;
            }
        }
        args.out = ptr_mut(out, stream);
        let cfg = LaunchConfig {
            grid_dim: (m.div_ceil(TILE) as u32, n.div_ceil(TILE) as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `args` mirrors the kernel's struct; every buffer was checked against the
        // shape the kernel reads or writes.
        unsafe { kernel.on(stream).arg(&args).go(cfg) }
    }
}
