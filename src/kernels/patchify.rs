//! Launcher for `kernels/patchify.cu`: the ViT's images cut into patch rows.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::launch::{Args, elementwise};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};

/// A batch of square images cut into square patches: `n` images of `channels x side x side`
/// values, patches of `patch x patch` pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patches {
    pub n: usize,
    pub channels: usize,
    pub side: usize,
    pub patch: usize,
}

impl Patches {
    /// Values in the batch (the same before and after the cut).
    pub fn values(&self) -> usize {
        self.n * self.channels * self.side * self.side
    }
}

/// `patchify_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct PatchifyKernels {
    kernel: Kernel,
}

impl PatchifyKernels {
    pub fn load(gpu: &Gpu) -> Result<PatchifyKernels> {
        Ok(PatchifyKernels {
            kernel: gpu.kernel(KernelModule::Patchify, "patchify_f32")?,
        })
    }

    /// Images `[n, channels, side, side]` to patch rows `[n * (side/patch)^2,
    /// channels * patch^2]`.
    pub fn run(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<f32>,
        out: &mut impl DevicePtrMut<f32>,
        s: Patches,
    ) -> Result<()> {
        if s.patch == 0 || !s.side.is_multiple_of(s.patch) {
            return Err(Error::invalid(
                self.kernel.name(),
                format!("patches of {} do not tile images of {}", s.patch, s.side),
            ));
        }
        let total = s.values();
        let args = Args::new(&self.kernel, stream)
            .input("x", x, total)?
            .output("out", out, total)?
            .int("n", s.n)?
            .int("channels", s.channels)?
            .int("side", s.side)?
            .int("patch", s.patch)?;
        // SAFETY: patchify_f32(const float* x, float* out, int n, int c, int s, int p); both
        // hold every value of the batch.
        unsafe { args.launch(elementwise(total)) }
    }
}
