//! Launchers for `kernels/soft_argmax.cu`: the expected cell of each score map under its
//! softmax (the tracker's corners). [`cpu`] is the reference.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig};

use super::KernelModule;
use super::conv2d::Element;
use super::launch::Args;
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// `soft_argmax_f32` and `soft_argmax_bf16`, loaded once.
#[derive(Debug, Clone)]
pub struct SoftArgmaxKernels {
    f32: Kernel,
    bf16: Kernel,
}

impl SoftArgmaxKernels {
    pub fn load(gpu: &Gpu) -> Result<SoftArgmaxKernels> {
        let k = |name| gpu.kernel(KernelModule::SoftArgmax, name);
        Ok(SoftArgmaxKernels {
            f32: k("soft_argmax_f32")?,
            bf16: k("soft_argmax_bf16")?,
        })
    }

    /// `out[2 m], out[2 m + 1]` = the expected `(x, y)` of map `m` of `maps` score maps of
    /// `side x side` cells (`scores`, map after map), cells `stride` apart.
    pub fn run<T: Element>(
        &self,
        stream: &CudaStream,
        scores: &impl DevicePtr<T>,
        maps: usize,
        side: usize,
        stride: f32,
        out: &mut impl DevicePtrMut<f64>,
    ) -> Result<()> {
        let k = if T::NAME == "f32" {
            &self.f32
        } else {
            &self.bf16
        };
        let cells = side * side;
        let args = Args::new(k, stream)
            .input("scores", scores, maps * cells)?
            .int("cells", cells)?
            .int("side", side)?
            .float(stride)
            .output("out", out, 2 * maps)?;
        let cfg = LaunchConfig {
            grid_dim: (maps.max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: soft_argmax_<dtype>(const T* scores, int cells, int side, float stride,
        // double* out); block m reads map m's cells and writes out[2m..2m+2].
        unsafe { args.launch(cfg) }
    }
}
