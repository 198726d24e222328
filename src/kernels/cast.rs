//! Launchers for `kernels/cast.cu`: the bf16 copies of the trainer's GEMM operands, and bf16
//! activations widened back to f32 (exact). Its CPU
//! counterpart is [`Precision::operand`](crate::base::Precision::operand), which rounds the
//! same way (the bottom layer holds it, since the CPU engines use it without any kernel).

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use super::KernelModule;
use super::launch::{Args, elementwise};
use crate::error::Result;
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
        let args = Args::new(&self.bf16, stream)
            .input("x", x, n)?
            .output("y", y, n)?
            .long(n);
        // SAFETY: cast_bf16_f32(const float*, unsigned short*, long long n): bf16 is the
        // kernel's 16-bit unsigned short; both buffers hold n. The grid is sized for the
        // kernel's four-wide loop (it strides either way).
        unsafe { args.launch(elementwise(n.div_ceil(4))) }
    }

    /// `y[i] = f32(x[i])` for the first `n` elements (exact).
    pub fn f32(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<bf16>,
        y: &mut impl DevicePtrMut<f32>,
        n: usize,
    ) -> Result<()> {
        let args = Args::new(&self.f32, stream)
            .input("x", x, n)?
            .output("y", y, n)?
            .long(n);
        // SAFETY: cast_f32_bf16(const unsigned short*, float*, long long n): bf16 is the
        // kernel's 16-bit unsigned short; both buffers hold n.
        unsafe { args.launch(elementwise(n)) }
    }
}
