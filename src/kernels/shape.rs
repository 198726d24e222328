//! The host-side checks every launcher makes before it launches, and the launch of the
//! element-wise kernels. A failed check names the kernel and the buffer.

use cudarc::driver::{CudaStream, LaunchConfig};

use crate::error::{Error, Result};
use crate::gpu::Gpu;

use super::KernelModule;

/// Fails unless `len == want`.
pub(crate) fn check_len(kernel: &str, what: &str, len: usize, want: usize) -> Result<()> {
    if len == want {
        Ok(())
    } else {
        Err(Error::invalid(
            kernel,
            format!("{what} has {len} elements, expected {want}"),
        ))
    }
}

/// Fails unless `len >= need`: for buffers a launch reads or writes only a prefix of.
pub(crate) fn check_at_least(kernel: &str, what: &str, len: usize, need: usize) -> Result<()> {
    if len >= need {
        Ok(())
    } else {
        Err(Error::invalid(
            kernel,
            format!("{what} has {len} elements, needs at least {need}"),
        ))
    }
}

/// A grid for element-wise work over `n` items: 256 threads a block, at most 65,535 blocks
/// (the kernels stride over the rest).
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One operand of [`pointwise`]: its name for errors, its length and its device address.
pub(crate) type Operand<'a> = (&'a str, usize, u64);

/// Launches `kernel(float* a, float* b, long long n)` from `module` over the first `n`
/// elements, after checking that both operands (in the kernel's argument order) hold them.
pub(crate) fn pointwise(
    gpu: &Gpu,
    stream: &CudaStream,
    module: KernelModule,
    kernel: &'static str,
    a: Operand,
    b: Operand,
    n: usize,
) -> Result<()> {
    check_at_least(kernel, a.0, a.1, n)?;
    check_at_least(kernel, b.0, b.1, n)?;
    let k = gpu.kernel(module, kernel)?;
    let n64 = n as i64;
    // SAFETY: the kernel takes two f32 pointers and a count; both operands hold n elements.
    unsafe {
        k.on(stream)
            .arg(&a.2)
            .arg(&b.2)
            .arg(&n64)
            .go(elementwise(n))
    }
}
