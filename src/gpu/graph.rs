//! CUDA graph capture and replay.

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};

use crate::error::{CudaContext as _, Error, Result};

/// An instantiated graph, replayed on the stream it was captured from.
pub struct Graph {
    graph: CudaGraph,
}

impl Graph {
    /// Captures everything `record` queues on `stream` (and on streams forked from it) into a
    /// graph. Nothing runs during capture.
    pub fn capture(stream: &Arc<CudaStream>, record: impl FnOnce() -> Result<()>) -> Result<Graph> {
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .cuda(|| "beginning graph capture".into())?;
        let recorded = record();
        // End the capture even when recording failed, so the stream is usable again.
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        let graph = ended
            .cuda(|| "ending graph capture".into())?
            .ok_or_else(|| Error::invalid("graph capture", "nothing was captured"))?;
        Ok(Graph { graph })
    }

    /// Queues one replay on the capturing stream.
    pub fn replay(&self) -> Result<()> {
        self.graph.launch().cuda(|| "replaying a CUDA graph".into())
    }
}
