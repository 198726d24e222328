//! `max_pool`: PyTorch's `MaxPool2d` (floor mode, no dilation) over NHWC tensors, with the
//! argmax of every window kept for the backward pass. [`cpu`] is the reference;
//! [`MaxPoolKernels`] launches `kernels/max_pool.cu`: forward in f32 and bf16 (the maximum is
//! one of the inputs, so bf16 loses nothing), backward in f32 and bf16 (f32 sums). Indices are `iy * width + ix`
//! within the image plane, as PyTorch's `return_indices` gives them.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::conv2d::Element;
use super::launch::{Args, by_dtype, elementwise};
use super::pool::Pool2d;
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// `max_pool_<dtype>` and `max_pool_backward_<dtype>`, loaded once.
#[derive(Debug, Clone)]
pub struct MaxPoolKernels {
    forward: [Kernel; 2],
    backward: [Kernel; 2],
}

/// Pushes the geometry arguments every max_pool kernel ends with.
fn geometry<'a>(args: Args<'a>, pool: &Pool2d) -> Result<Args<'a>> {
    let [oh, ow] = pool.out_size();
    args.int("batch", pool.batch)?
        .int("height", pool.height)?
        .int("width", pool.width)?
        .int("channels", pool.channels)?
        .int("out height", oh)?
        .int("out width", ow)?
        .int("kernel", pool.kernel)?
        .int("stride", pool.stride)?
        .int("pad", pool.pad)
}

impl MaxPoolKernels {
    pub fn load(gpu: &Gpu) -> Result<MaxPoolKernels> {
        let k = |name| gpu.kernel(KernelModule::MaxPool, name);
        Ok(MaxPoolKernels {
            forward: [k("max_pool_f32")?, k("max_pool_bf16")?],
            backward: [k("max_pool_backward_f32")?, k("max_pool_backward_bf16")?],
        })
    }

    /// `y` = the maximum of every window of `x`, `idx` = its position (f32 or bf16).
    pub fn forward<T: Element>(
        &self,
        stream: &CudaStream,
        pool: &Pool2d,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
        idx: &mut impl DevicePtrMut<i32>,
    ) -> Result<()> {
        let kernel = by_dtype::<T>(&self.forward);
        // SAFETY: max_pool_<dtype>(const T* x, T* y, int* idx, geometry).
        unsafe { self.launch_forward(kernel, stream, pool, x, y, idx) }
    }

    /// # Safety
    /// `kernel` takes `(const T* x, T* y, int* idx)` and then the geometry.
    unsafe fn launch_forward<T>(
        &self,
        kernel: &Kernel,
        stream: &CudaStream,
        pool: &Pool2d,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
        idx: &mut impl DevicePtrMut<i32>,
    ) -> Result<()> {
        pool.check("max_pool")?;
        let n = pool.output_len();
        let args = Args::new(kernel, stream)
            .input("x", x, pool.input_len())?
            .output("y", y, n)?
            .output("idx", idx, n)?;
        let args = geometry(args, pool)?;
        // SAFETY: the caller's signature; x holds the input, y and idx one value per output,
        // and each thread reads inside its window (check: padding at most half the kernel).
        unsafe { args.launch(elementwise(n)) }
    }

    /// `dx` = every output's gradient `dy` added at its argmax `idx` (f32 or bf16;
    /// deterministic).
    pub fn backward<T: Element>(
        &self,
        stream: &CudaStream,
        pool: &Pool2d,
        dy: &impl DevicePtr<T>,
        idx: &impl DevicePtr<i32>,
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        pool.check("max_pool backward")?;
        let n = pool.output_len();
        let args = Args::new(by_dtype::<T>(&self.backward), stream)
            .input("dy", dy, n)?
            .input("idx", idx, n)?
            .output("dx", dx, pool.input_len())?;
        let args = geometry(args, pool)?;
        // SAFETY: max_pool_backward_<dtype>(const T* dy, const int* idx, T* dx, geometry);
        // dy and idx hold one value per output, dx one per input.
        unsafe { args.launch(elementwise(pool.input_len())) }
    }
}
