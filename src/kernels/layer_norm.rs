//! Launchers for `kernels/layer_norm.cu`.

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
};

use super::KernelModule;
use super::raw::{check_len, ptr, ptr_mut};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// Mirrors `LayerNormArgs` in `kernels/layer_norm.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LayerNormArgs {
    x: u64,
    gamma: u64,
    beta: u64,
    y: u64,
    add: u64,
    y_plus: u64,
    rows: i64,
    c: i32,
    eps: f32,
}

// SAFETY: plain old data with the C struct's layout.
unsafe impl DeviceRepr for LayerNormArgs {}

/// Rows per block: one warp each.
const ROWS_PER_BLOCK: usize = 8;

/// `layer_norm_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct LayerNormKernel {
    kernel: Kernel,
}

/// The optional fused sum `y_plus = LN(x) * gamma + beta + add`: `(add, y_plus)`.
pub type PlusOutput<'a> = (CudaView<'a, f32>, CudaViewMut<'a, f32>);

impl LayerNormKernel {
    pub fn load(gpu: &Gpu) -> Result<LayerNormKernel> {
        Ok(LayerNormKernel {
            kernel: gpu.kernel(KernelModule::LayerNorm, "layer_norm_f32")?,
        })
    }

    /// `y = LN(x) * gamma + beta` over rows of `c` (`x`, `y` hold `rows * c`), and
    /// optionally `y_plus = y + add`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<f32>,
        gamma: &impl DevicePtr<f32>,
        beta: &impl DevicePtr<f32>,
        eps: f32,
        y: &mut impl DevicePtrMut<f32>,
        plus: Option<PlusOutput<'_>>,
    ) -> Result<()> {
        let name = self.kernel.name();
        let c = gamma.len();
        check_len(name, "beta", beta.len(), c)?;
        let rows = x.len().checked_div(c).unwrap_or(0);
        check_len(name, "x", x.len(), rows * c)?;
        check_len(name, "y", y.len(), rows * c)?;
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
            x: ptr(x, stream),
            gamma: ptr(gamma, stream),
            beta: ptr(beta, stream),
            y: ptr_mut(y, stream),
            add,
            y_plus,
            rows: rows as i64,
            c: c as i32,
            eps,
        };
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1),
            block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `args` mirrors the kernel's struct; all buffers hold rows * c elements.
        unsafe { self.kernel.on(stream).arg(&args).go(cfg) }
    }
}
