//! `dropout`: PyTorch's `Dropout` in train mode (zero each value with probability `p`, scale
//! the rest by `1 / (1 - p)`), with masks drawn from a seed so that a step can be repeated
//! exactly. [`cpu`] is the reference; [`DropoutKernels`] launches `kernels/dropout.cu`, which
//! draws the reference's mask bit for bit (f32 or bf16 activations).

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtrMut};

use super::KernelModule;
use super::conv2d::Element;
use super::launch::{Args, by_dtype, elementwise, ptr_mut};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// `dropout_f32` and `dropout_bf16`, loaded once.
#[derive(Debug, Clone)]
pub struct DropoutKernels {
    kernels: [Kernel; 2],
}

impl DropoutKernels {
    pub fn load(gpu: &Gpu) -> Result<DropoutKernels> {
        let k = |name| gpu.kernel(KernelModule::Dropout, name);
        Ok(DropoutKernels {
            kernels: [k("dropout_f32")?, k("dropout_bf16")?],
        })
    }

    /// [`cpu::dropout`] on the first `n` values of `x`, in place; nothing for `p <= 0`.
    pub fn run<T: Element>(
        &self,
        stream: &CudaStream,
        x: &mut impl DevicePtrMut<T>,
        n: usize,
        p: f32,
        seed: u64,
    ) -> Result<()> {
        if p <= 0.0 || n == 0 {
            return Ok(());
        }
        let kernel = by_dtype::<T>(&self.kernels);
        super::launch::check_at_least(kernel.name(), "x", x.len(), n)?;
        let at = ptr_mut(x, stream);
        let scale = 1.0 / (1.0 - p);
        let args = Args::new(kernel, stream)
            .address(at)
            .address(at)
            .long(n)
            .float(p)
            .float(scale)
            .long(seed as usize);
        // SAFETY: dropout_<dtype>(const T* x, T* y, long long n, float p, float scale, long
        // long seed), in place (x == y is allowed: each thread reads then writes its own
        // value); x holds at least n.
        unsafe { args.launch(elementwise(n)) }
    }
}
