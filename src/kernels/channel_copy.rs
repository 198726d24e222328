//! `channel_copy`: the copies of the CNNs' channel plumbing (DenseNet's concatenation,
//! ShuffleNet's channel split and shuffle, the NHWC-to-PyTorch flatten, and their
//! backwards, and the CNN filters' layout change from the f32 parameters), as one strided,
//! optionally transposing copy (`kernels/channel_copy.cu`) from f32 or bf16 to f32 or bf16.
//! [`cpu`] is its reference; [`Copy2d`] describes one copy.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::conv2d::Element;
use super::launch::{Args, check_at_least, elementwise, ptr, ptr_mut};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};

pub use cpu::Copy2d;

/// The four `channel_copy` variants, loaded once, at `2 * bf16(source) + bf16(destination)`.
#[derive(Debug, Clone)]
pub struct ChannelCopyKernels {
    kernels: [Kernel; 4],
}

impl ChannelCopyKernels {
    pub fn load(gpu: &Gpu) -> Result<ChannelCopyKernels> {
        let k = |name| gpu.kernel(KernelModule::ChannelCopy, name);
        Ok(ChannelCopyKernels {
            kernels: [
                k("channel_copy_f32")?,
                k("channel_copy_f32_to_bf16")?,
                k("channel_copy_bf16_to_f32")?,
                k("channel_copy_bf16")?,
            ],
        })
    }

    /// `copy` from `x` into `y` (added to `y` when `accumulate`), converting from `X` to `Y`
    /// (rounded to nearest even, as [`crate::kernels::cast`]).
    pub fn run<X: Element, Y: Element>(
        &self,
        stream: &CudaStream,
        copy: &Copy2d,
        x: &impl DevicePtr<X>,
        y: &mut impl DevicePtrMut<Y>,
        accumulate: bool,
    ) -> Result<()> {
        let name = self.kernel::<X, Y>().name();
        check_at_least(name, "x", x.len(), copy.x_len())?;
        check_at_least(name, "y", y.len(), copy.y_len())?;
        let (x, y) = (ptr(x, stream), ptr_mut(y, stream));
        // SAFETY: x and y were checked to hold the values the copy covers.
        unsafe { self.run_at::<X, Y>(stream, copy, x, y, accumulate) }
    }

    /// [`Self::run`] on raw device addresses, for launchers that hold their buffers as
    /// addresses (the convolutions' channel-major path, [`super::conv2d`]).
    ///
    /// # Safety
    /// `x` and `y` must address at least `copy.x_len()` values of `X` and `copy.y_len()` of
    /// `Y` on `stream`'s device, live until the copy has run.
    pub(crate) unsafe fn run_at<X: Element, Y: Element>(
        &self,
        stream: &CudaStream,
        copy: &Copy2d,
        x: u64,
        y: u64,
        accumulate: bool,
    ) -> Result<()> {
        let kernel = self.kernel::<X, Y>();
        copy.check().map_err(|p| Error::invalid(kernel.name(), p))?;
        let n = copy.rows * copy.a * copy.b;
        let args = Args::new(kernel, stream)
            .address(x)
            .address(y)
            .long(copy.rows)
            .int("x stride", copy.x_stride)?
            .int("x offset", copy.x_off)?
            .int("y stride", copy.y_stride)?
            .int("y offset", copy.y_off)?
            .int("a", copy.a)?
            .int("b", copy.b)?
            .int("accumulate", usize::from(accumulate))?;
        // SAFETY: channel_copy_<variant>(const X* x, Y* y, long long rows, int x_stride, int
        // x_off, int y_stride, int y_off, int a, int b, int accumulate); check keeps every
        // block inside its row, and x and y hold the rows (the caller's promise).
        unsafe { args.launch(elementwise(n)) }
    }

    /// The variant from `X` to `Y`.
    fn kernel<X: Element, Y: Element>(&self) -> &Kernel {
        let bf16 = |name: &str| usize::from(name == "bf16");
        &self.kernels[2 * bf16(X::NAME) + bf16(Y::NAME)]
    }
}
