//! Launchers for `kernels/elementwise.cu`: residual adds, the position embedding, and ReLU's
//! backward. Each works on the first `n` elements of its buffers.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::launch::{Args, elementwise};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// `add_f32`, `add_periodic_f32` and `relu_backward_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct ElementwiseKernels {
    add: Kernel,
    add_periodic: Kernel,
    relu_backward: Kernel,
}

impl ElementwiseKernels {
    pub fn load(gpu: &Gpu) -> Result<ElementwiseKernels> {
        let k = |name| gpu.kernel(KernelModule::Elementwise, name);
        Ok(ElementwiseKernels {
            add: k("add_f32")?,
            add_periodic: k("add_periodic_f32")?,
            relu_backward: k("relu_backward_f32")?,
        })
    }

    /// `y[i] += x[i]`.
    pub fn add(
        &self,
        stream: &CudaStream,
        y: &mut impl DevicePtrMut<f32>,
        x: &impl DevicePtr<f32>,
        n: usize,
    ) -> Result<()> {
        let args = Args::new(&self.add, stream)
            .output("y", y, n)?
            .input("x", x, n)?
            .long(n);
        // SAFETY: add_f32(float* y, const float* x, long long n); both hold n.
        unsafe { args.launch(elementwise(n)) }
    }

    /// `y[i] += pos[i % period]`.
    pub fn add_periodic(
        &self,
        stream: &CudaStream,
        y: &mut impl DevicePtrMut<f32>,
        pos: &impl DevicePtr<f32>,
        n: usize,
        period: usize,
    ) -> Result<()> {
        let args = Args::new(&self.add_periodic, stream)
            .output("y", y, n)?
            .input("pos", pos, period)?
            .long(n)
            .int("period", period)?;
        // SAFETY: add_periodic_f32(float* y, const float* pos, long long n, int period);
        // y holds n, pos one period.
        unsafe { args.launch(elementwise(n)) }
    }

    /// `dx[i] = 0` where `y[i] <= 0` (`y`: the ReLU's output).
    pub fn relu_backward(
        &self,
        stream: &CudaStream,
        dx: &mut impl DevicePtrMut<f32>,
        y: &impl DevicePtr<f32>,
        n: usize,
    ) -> Result<()> {
        let args = Args::new(&self.relu_backward, stream)
            .output("dx", dx, n)?
            .input("y", y, n)?
            .long(n);
        // SAFETY: relu_backward_f32(float* dx, const float* y, long long n); both hold n.
        unsafe { args.launch(elementwise(n)) }
    }
}
