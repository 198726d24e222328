//! Every operation of one search step timed on its own (`attnrt-infer --ops`): where a
//! step's time goes, convolution by convolution, and whether an eager step waits for the
//! host or the GPU.
//!
//! Each operation runs once (which plans it, so its calls can be captured, and leaves its
//! output for the next operation), then `reps` times eagerly (the host's time to queue a call,
//! and the wall-clock time per call once waited for), then `reps` times captured into one CUDA
//! graph, replayed once to load it and once between two events (the GPU's time per call, as
//! a step replayed as a graph pays it: the launch gaps inside a graph included). Every
//! operation but the transformer writes buffers other than those it reads, so its repeats
//! compute what its first call did; the transformer's encoder works in place on its input,
//! so its repeats run on their own output: the times hold, the step's results are
//! discarded.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::CudaStream;

use crate::error::{CudaContext as _, Result};
use crate::gpu::{Graph, time_ms};
use crate::tracker::track::OpTiming;

/// The rows of one profiled step.
pub struct Profiler {
    stream: Arc<CudaStream>,
    reps: usize,
    rows: Vec<OpTiming>,
}

impl Profiler {
    /// `reps` (at least 1) calls of each operation, on `stream`.
    pub fn new(stream: &Arc<CudaStream>, reps: usize) -> Profiler {
        Profiler {
            stream: stream.clone(),
            reps: reps.max(1),
            rows: Vec::new(),
        }
    }

    /// Runs `f` (the operation `name`, of `flops`) and times it as the module docs say; its
    /// row, for the caller to add details to.
    pub fn op(
        &mut self,
        name: &str,
        flops: f64,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<&mut OpTiming> {
        let s = self.stream.clone();
        let reps = self.reps;
        let sync = || s.synchronize().cuda(|| format!("waiting for {name}"));
        f()?;
        sync()?;
        let t0 = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        let queued = t0.elapsed();
        sync()?;
        let waited = t0.elapsed();
        let graph = Graph::capture(&s, || (0..reps).try_for_each(|_| f()))?;
        graph.replay()?;
        let ms = time_ms(&s, || graph.replay())?;
        let per_call = |seconds: f64| seconds * 1e6 / reps as f64;
        self.rows.push(OpTiming {
            name: name.to_string(),
            detail: String::new(),
            candidates: String::new(),
            flops,
            graph_us: per_call(ms * 1e-3),
            host_us: per_call(queued.as_secs_f64()),
            eager_us: per_call(waited.as_secs_f64()),
        });
        Ok(self.rows.last_mut().expect("pushed above"))
    }

    pub fn into_rows(self) -> Vec<OpTiming> {
        self.rows
    }
}

/// Runs one operation `f`: once, or timed as a row of `profile` when profiling; the row.
pub fn op<'p>(
    profile: &'p mut Option<Profiler>,
    name: &str,
    flops: f64,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Option<&'p mut OpTiming>> {
    match profile {
        Some(p) => p.op(name, flops, f).map(Some),
        None => f().map(|()| None),
    }
}
