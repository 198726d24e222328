//! The CNN walker's pool of free device buffers ([`BufferPool`]): the values that no backward
//! reads and the gradients in flight take a buffer from it and give it back when done.
//!
//! Online, the pool hands out the smallest free buffer that fits. Best fit alone fragments:
//! the backward's gradients grow toward the stem, so over a few steps the pool comes to hold
//! buffers that fit no later request well (DenseNet-121 at 224, batch 64: 914 MiB of f32
//! buffers for a working set of 515 at exact sizes, in a host replay of the walker's
//! requests). So the first pass at each capacity is traced (every request's length, and when
//! its buffer was taken and given back), and after it the pool is replaced by buffers planned
//! from the trace ([`plan_buffers`]): requests largest first, each into the smallest planned
//! buffer that is free for its whole lifetime (681 MiB in that replay, with no miss in later
//! passes). A later request that finds no free buffer still falls back to a new one.

use std::collections::HashMap;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};

use super::cnn::alloc;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::launch::ptr;

/// One traced request: its length, and the trace's clock when its buffer was taken and given
/// back (`None`: still out when the pass ended).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Request {
    pub len: usize,
    pub taken: usize,
    pub given: Option<usize>,
}

#[derive(Default)]
struct Trace {
    clock: usize,
    requests: Vec<Request>,
    /// Buffers out of the pool, by device address: their request.
    out: HashMap<u64, usize>,
}

pub struct BufferPool<T> {
    free: Vec<CudaSlice<T>>,
    trace: Option<Trace>,
}

impl<T: DeviceRepr + ValidAsZeroBits> BufferPool<T> {
    pub fn new() -> BufferPool<T> {
        BufferPool {
            free: Vec::new(),
            trace: None,
        }
    }

    /// The bytes of the free buffers held.
    pub fn held_bytes(&self) -> usize {
        self.free.iter().map(CudaSlice::num_bytes).sum()
    }

    /// Drops every free buffer (in stream order, after the kernels queued on it) and starts
    /// tracing the requests until [`BufferPool::plan`].
    pub fn retrace(&mut self) {
        self.free.clear();
        self.trace = Some(Trace::default());
    }

    /// A free buffer of at least `len` values (the smallest that fits).
    ///
    /// When none fits, every free buffer is smaller than `len`: they go back to the device's
    /// memory pool before the new one is allocated, so that it can take their memory. Kept,
    /// they would sit idle beside it and count in the pass's peak.
    pub fn take(&mut self, gpu: &Gpu, len: usize) -> Result<CudaSlice<T>> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        let buf = match best {
            Some(i) => self.free.swap_remove(i),
            None => {
                self.free.clear();
                alloc(gpu, len, "activations or their gradients")?
            }
        };
        if let Some(t) = &mut self.trace {
            t.out.insert(ptr(&buf, gpu.stream()), t.requests.len());
            t.requests.push(Request {
                len,
                taken: t.clock,
                given: None,
            });
            t.clock += 1;
        }
        Ok(buf)
    }

    /// Gives `buf` back (queued work on it may still run: the next taker's work follows it on
    /// the same stream).
    pub fn give(&mut self, s: &CudaStream, buf: CudaSlice<T>) {
        if let Some(t) = &mut self.trace {
            if let Some(r) = t.out.remove(&ptr(&buf, s)) {
                t.requests[r].given = Some(t.clock);
            }
            t.clock += 1;
        }
        self.free.push(buf);
    }

    /// Ends a trace: the free buffers are replaced by those [`plan_buffers`] sizes for the
    /// traced requests (the old ones dropped first, so the new ones can take their memory).
    /// Nothing happens when no trace runs.
    pub fn plan(&mut self, gpu: &Gpu) -> Result<()> {
        let Some(trace) = self.trace.take() else {
            return Ok(());
        };
        // A buffer still out (none is, after a whole pass) stays out of the plan's reach.
        if !trace.out.is_empty() {
            return Ok(());
        }
        self.free.clear();
        for len in plan_buffers(&trace.requests) {
            self.free
                .push(alloc(gpu, len, "activations or their gradients")?);
        }
        Ok(())
    }
}

/// The buffer lengths that serve `requests` with every request in a buffer of its own for its
/// lifetime (`taken` up to `given`, or to the end): requests largest first (ties: earliest
/// first), each into the smallest planned buffer that fits and is free for its whole
/// lifetime, or a new buffer of its length.
pub fn plan_buffers(requests: &[Request]) -> Vec<usize> {
    let end = requests
        .iter()
        .map(|r| r.given.unwrap_or(r.taken) + 1)
        .max()
        .unwrap_or(0);
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(requests[i].len), requests[i].taken));
    // Per planned buffer: its length and the lifetimes assigned to it.
    let mut buffers: Vec<(usize, Vec<(usize, usize)>)> = Vec::new();
    for i in order {
        let r = requests[i];
        let life = (r.taken, r.given.unwrap_or(end));
        let overlaps = |&(a, b): &(usize, usize)| a < life.1 && life.0 < b;
        let fit = buffers
            .iter_mut()
            .filter(|(len, lives)| *len >= r.len && !lives.iter().any(overlaps))
            .min_by_key(|(len, _)| *len);
        match fit {
            Some((_, lives)) => lives.push(life),
            None => buffers.push((r.len, vec![life])),
        }
    }
    buffers.into_iter().map(|(len, _)| len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(len: usize, taken: usize, given: usize) -> Request {
        Request {
            len,
            taken,
            given: Some(given),
        }
    }

    #[test]
    fn plan_buffers_shares_a_buffer_between_lifetimes_that_do_not_overlap() {
        // 100 lives 0..3 and 80 lives 4..6: one buffer of 100 serves both; 90 overlaps the
        // first and needs its own.
        let requests = [req(100, 0, 3), req(90, 1, 5), req(80, 4, 6)];
        let mut lens = plan_buffers(&requests);
        lens.sort();
        assert_eq!(lens, vec![90, 100]);
    }

    #[test]
    fn plan_buffers_takes_the_smallest_buffer_that_is_free() {
        // Two buffers (100 and 60, overlapping lifetimes); a later 50 fits both and takes 60,
        // so a 90 after it still finds the 100 free.
        let requests = [req(100, 0, 2), req(60, 1, 3), req(50, 4, 6), req(90, 5, 7)];
        let mut lens = plan_buffers(&requests);
        lens.sort();
        assert_eq!(lens, vec![60, 100]);
    }

    #[test]
    fn plan_buffers_holds_a_buffer_never_given_back_to_the_end() {
        let requests = [
            Request {
                len: 10,
                taken: 0,
                given: None,
            },
            req(10, 3, 4),
        ];
        assert_eq!(plan_buffers(&requests), vec![10, 10]);
        assert!(plan_buffers(&[]).is_empty());
    }
}
