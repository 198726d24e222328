//! Summing the replicas' gradient buffers without NCCL.
//!
//! **Direct all-reduce over peer memory.** The buffer of `len` values is cut into one chunk per
//! participant ([`chunk`]). Phase 1 (reduce-scatter): participant `r` sums chunk `r` of every
//! buffer, reading the peers' memory directly, and writes it into its own buffer. Phase 2
//! (all-gather): participant `r` copies chunk `q` from participant `q`'s buffer, for every
//! `q != r`. Every participant moves `(n - 1) / n` of the buffer in each phase, as in a ring,
//! but in one hop instead of `n - 1`, which suits the all-to-all NVLink of one host. Each
//! chunk is summed by one GPU in participant order, so all replicas end with bit-identical
//! sums. The phases are ordered across GPUs by [`PhaseEvents`]: participant `q` records an
//! event after its backward pass and after each phase, and the others' streams wait on it
//! before phase 1 (which reads its gradients), before phase 2 (which reads what phase 1 wrote
//! and overwrites what it read) and before their next write to their own buffer (which peers
//! read in phase 2). The host only needs a barrier between the enqueues, never a
//! synchronisation.
//!
//! The participants of one all-reduce can be any subset of the engine's GPUs (those with work
//! in the step): the buffers are passed in participant order, and [`PhaseEvents`] (one set
//! per GPU) waits only on the participating GPUs' events.
//!
//! **Host staging** ([`HostExchange`]) is the fallback when peer access is unavailable: each
//! participant copies its buffer into its own page-locked host buffer, and each sums all of
//! them in participant order and copies the sum back.

use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock};

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, PinnedHostSlice, sys};

use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::Gpu;
use crate::kernels::allreduce::AllreduceKernels;

/// Participant `rank`'s chunk of a buffer of `len` values shared by `n`: sizes differ by at
/// most one, and the chunks tile `0..len` in rank order.
pub fn chunk(len: usize, n: usize, rank: usize) -> Range<usize> {
    let start = |r: usize| (len as u128 * r as u128 / n as u128) as usize;
    start(rank)..start(rank + 1)
}

/// Enables peer access between every pair of `gpus`. `Ok(true)` when all pairs can reach each
/// other; `Ok(false)` (nothing enabled that matters) when some pair cannot.
///
/// Two grants are needed: `cuCtxEnablePeerAccess` maps `cuMemAlloc` memory, but cudarc
/// allocates from the device's stream-ordered memory pool (`cuMemAllocAsync`) where it can,
/// and pool memory becomes reachable from a peer only through `cuMemPoolSetAccess`.
pub fn enable_peer_access(gpus: &[Arc<Gpu>]) -> Result<bool> {
    let pairs = || {
        gpus.iter().flat_map(|a| {
            gpus.iter()
                .filter(move |b| b.ordinal() != a.ordinal())
                .map(move |b| (a, b))
        })
    };
    for (a, b) in pairs() {
        let mut can = 0;
        // SAFETY: both devices come from open contexts; `can` is a valid out-pointer.
        unsafe { sys::cuDeviceCanAccessPeer(&mut can, a.ctx().cu_device(), b.ctx().cu_device()) }
            .result()
            .cuda(|| {
                format!(
                    "asking whether cuda:{} can reach cuda:{}",
                    a.ordinal(),
                    b.ordinal()
                )
            })?;
        if can == 0 {
            return Ok(false);
        }
    }
    for (a, b) in pairs() {
        let what = || {
            format!(
                "enabling peer access cuda:{} -> cuda:{}",
                a.ordinal(),
                b.ordinal()
            )
        };
        a.ctx().bind_to_thread().cuda(what)?;
        // SAFETY: the current context is a's; b's context is alive.
        match unsafe { sys::cuCtxEnablePeerAccess(b.ctx().cu_ctx(), 0) } {
            sys::CUresult::CUDA_SUCCESS | sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {
            }
            e => {
                return Err(e).map_err(|e| Error::Cuda {
                    what: what(),
                    source: cudarc::driver::DriverError(e),
                });
            }
        }
        if b.ctx().has_async_alloc() {
            // b's pool memory becomes readable and writable from a.
            let mut pool = std::ptr::null_mut();
            // SAFETY: valid out-pointer and device.
            unsafe { sys::cuDeviceGetMemPool(&mut pool, b.ctx().cu_device()) }
                .result()
                .cuda(what)?;
            let desc = sys::CUmemAccessDesc {
                location: sys::CUmemLocation {
                    type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                    id: a.ctx().cu_device(),
                },
                flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
            };
            // SAFETY: `pool` is b's current pool; one descriptor.
            unsafe { sys::cuMemPoolSetAccess(pool, &desc, 1) }
                .result()
                .cuda(what)?;
        }
    }
    Ok(true)
}

/// Phase 1 on participant `rank`: its chunk of every buffer, summed into its own.
///
/// # Safety
/// `bufs` are device addresses of `len` f32s each, all reachable from `gpu`, `bufs[rank]` on
/// `gpu`; every buffer's gradients are complete, and no participant writes chunk `rank` of
/// any buffer meanwhile.
pub unsafe fn reduce_scatter(
    gpu: &Gpu,
    stream: &CudaStream,
    bufs: &[u64],
    rank: usize,
    len: usize,
) -> Result<()> {
    let r = chunk(len, bufs.len(), rank);
    if r.is_empty() {
        return Ok(());
    }
    let kernels = AllreduceKernels::load(gpu)?;
    // SAFETY: forwarded to the caller.
    unsafe { kernels.sum_chunk(stream, bufs, rank, (r.start, r.end)) }
}

/// Phase 2 on participant `rank`: every other participant's chunk, copied from its owner.
///
/// # Safety
/// As for [`reduce_scatter`], and phase 1 has finished on every participant (its events are
/// waited on by `stream`).
pub unsafe fn all_gather(
    gpu: &Gpu,
    stream: &CudaStream,
    bufs: &[u64],
    rank: usize,
    len: usize,
) -> Result<()> {
    let kernels = AllreduceKernels::load(gpu)?;
    for (owner, &src) in bufs.iter().enumerate() {
        let r = chunk(len, bufs.len(), owner);
        if owner != rank && !r.is_empty() {
            // SAFETY: forwarded to the caller.
            unsafe { kernels.copy_chunk(stream, bufs[rank], src, (r.start, r.end))? };
        }
    }
    Ok(())
}

/// One event per GPU and phase, for ordering the phases across GPUs (module docs). GPUs are
/// named by their index in the `gpus` given to [`new`](Self::new), whichever subset of them
/// takes part in an all-reduce.
pub struct PhaseEvents {
    done: Vec<[CudaEvent; 3]>,
}

/// The points of a step that each GPU marks for the others.
#[derive(Clone, Copy, Debug)]
pub enum Phase {
    /// The backward pass wrote this GPU's gradients (peers read them in the reduce-scatter).
    Gradients,
    /// The reduce-scatter summed this GPU's chunk (peers read it in the all-gather).
    ReduceScatter,
    /// The all-gather copied the peers' chunks (peers' buffers may be written again).
    AllGather,
}

impl PhaseEvents {
    /// Events for `gpus`, each made in its GPU's context.
    pub fn new(gpus: &[Arc<Gpu>]) -> Result<PhaseEvents> {
        let done = gpus
            .iter()
            .map(|g| {
                let make = || {
                    g.ctx()
                        .new_event(None)
                        .cuda(|| format!("creating an event on cuda:{}", g.ordinal()))
                };
                Ok([make()?, make()?, make()?])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PhaseEvents { done })
    }

    /// Marks the end of GPU `own`'s `phase` on its `stream`.
    pub fn record(&self, own: usize, phase: Phase, stream: &CudaStream) -> Result<()> {
        self.done[own][phase as usize]
            .record(stream)
            .cuda(|| format!("recording the end of {phase:?} on GPU {own}"))
    }

    /// Makes `stream` (GPU `own`'s) wait for the `phase` of every other GPU in `members` (the
    /// participants), as last recorded. The caller makes sure those records were enqueued
    /// first.
    pub fn wait_for_others(
        &self,
        members: &[usize],
        own: usize,
        phase: Phase,
        stream: &CudaStream,
    ) -> Result<()> {
        for &q in members.iter().filter(|&&q| q != own) {
            stream
                .wait(&self.done[q][phase as usize])
                .cuda(|| format!("waiting for GPU {q}'s {phase:?}"))?;
        }
        Ok(())
    }
}

/// The host-staged fallback: per GPU, a page-locked buffer its gradients are staged into (read
/// by every participant) and one the sum is built in (its own, copied back to it). Page-locked
/// memory makes both copies direct DMA; it is allocated without write-combining, since the host
/// reads it.
pub struct HostExchange {
    staged: Vec<RwLock<PinnedHostSlice<f32>>>,
    sums: Vec<Mutex<PinnedHostSlice<f32>>>,
}

/// Locks that a panicking thread left poisoned still hold valid buffers (plain f32s).
fn unpoison<G>(r: std::result::Result<G, std::sync::PoisonError<G>>) -> G {
    r.unwrap_or_else(|p| p.into_inner())
}

impl HostExchange {
    /// Buffers of `len` values for each of `gpus` (each allocated in its GPU's context).
    pub fn new(gpus: &[Arc<Gpu>], len: usize) -> Result<HostExchange> {
        if len == 0 {
            return Err(Error::invalid("host-staged all-reduce", "an empty buffer"));
        }
        let pinned = |g: &Gpu| {
            // SAFETY: every buffer is written in full (a copy of `len` values) before it is read.
            unsafe { g.ctx().alloc_pinned_with_flags::<f32>(len, 0) }.cuda(|| {
                format!(
                    "allocating {len} page-locked values for cuda:{}",
                    g.ordinal()
                )
            })
        };
        Ok(HostExchange {
            staged: gpus
                .iter()
                .map(|g| pinned(g).map(RwLock::new))
                .collect::<Result<_>>()?,
            sums: gpus
                .iter()
                .map(|g| pinned(g).map(Mutex::new))
                .collect::<Result<_>>()?,
        })
    }

    fn check_len(&self, buf: &CudaSlice<f32>, own: usize) -> Result<()> {
        let want = unpoison(self.staged[own].read()).len();
        if buf.len() != want {
            return Err(Error::invalid(
                "host-staged all-reduce",
                format!("a buffer of {} values, {want} expected", buf.len()),
            ));
        }
        Ok(())
    }

    /// Phase 1: GPU `own` copies its buffer to the host (and waits for it).
    pub fn stage(&self, gpu: &Gpu, buf: &CudaSlice<f32>, own: usize) -> Result<()> {
        self.check_len(buf, own)?;
        let s = gpu.stream();
        let mut slot = unpoison(self.staged[own].write());
        s.memcpy_dtoh(buf, &mut *slot)
            .cuda(|| "staging gradients on the host".into())?;
        gpu.sync()
    }

    /// Phase 2 (after every member's phase 1): GPU `own` sums the staged buffers of `members`
    /// in their order and copies the sum into `buf` (and waits for it).
    pub fn sum_into(
        &self,
        gpu: &Gpu,
        buf: &mut CudaSlice<f32>,
        own: usize,
        members: &[usize],
    ) -> Result<()> {
        self.check_len(buf, own)?;
        let mut sum = unpoison(self.sums[own].lock());
        let out = sum
            .as_mut_slice()
            .cuda(|| "waiting for the host sum buffer".into())?;
        for (k, &m) in members.iter().enumerate() {
            let slot = unpoison(self.staged[m].read());
            let v = slot
                .as_slice()
                .cuda(|| format!("reading GPU {m}'s staged gradients"))?;
            if k == 0 {
                out.copy_from_slice(v);
            } else {
                out.iter_mut().zip(v).for_each(|(s, x)| *s += x);
            }
        }
        gpu.stream()
            .memcpy_htod(&*sum, buf)
            .cuda(|| "copying the summed gradients back".into())?;
        gpu.sync()
    }
}
