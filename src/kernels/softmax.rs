//! Launchers for `kernels/softmax.cu`: softmax over rows, and its backward, in place.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::launch::{Args, warp_rows};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// `softmax_f32` and `softmax_backward_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct SoftmaxKernels {
    forward: Kernel,
    backward: Kernel,
}

impl SoftmaxKernels {
    pub fn load(gpu: &Gpu) -> Result<SoftmaxKernels> {
        let k = |name| gpu.kernel(KernelModule::Softmax, name);
        Ok(SoftmaxKernels {
            forward: k("softmax_f32")?,
            backward: k("softmax_backward_f32")?,
        })
    }

    /// Softmax of each row of `s` (`rows x cols`), in place.
    pub fn forward(
        &self,
        stream: &CudaStream,
        s: &mut impl DevicePtrMut<f32>,
        (rows, cols): (usize, usize),
    ) -> Result<()> {
        let args = Args::new(&self.forward, stream)
            .output("s", s, rows * cols)?
            .int("rows", rows)?
            .int("cols", cols)?;
        // SAFETY: softmax_f32(float* s, int rows, int cols); one warp per row, size checked.
        unsafe { args.launch(warp_rows(rows)) }
    }

    /// The backward in place: `dp = scale * p * (dp - rowsum(p * dp))`.
    pub fn backward(
        &self,
        stream: &CudaStream,
        p: &impl DevicePtr<f32>,
        dp: &mut impl DevicePtrMut<f32>,
        (rows, cols): (usize, usize),
        scale: f32,
    ) -> Result<()> {
        let args = Args::new(&self.backward, stream)
            .input("p", p, rows * cols)?
            .output("dp", dp, rows * cols)?
            .int("rows", rows)?
            .int("cols", cols)?
            .float(scale);
        // SAFETY: softmax_backward_f32(const float* p, float* dp, int rows, int cols,
        // float scale); one warp per row, sizes checked.
        unsafe { args.launch(warp_rows(rows)) }
    }
}
