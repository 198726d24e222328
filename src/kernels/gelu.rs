//! Launchers for `kernels/gelu.cu`: GELU (tanh approximation) and its backward, over the
//! first `n` elements of their buffers.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::launch::{Args, elementwise};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// `gelu_f32` and `gelu_backward_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct GeluKernels {
    forward: Kernel,
    backward: Kernel,
}

impl GeluKernels {
    pub fn load(gpu: &Gpu) -> Result<GeluKernels> {
        let k = |name| gpu.kernel(KernelModule::Gelu, name);
        Ok(GeluKernels {
            forward: k("gelu_f32")?,
            backward: k("gelu_backward_f32")?,
        })
    }

    /// `y = gelu(x)`.
    pub fn forward(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<f32>,
        y: &mut impl DevicePtrMut<f32>,
        n: usize,
    ) -> Result<()> {
        let args = Args::new(&self.forward, stream)
            .input("x", x, n)?
            .output("y", y, n)?
            .long(n);
        // SAFETY: gelu_f32(const float* x, float* y, long long n); both hold n.
        unsafe { args.launch(elementwise(n)) }
    }

    /// `d *= gelu'(x)`: the gradient through GELU, in place.
    pub fn backward(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<f32>,
        d: &mut impl DevicePtrMut<f32>,
        n: usize,
    ) -> Result<()> {
        let args = Args::new(&self.backward, stream)
            .input("x", x, n)?
            .output("d", d, n)?
            .long(n);
        // SAFETY: gelu_backward_f32(const float* x, float* d, long long n); both hold n.
        unsafe { args.launch(elementwise(n)) }
    }
}
