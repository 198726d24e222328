//! Launcher for `kernels/softmax_cross_entropy.cu`: the models' loss and its gradient.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::launch::{Args, warp_rows};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// `softmax_cross_entropy_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct SoftmaxCrossEntropyKernels {
    kernel: Kernel,
}

impl SoftmaxCrossEntropyKernels {
    pub fn load(gpu: &Gpu) -> Result<SoftmaxCrossEntropyKernels> {
        Ok(SoftmaxCrossEntropyKernels {
            kernel: gpu.kernel(
                KernelModule::SoftmaxCrossEntropy,
                "softmax_cross_entropy_f32",
            )?,
        })
    }

    /// Softmax cross-entropy over `rows x cols` logits: writes `dlogits = scale * (softmax -
    /// onehot)` and adds the scaled loss and the correct count to `stats[0]`, `stats[1]`
    /// (zero them first).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        stream: &CudaStream,
        logits: &impl DevicePtr<f32>,
        labels: &impl DevicePtr<u32>,
        dlogits: &mut impl DevicePtrMut<f32>,
        stats: &mut impl DevicePtrMut<f32>,
        (rows, cols): (usize, usize),
        scale: f32,
    ) -> Result<()> {
        let args = Args::new(&self.kernel, stream)
            .input("logits", logits, rows * cols)?
            .input("labels", labels, rows)?
            .output("dlogits", dlogits, rows * cols)?
            .output("stats", stats, 2)?
            .int("rows", rows)?
            .int("cols", cols)?
            .float(scale);
        // SAFETY: softmax_cross_entropy_f32(const float*, const unsigned*, float*, float*,
        // int rows, int cols, float scale); one warp per row, sizes checked.
        unsafe { args.launch(warp_rows(rows)) }
    }
}
