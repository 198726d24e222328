//! Event-based timing: a stopwatch for whole passes, and named spans for timelines (which
//! kernels ran when, on which stream).

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream};

use crate::error::{CudaContext as _, Result};

fn timing_event(ctx: &Arc<CudaContext>) -> Result<CudaEvent> {
    ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .cuda(|| "creating a timing event".into())
}

/// Milliseconds, on the GPU's clock, that the work `f` queues on `stream` takes: from an event
/// recorded before it to one recorded after it. Waits for that work. The one stopwatch of the
/// benches (`benches/engine.rs`, `kernels.rs`, `encoder.rs`).
pub fn time_ms(stream: &CudaStream, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let timer = EventTimer::start(stream)?;
    f()?;
    timer.elapsed_ms(stream)
}

/// Records a start event, then spans against it; durations come from the GPU's clock.
pub struct EventTimer {
    ctx: Arc<CudaContext>,
    origin: CudaEvent,
    open: Vec<(String, usize, CudaEvent, CudaEvent)>,
}

/// One finished span: `lane` is the caller's stream index, times in ms from the origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub name: String,
    pub lane: usize,
    pub start_ms: f64,
    pub end_ms: f64,
}

impl EventTimer {
    /// Starts the clock on `stream`.
    pub fn start(stream: &CudaStream) -> Result<EventTimer> {
        let ctx = stream.context().clone();
        let origin = timing_event(&ctx)?;
        origin
            .record(stream)
            .cuda(|| "recording timer origin".into())?;
        Ok(EventTimer {
            ctx,
            origin,
            open: Vec::new(),
        })
    }

    /// Times the work `f` queues on `stream` as a span named `name` on lane `lane`.
    pub fn span<T>(
        &mut self,
        name: impl Into<String>,
        lane: usize,
        stream: &CudaStream,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let name = name.into();
        let start = timing_event(&self.ctx)?;
        start
            .record(stream)
            .cuda(|| format!("recording start of {name}"))?;
        let out = f()?;
        let end = timing_event(&self.ctx)?;
        end.record(stream)
            .cuda(|| format!("recording end of {name}"))?;
        self.open.push((name, lane, start, end));
        Ok(out)
    }

    /// Milliseconds from the origin to now on `stream` (waits for the stream's work).
    pub fn elapsed_ms(&self, stream: &CudaStream) -> Result<f64> {
        let end = timing_event(&self.ctx)?;
        end.record(stream).cuda(|| "recording timer end".into())?;
        let ms = self
            .origin
            .elapsed_ms(&end)
            .cuda(|| "reading timer".into())?;
        Ok(ms as f64)
    }

    /// Waits for every span and returns them, in recording order.
    pub fn spans(self) -> Result<Vec<Span>> {
        self.open
            .into_iter()
            .map(|(name, lane, start, end)| {
                let s = self
                    .origin
                    .elapsed_ms(&start)
                    .cuda(|| format!("timing {name}"))?;
                let e = self
                    .origin
                    .elapsed_ms(&end)
                    .cuda(|| format!("timing {name}"))?;
                Ok(Span {
                    name,
                    lane,
                    start_ms: s as f64,
                    end_ms: e as f64,
                })
            })
            .collect()
    }
}
