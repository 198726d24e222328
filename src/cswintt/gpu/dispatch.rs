//! How a layer's heads are launched: `sequential` (one stream, one head after another, the
//! thesis's baseline), `streams` (one stream per head, forked from and joined back to the
//! main stream with events, the thesis's method) or `fused` (one launch of the fused kernel
//! for all heads, beyond the thesis: its blocks fill the GPU without streams). All three
//! launch the same [`PreparedAttention`] values, each head through the same device code, so
//! they give bitwise-identical results.
//!
//! Heads write disjoint channels of one concat buffer and their own `head_out` buffers.
//! cudarc's event tracking is off on our contexts, so those disjoint writes do not make the
//! streams wait on each other; the fork and join events are the only ordering.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use crate::cswintt::Mode;
use crate::error::{Error, Result};
use crate::gpu::{EventTimer, Gpu, StreamSet, nvtx};
use crate::kernels::window_attention::{MAX_FUSED, PreparedAttention, WindowAttentionKernels};

pub(super) enum Dispatch {
    Sequential,
    Streams(StreamSet),
    Fused,
}

impl Dispatch {
    /// The dispatch for `mode` over heads of widths `head_widths`. `fused` needs one shared
    /// width (one kernel variant, one shared-memory size) and at most [`MAX_FUSED`] heads.
    pub fn new(gpu: &Gpu, mode: Mode, head_widths: &[usize]) -> Result<Dispatch> {
        let heads = head_widths.len();
        match mode {
            Mode::Sequential => Ok(Dispatch::Sequential),
            Mode::Streams => Ok(Dispatch::Streams(StreamSet::new(gpu, heads)?)),
            Mode::Fused => {
                if heads > MAX_FUSED {
                    return Err(Error::invalid(
                        "--mode fused",
                        format!("{heads} heads; the fused kernel takes at most {MAX_FUSED}"),
                    ));
                }
                if head_widths.windows(2).any(|w| w[0] != w[1]) {
                    return Err(Error::invalid(
                        "--mode fused",
                        format!("heads of different widths {head_widths:?} cannot share a launch"),
                    ));
                }
                Ok(Dispatch::Fused)
            }
        }
    }

    pub fn mode(&self) -> Mode {
        match self {
            Dispatch::Sequential => Mode::Sequential,
            Dispatch::Streams(_) => Mode::Streams,
            Dispatch::Fused => Mode::Fused,
        }
    }

    /// Launches the attention `work(h, stream)` prepares for heads `0..n`. Sequential and
    /// streams record a stage named `{prefix}/head {h}` per head; fused records one stage,
    /// `{prefix}/heads 0-{n-1} fused`. Work queued on `main` before this call happens
    /// before every head; work queued on `main` after it waits for all of them.
    pub fn heads(
        &self,
        main: &Arc<CudaStream>,
        n: usize,
        prefix: &str,
        rec: &mut Recorder<'_>,
        kernel: &WindowAttentionKernels,
        mut work: impl FnMut(usize, &CudaStream) -> Result<PreparedAttention>,
    ) -> Result<()> {
        match self {
            Dispatch::Sequential => {
                for h in 0..n {
                    rec.stage(&format!("{prefix}/head {h}"), 0, main, || {
                        kernel.launch(main, &work(h, main)?)
                    })?;
                }
                Ok(())
            }
            Dispatch::Streams(set) => {
                set.fork(main)?;
                for h in 0..n {
                    let s = set.stream(h);
                    rec.stage(&format!("{prefix}/head {h}"), h + 1, s, || {
                        kernel.launch(s, &work(h, s)?)
                    })?;
                }
                set.join(main)
            }
            Dispatch::Fused => {
                let name = format!("{prefix}/heads 0-{} fused", n.saturating_sub(1));
                rec.stage(&name, 0, main, || {
                    let sets = (0..n).map(|h| work(h, main)).collect::<Result<Vec<_>>>()?;
                    kernel.launch_fused(main, &sets)
                })
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
