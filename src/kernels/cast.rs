//! Launchers for `kernels/cast.cu`: the bf16 copies of the trainer's GEMM operands, and bf16
//! activations widened back to f32 (exact); and [`Storage`], the activation types (f32 or
//! bf16) the CNN trainer and the tracker keep their tensors in, moved to and from f32 by
//! these kernels or a plain copy. Its CPU
//! counterpart is [`Precision::operand`](crate::base::Precision::operand), which rounds the
//! same way (the bottom layer holds it, since the CPU engines use it without any kernel).

use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, ValidAsZeroBits,
};
use half::bf16;

use super::KernelModule;
use super::conv2d::Element;
use super::launch::{Args, elementwise};
use crate::error::{CudaContext as _, Result};
use crate::gpu::{Gpu, Kernel};

/// `cast_bf16_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct CastKernels {
    bf16: Kernel,
    f32: Kernel,
}

impl CastKernels {
    pub fn load(gpu: &Gpu) -> Result<CastKernels> {
        Ok(CastKernels {
            bf16: gpu.kernel(KernelModule::Cast, "cast_bf16_f32")?,
            f32: gpu.kernel(KernelModule::Cast, "cast_f32_bf16")?,
        })
    }

    /// `y[i] = bf16(x[i])` for the first `n` elements, rounded to nearest even (NaN kept), as
    /// `half::bf16::from_f32` rounds on the host.
    pub fn bf16(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<f32>,
        y: &mut impl DevicePtrMut<bf16>,
        n: usize,
    ) -> Result<()> {
        // SAFETY: cast_bf16_f32(const float*, unsigned short*, long long n): bf16 is the
        // kernel's 16-bit unsigned short. The grid is sized for the kernel's four-wide loop
        // (it strides either way).
        unsafe { launch(&self.bf16, stream, x, y, n, n.div_ceil(4)) }
    }

    /// `y[i] = f32(x[i])` for the first `n` elements (exact).
    pub fn f32(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<bf16>,
        y: &mut impl DevicePtrMut<f32>,
        n: usize,
    ) -> Result<()> {
        // SAFETY: cast_f32_bf16(const unsigned short*, float*, long long n): bf16 is the
        // kernel's 16-bit unsigned short.
        unsafe { launch(&self.f32, stream, x, y, n, n) }
    }
}

/// Launches `kernel(x, y, n)` on `threads` threads, once both buffers are checked to hold
/// `n`.
///
/// # Safety
/// `kernel` takes `(const X*, Y*, long long n)`, in types of `X`'s and `Y`'s layout.
unsafe fn launch<X, Y>(
    kernel: &Kernel,
    stream: &CudaStream,
    x: &impl DevicePtr<X>,
    y: &mut impl DevicePtrMut<Y>,
    n: usize,
    threads: usize,
) -> Result<()> {
    let args = Args::new(kernel, stream)
        .input("x", x, n)?
        .output("y", y, n)?
        .long(n);
    // SAFETY: the caller's kernel signature; both buffers hold n.
    unsafe { args.launch(elementwise(threads)) }
}

/// An activation storage type: f32, or bf16 (`precision = "bf16"`), and how f32 values
/// become it and back.
pub trait Storage: Element + ValidAsZeroBits {
    /// `y = x` as `Self` (f32: a copy; bf16: rounded to nearest even).
    fn narrow(
        cast: &CastKernels,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, f32>,
        y: &mut CudaViewMut<'_, Self>,
    ) -> Result<()>;
    /// `y = x` as f32 (f32: a copy; bf16: exact widening).
    fn widen(
        cast: &CastKernels,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, Self>,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<()>;
    /// The buffer itself when `Self` is f32 (no copy needed).
    fn as_f32(b: &CudaSlice<Self>) -> Option<&CudaSlice<f32>>;
}

fn copy(
    stream: &Arc<CudaStream>,
    x: &CudaView<'_, f32>,
    y: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    stream
        .memcpy_dtod(x, y)
        .cuda(|| format!("copying {} values on the GPU", x.len()))
}

impl Storage for f32 {
    fn narrow(
        _: &CastKernels,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, f32>,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        copy(stream, x, y)
    }
    fn widen(
        _: &CastKernels,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, f32>,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        copy(stream, x, y)
    }
    fn as_f32(b: &CudaSlice<f32>) -> Option<&CudaSlice<f32>> {
        Some(b)
    }
}

impl Storage for bf16 {
    fn narrow(
        cast: &CastKernels,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, f32>,
        y: &mut CudaViewMut<'_, bf16>,
    ) -> Result<()> {
        cast.bf16(stream, x, y, x.len())
    }
    fn widen(
        cast: &CastKernels,
        stream: &Arc<CudaStream>,
        x: &CudaView<'_, bf16>,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        cast.f32(stream, x, y, x.len())
    }
    fn as_f32(_: &CudaSlice<bf16>) -> Option<&CudaSlice<f32>> {
        None
    }
}
