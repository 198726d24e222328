//! Launchers for `kernels/allreduce.cu`: the two steps of the direct all-reduce over peer
//! memory (`crate::train::exchange::allreduce` runs the phases). They take raw device
//! addresses, since their buffers may belong to other GPUs' contexts; the caller vouches for
//! them. The host-staged fallback of that module sums the same way on the CPU.

use cudarc::driver::{CudaStream, DeviceRepr};

use super::KernelModule;
use super::launch::{Args, elementwise};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};

/// Most participants the all-reduce kernel takes (`MAX_PEERS` in the .cu file).
pub const MAX_PEERS: usize = 8;

/// `Peers` in the .cu file: device pointers passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct Peers([u64; MAX_PEERS]);

// SAFETY: plain data with the C layout of the kernel's `struct Peers`.
unsafe impl DeviceRepr for Peers {}

// The size `static_assert`ed in the .cu file.
const _: () = assert!(std::mem::size_of::<Peers>() == 64);

/// A grid that fills the GPU for a chunk of `len` values moved four at a time: the kernels
/// stride, and one chunk can be hundreds of MB.
fn chunk_grid(len: usize) -> cudarc::driver::LaunchConfig {
    elementwise(len.div_ceil(4).min(132 * 8 * 256))
}

/// `allreduce_sum_chunk_f32` and `allreduce_copy_chunk_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct AllreduceKernels {
    sum_chunk: Kernel,
    copy_chunk: Kernel,
}

impl AllreduceKernels {
    pub fn load(gpu: &Gpu) -> Result<AllreduceKernels> {
        let k = |name| gpu.kernel(KernelModule::Allreduce, name);
        Ok(AllreduceKernels {
            sum_chunk: k("allreduce_sum_chunk_f32")?,
            copy_chunk: k("allreduce_copy_chunk_f32")?,
        })
    }

    /// Reduce-scatter step: `bufs[own][begin..end] = sum_k bufs[k][begin..end]`, k in order.
    ///
    /// # Safety
    /// Every pointer must address at least `end` f32s readable from this kernel's GPU (its
    /// own memory, or a peer's with peer access enabled), and `bufs[own]` must be that GPU's
    /// and writable.
    pub unsafe fn sum_chunk(
        &self,
        stream: &CudaStream,
        bufs: &[u64],
        own: usize,
        (begin, end): (usize, usize),
    ) -> Result<()> {
        let name = self.sum_chunk.name();
        if bufs.is_empty() || bufs.len() > MAX_PEERS || own >= bufs.len() || begin > end {
            return Err(Error::invalid(
                name,
                format!(
                    "{} buffers (1..={MAX_PEERS}), own {own}, range {begin}..{end}",
                    bufs.len()
                ),
            ));
        }
        let mut peers = Peers([0; MAX_PEERS]);
        peers.0[..bufs.len()].copy_from_slice(bufs);
        let (n, own, b, e) = (bufs.len() as i32, own as i32, begin as i64, end as i64);
        // SAFETY: forwarded to the caller; the arguments are the kernel's (Peers, int n,
        // int own, long long begin, long long end).
        unsafe {
            self.sum_chunk
                .on(stream)
                .arg(&peers)
                .arg(&n)
                .arg(&own)
                .arg(&b)
                .arg(&e)
                .go(chunk_grid(end - begin))
        }
    }

    /// All-gather step: `dst[begin..end] = src[begin..end]`.
    ///
    /// # Safety
    /// As for [`sum_chunk`](Self::sum_chunk): both pointers address at least `end` f32s
    /// reachable from this kernel's GPU, and `dst` is writable.
    pub unsafe fn copy_chunk(
        &self,
        stream: &CudaStream,
        dst: u64,
        src: u64,
        (begin, end): (usize, usize),
    ) -> Result<()> {
        let args = Args::new(&self.copy_chunk, stream)
            .address(dst)
            .address(src)
            .long(begin)
            .long(end.max(begin));
        // SAFETY: forwarded to the caller; the arguments are the kernel's (float* dst,
        // const float* src, long long begin, long long end).
        unsafe { args.launch(chunk_grid(end.saturating_sub(begin))) }
    }
}
