//! The host-side checks every launcher makes before it launches, and the launch shape of the
//! element-wise kernels. A failed check names the kernel and the buffer.

use cudarc::driver::LaunchConfig;

use crate::error::{Error, Result};

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
