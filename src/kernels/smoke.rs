//! Launchers for `kernels/smoke.cu`: a kernel of the runtime's own tests (module loading,
//! launches, streams, graphs), nothing of the model.

use cudarc::driver::CudaStream;

use super::KernelModule;
use super::launch::{Args, check_len, elementwise};
use crate::error::Result;
use crate::gpu::{DeviceBuffer, Gpu, Kernel};

/// `axpy_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct SmokeKernels {
    axpy: Kernel,
}

impl SmokeKernels {
    pub fn load(gpu: &Gpu) -> Result<SmokeKernels> {
        Ok(SmokeKernels {
            axpy: gpu.kernel(KernelModule::Smoke, "axpy_f32")?,
        })
    }

    /// `y = a * x + y`, elementwise.
    pub fn axpy(
        &self,
        stream: &CudaStream,
        a: f32,
        x: &DeviceBuffer<f32>,
        y: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let n = x.len();
        check_len(self.axpy.name(), "y", y.len(), n)?;
        let args = Args::new(&self.axpy, stream)
            .float(a)
            .input("x", x, n)?
            .output("y", y, n)?
            .long(n);
        // SAFETY: axpy_f32(float a, const float* x, float* y, long long n); both hold n.
        unsafe { args.launch(elementwise(n)) }
    }
}
