//! Launchers for `kernels/mean_tokens.cu`: the mean over each image's tokens (the ViT's
//! pooling) and its backward.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::launch::{Args, elementwise};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// `mean_tokens_f32` and `mean_tokens_backward_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct MeanTokensKernels {
    forward: Kernel,
    backward: Kernel,
}

impl MeanTokensKernels {
    pub fn load(gpu: &Gpu) -> Result<MeanTokensKernels> {
        let k = |name| gpu.kernel(KernelModule::MeanTokens, name);
        Ok(MeanTokensKernels {
            forward: k("mean_tokens_f32")?,
            backward: k("mean_tokens_backward_f32")?,
        })
    }

    /// `out[img] = mean over tokens of x[img]`: `x` `(n * t, d)`, `out` `(n, d)`.
    pub fn forward(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<f32>,
        out: &mut impl DevicePtrMut<f32>,
        (n, t, d): (usize, usize, usize),
    ) -> Result<()> {
        let args = Args::new(&self.forward, stream)
            .input("x", x, n * t * d)?
            .output("out", out, n * d)?
            .int("n", n)?
            .int("t", t)?
            .int("d", d)?;
        // SAFETY: mean_tokens_f32(const float* x, float* out, int n, int t, int d); sizes
        // checked.
        unsafe { args.launch(elementwise(n * d)) }
    }

    /// The backward: `dx[img, tok] = dout[img] / t`.
    pub fn backward(
        &self,
        stream: &CudaStream,
        dout: &impl DevicePtr<f32>,
        dx: &mut impl DevicePtrMut<f32>,
        (n, t, d): (usize, usize, usize),
    ) -> Result<()> {
        let args = Args::new(&self.backward, stream)
            .input("dout", dout, n * d)?
            .output("dx", dx, n * t * d)?
            .int("n", n)?
            .int("t", t)?
            .int("d", d)?;
        // SAFETY: mean_tokens_backward_f32(const float* dout, float* dx, int n, int t,
        // int d); sizes checked.
        unsafe { args.launch(elementwise(n * t * d)) }
    }
}
