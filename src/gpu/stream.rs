//! A fixed set of side streams with fork/join against a parent stream, using events made once.
//!
//! The per-head dispatch forks the layer's stream into one stream per head and joins them
//! back; making streams and events once keeps that cheap and capturable in a CUDA graph.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaStream};

use crate::error::{CudaContext as _, Result};

use super::Gpu;

pub struct StreamSet {
    streams: Vec<Arc<CudaStream>>,
    /// Recorded on the parent at fork time; every side stream waits on it.
    forked: CudaEvent,
    /// One per side stream, recorded at join time; the parent waits on all of them.
    done: Vec<CudaEvent>,
}

impl StreamSet {
    pub fn new(gpu: &Gpu, n: usize) -> Result<StreamSet> {
        let ctx = gpu.ctx();
        let streams = (0..n)
            .map(|i| {
                ctx.new_stream()
                    .cuda(|| format!("creating side stream {i}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let forked = ctx
            .new_event(None)
            .cuda(|| "creating a fork event".into())?;
        let done = (0..n)
            .map(|i| {
                ctx.new_event(None)
                    .cuda(|| format!("creating join event {i}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StreamSet {
            streams,
            forked,
            done,
        })
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn stream(&self, i: usize) -> &Arc<CudaStream> {
        &self.streams[i]
    }

    pub fn streams(&self) -> &[Arc<CudaStream>] {
        &self.streams
    }

    /// Makes every side stream wait for the work queued on `parent` so far.
    pub fn fork(&self, parent: &CudaStream) -> Result<()> {
        self.forked
            .record(parent)
            .cuda(|| "recording fork".into())?;
        for (i, s) in self.streams.iter().enumerate() {
            s.wait(&self.forked)
                .cuda(|| format!("stream {i} waiting on fork"))?;
        }
        Ok(())
    }

    /// Makes `parent` wait for the work queued on every side stream so far.
    pub fn join(&self, parent: &CudaStream) -> Result<()> {
        for (i, (s, e)) in self.streams.iter().zip(&self.done).enumerate() {
            e.record(s)
                .cuda(|| format!("recording join on stream {i}"))?;
            parent.wait(e).cuda(|| format!("joining stream {i}"))?;
        }
        Ok(())
    }
}
