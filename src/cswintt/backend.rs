//! The engine interface and device selection. Every engine (the CPU reference, the GPU
//! engine) implements [`Backend`]; [`select_backend`] turns a `--device` choice into
//! one, and [`gpu_backend`] is the single place the GPU engine plugs in. [`time_runs`]
//! times any of them.

use std::sync::Arc;
use std::time::Instant;

use super::cpu::CpuReference;
use super::{Inputs, Mode, Outputs, Precision};
use crate::base::LatencyStats;
use crate::base::devices::Device;
use crate::error::{Error, Result};
use crate::gpu::{Span, gpu_or_cpu};
use crate::model::weights::Weights;

/// An engine that runs the transformer on a batch of inputs.
pub trait Backend {
    /// One line for reports: `"CPU reference (f32, 2 threads)"`.
    fn describe(&self) -> String;

    /// `"cpu"` or `"cuda:N"`.
    fn device(&self) -> String;

    /// The precision this engine computes in.
    fn precision(&self) -> Precision;

    /// The relative error (`||ours - expected||_F / ||expected||_F`) this engine is held
    /// to against the golden files and the CPU reference.
    fn tolerance(&self) -> f64;

    /// Runs the transformer. With `intermediates`, also returns the tensors the golden
    /// files name `expected.encoder.*`, `expected.decoder.*` (those the engine can
    /// produce; see [`Outputs::get`]).
    fn run(&mut self, inputs: &Inputs, intermediates: bool) -> Result<Outputs>;

    /// Times one forward pass on `inputs` as named spans per stream (a timeline), where the
    /// engine can; the CPU reference cannot.
    fn trace(&mut self, _inputs: &Inputs) -> Result<Vec<Span>> {
        Err(Error::invalid(
            "--trace",
            format!(
                "{} records no kernel timeline; use the GPU engine",
                self.describe()
            ),
        ))
    }
}

/// Timed runs of one input.
pub struct Timing {
    /// The latency of each timed run, in milliseconds; `None` without timed runs.
    pub latency_ms: Option<LatencyStats>,
    /// The outputs of the last run, timed or not; `None` when there was none.
    pub last: Option<Outputs>,
}

/// Runs `inputs` `warmup` times untimed, then `iters` times timed by the wall clock around
/// each [`Backend::run`] (so a GPU pass includes its input upload and output download).
pub fn time_runs(
    backend: &mut dyn Backend,
    inputs: &Inputs,
    warmup: usize,
    iters: usize,
) -> Result<Timing> {
    let mut last = None;
    for _ in 0..warmup {
        last = Some(backend.run(inputs, false)?);
    }
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        let out = backend.run(inputs, false)?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        last = Some(out);
    }
    Ok(Timing {
        latency_ms: LatencyStats::new(&ms),
        last,
    })
}

/// Engine settings from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineOptions {
    /// Head dispatch (GPU only; the CPU ignores it).
    pub mode: Mode,
    /// Arithmetic precision (the CPU supports only `F32`).
    pub precision: Precision,
    /// Replay the forward pass from a CUDA graph (GPU only; the CPU ignores it).
    pub graph: bool,
}

/// The engine chosen, and a one-line notice when `auto` fell back to the CPU.
pub struct Selected {
    pub backend: Box<dyn Backend>,
    pub notice: Option<String>,
}

/// Resolves `device` to an engine: `cpu` is the CPU reference, `cuda[:N]` the GPU engine
/// (an error when unavailable), `auto` the GPU engine when usable, else the CPU with a
/// notice saying why.
pub fn select_backend(
    device: Device,
    weights: Arc<Weights>,
    options: EngineOptions,
) -> Result<Selected> {
    match device {
        Device::Cpu => Ok(Selected {
            backend: cpu_backend(weights, options)?,
            notice: None,
        }),
        Device::Cuda(n) => Ok(Selected {
            backend: gpu_backend(n, weights, options)?,
            notice: None,
        }),
        Device::Auto => {
            let gpu = gpu_backend(0, weights.clone(), options);
            let (backend, why) = gpu_or_cpu(gpu, || cpu_backend(weights, options))?;
            Ok(Selected {
                backend,
                notice: why.map(|reason| format!("no GPU used ({reason}); running on the CPU")),
            })
        }
    }
}

/// The CPU reference; only `f32` precision.
pub fn cpu_backend(weights: Arc<Weights>, options: EngineOptions) -> Result<Box<dyn Backend>> {
    if options.precision != Precision::F32 {
        return Err(Error::invalid(
            "--precision",
            format!(
                "{} is GPU-only; the CPU reference computes in f32",
                options.precision
            ),
        ));
    }
    Ok(Box::new(CpuReference::new(weights)?))
}

/// The GPU engine on device `ordinal`. The engine plugs in here.
pub fn gpu_backend(
    ordinal: usize,
    weights: Arc<Weights>,
    options: EngineOptions,
) -> Result<Box<dyn Backend>> {
    let gpu = crate::gpu::Gpu::open(ordinal)?;
    let mut engine =
        super::gpu::GpuEngine::with_precision(gpu, weights, options.mode, options.precision)?;
    engine.set_graph(options.graph);
    Ok(Box::new(engine))
}
