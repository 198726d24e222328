//! How a layer's heads are launched: `sequential` (one stream, one head after another, the
//! thesis's baseline) or `streams` (one stream per head, forked from and joined back to the
//! main stream with events, the thesis's method). Both launch the same [`super::heads::HeadWork`]
//! values with the same kernels, so they give bitwise-identical results.
//!
//! Heads write disjoint channels of one concat buffer and their own `head_out` buffers.
//! cudarc's event tracking is off on our contexts, so those disjoint writes do not make the
//! streams wait on each other; the fork and join events are the only ordering.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use crate::cswintt::Mode;
use crate::error::{Error, Result};
use crate::gpu::{EventTimer, Gpu, StreamSet, nvtx};

pub(super) enum Dispatch {
    Sequential,
    Streams(StreamSet),
}

impl Dispatch {
    pub fn new(gpu: &Gpu, mode: Mode, heads: usize) -> Result<Dispatch> {
        match mode {
            Mode::Sequential => Ok(Dispatch::Sequential),
            Mode::Streams => Ok(Dispatch::Streams(StreamSet::new(gpu, heads)?)),
            other => Err(Error::invalid(
                "--mode",
                format!("the GPU engine runs sequential or streams, not {other}"),
            )),
        }
    }

    pub fn mode(&self) -> Mode {
        match self {
            Dispatch::Sequential => Mode::Sequential,
            Dispatch::Streams(_) => Mode::Streams,
        }
    }

    /// Runs `launch(h, stream)` for heads `0..n`, each on its stream, recording a stage
    /// named `{prefix}/head {h}` per head. Work queued on `main` before this call happens
    /// before every head; work queued on `main` after it waits for all of them.
    pub fn heads(
        &self,
        main: &Arc<CudaStream>,
        n: usize,
        prefix: &str,
        rec: &mut Recorder<'_>,
        mut launch: impl FnMut(usize, &CudaStream) -> Result<()>,
    ) -> Result<()> {
        match self {
            Dispatch::Sequential => {
                for h in 0..n {
                    rec.stage(&format!("{prefix}/head {h}"), 0, main, || launch(h, main))?;
                }
                Ok(())
            }
            Dispatch::Streams(set) => {
                set.fork(main)?;
                for h in 0..n {
                    let s = set.stream(h);
                    rec.stage(&format!("{prefix}/head {h}"), h + 1, s, || launch(h, s))?;
                }
                set.join(main)
            }
        }
    }
}

/// Opens an NVTX range per stage, and with a timer also records the stage as a span
/// (lane 0 = the main stream, lane `h + 1` = head `h`'s stream in `streams` mode).
pub struct Recorder<'a> {
    timer: Option<&'a mut EventTimer>,
}

impl<'a> Recorder<'a> {
    pub fn new(timer: Option<&'a mut EventTimer>) -> Recorder<'a> {
        Recorder { timer }
    }

    pub fn stage<T>(
        &mut self,
        name: &str,
        lane: usize,
        stream: &CudaStream,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let _range = nvtx::range(name);
        match self.timer.as_deref_mut() {
            Some(t) => t.span(name, lane, stream, f),
            None => f(),
        }
    }
}
