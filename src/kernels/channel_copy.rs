//! `channel_copy`: the copies of the CNNs' channel plumbing (DenseNet's concatenation,
//! ShuffleNet's channel split and shuffle, the NHWC-to-PyTorch flatten, and their
//! backwards), as one strided, optionally transposing copy (`kernels/channel_copy.cu`), f32
//! or bf16. [`cpu`] is its reference; [`Copy2d`] describes one copy.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::conv2d::Element;
use super::launch::{Args, by_dtype, elementwise};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};

pub use cpu::Copy2d;

/// `channel_copy_f32` and `channel_copy_bf16`, loaded once.
#[derive(Debug, Clone)]
pub struct ChannelCopyKernels {
    kernels: [Kernel; 2],
}

impl ChannelCopyKernels {
    pub fn load(gpu: &Gpu) -> Result<ChannelCopyKernels> {
        let k = |name| gpu.kernel(KernelModule::ChannelCopy, name);
        Ok(ChannelCopyKernels {
            kernels: [k("channel_copy_f32")?, k("channel_copy_bf16")?],
        })
    }

    /// `copy` from `x` into `y` (added to `y` when `accumulate`).
    pub fn run<T: Element>(
        &self,
        stream: &CudaStream,
        copy: &Copy2d,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<()> {
        let kernel = by_dtype::<T>(&self.kernels);
        copy.check().map_err(|p| Error::invalid(kernel.name(), p))?;
        let n = copy.rows * copy.a * copy.b;
        let args = Args::new(kernel, stream)
            .input("x", x, copy.x_len())?
            .output("y", y, copy.y_len())?
            .long(copy.rows)
            .int("x stride", copy.x_stride)?
            .int("x offset", copy.x_off)?
            .int("y stride", copy.y_stride)?
            .int("y offset", copy.y_off)?
            .int("a", copy.a)?
            .int("b", copy.b)?
            .int("accumulate", usize::from(accumulate))?;
        // SAFETY: channel_copy_<dtype>(const T* x, T* y, long long rows, int x_stride, int
        // x_off, int y_stride, int y_off, int a, int b, int accumulate); check keeps every
        // block inside its row, and x and y hold the rows.
        unsafe { args.launch(elementwise(n)) }
    }
}
