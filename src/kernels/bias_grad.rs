//! Launcher for `kernels/bias_grad.cu`: a linear layer's bias gradient, the column sums of
//! its output gradient.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::launch::{Args, elementwise};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// `bias_grad_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct BiasGradKernels {
    kernel: Kernel,
}

impl BiasGradKernels {
    pub fn load(gpu: &Gpu) -> Result<BiasGradKernels> {
        Ok(BiasGradKernels {
            kernel: gpu.kernel(KernelModule::BiasGrad, "bias_grad_f32")?,
        })
    }

    /// `db[c] = sum_r dy[r, c]` over `rows x cols` of `dy`.
    pub fn run(
        &self,
        stream: &CudaStream,
        dy: &impl DevicePtr<f32>,
        db: &mut impl DevicePtrMut<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let args = Args::new(&self.kernel, stream)
            .input("dy", dy, rows * cols)?
            .output("db", db, cols)?
            .int("rows", rows)?
            .int("cols", cols)?;
        // SAFETY: bias_grad_f32(const float* dy, float* db, int rows, int cols); sizes checked.
        unsafe { args.launch(elementwise(cols)) }
    }
}
