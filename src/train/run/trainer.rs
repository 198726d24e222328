//! The training loop of one job: batches from the loader, split by the DR, stepped by an
//! [`Engine`], checkpointed every K steps and when asked to stop, resumable.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::base::{DistributionRatio, Precision, Tensor};
use crate::train::data::Dataset;
use crate::train::data::batches::{Batch, Loader, LoaderStats, shard_ranges};
use crate::train::gpu::replica::HostTimes;
use crate::train::models::{Layout, ModelSpec};
use crate::train::optim::Optimizer;
use crate::train::run::checkpoint::{self, CheckpointMeta, Latest};
use crate::train::run::engine::{Engine, State};
use crate::train::run::fault::{self, Faults, StepFault};
use crate::{Error, Result};

/// One job, resolved: its model and data.
pub struct Job {
    pub name: String,
    /// The model as the job file names it (checked on resume).
    pub model_name: String,
    pub model: ModelSpec,
    pub dataset: Arc<Dataset>,
    pub batch_size: usize,
    pub iterations: u64,
}

pub struct TrainOptions {
    pub seed: u64,
    pub optimizer: Optimizer,
    /// The engine's GEMM precision (recorded in checkpoints and checked on resume).
    pub precision: Precision,
    /// The split over the engine's devices.
    pub dr: DistributionRatio,
    pub checkpoint_dir: Option<PathBuf>,
    /// Save every this many steps (0: only on stop and at the end).
    pub checkpoint_every: u64,
    /// The checkpoint to continue from (checked against the job and these options).
    pub resume_from: Option<Latest>,
    /// What a checkpoint that cannot be written (a full disk) does to the run.
    pub on_checkpoint_error: OnCheckpointError,
    /// Faults injected by a test ([`fault`]); none in a real run.
    pub faults: Faults,
    /// Batches assembled ahead of the loop.
    pub prefetch: usize,
    /// Set (by a signal handler, say) to stop at the next step boundary after a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// New distribution ratios (from a multi-job manager). The newest one received takes
    /// effect at the next step boundary, so no sample is dropped or repeated.
    pub dr_updates: Option<Receiver<DistributionRatio>>,
}

impl TrainOptions {
    /// A run without checkpoints, resume or stop requests, on the fixed split `dr`, with two
    /// batches prefetched: what tests and benchmarks of training itself need.
    pub fn in_memory(
        seed: u64,
        optimizer: Optimizer,
        precision: Precision,
        dr: DistributionRatio,
    ) -> TrainOptions {
        TrainOptions {
            seed,
            optimizer,
            precision,
            dr,
            checkpoint_dir: None,
            checkpoint_every: 0,
            resume_from: None,
            on_checkpoint_error: OnCheckpointError::Stop,
            faults: Faults::none(),
            prefetch: 2,
            stop: Arc::new(AtomicBool::new(false)),
            dr_updates: None,
        }
    }
}

/// What a periodic checkpoint that cannot be written does to the run. Either way the previous
/// checkpoint stays as it was; the last one, at the end or on a stop, is always required.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnCheckpointError {
    /// End the run with the error (the default: a run that cannot save is not safe to go on).
    #[default]
    Stop,
    /// Say so and go on training; the next checkpoint tries again.
    Continue,
}

impl OnCheckpointError {
    pub fn name(self) -> &'static str {
        match self {
            OnCheckpointError::Stop => "stop",
            OnCheckpointError::Continue => "continue",
        }
    }
}

impl fmt::Display for OnCheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OnCheckpointError {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "stop" => Ok(OnCheckpointError::Stop),
            "continue" => Ok(OnCheckpointError::Continue),
            _ => Err(format!("'{s}' is not one of stop, continue")),
        }
    }
}

/// After each step (and its checkpoint, when one was due), for progress output.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Steps completed, out of `iterations`.
    pub step: u64,
    pub iterations: u64,
    /// The step's mean loss and accuracy over its batch.
    pub loss: f64,
    pub accuracy: f64,
    /// Samples per second since this run (or resume) started.
    pub samples_per_s: f64,
    /// Seconds from the previous step's end (or the start) to this one's: the step's share of
    /// the wall time, waiting for the batch included.
    pub step_s: f64,
    /// The step's checkpoint could not be written and the run goes on
    /// ([`OnCheckpointError::Continue`]): why, and which checkpoint is kept instead.
    pub checkpoint_error: Option<String>,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The step the run started from (non-zero after a resume).
    pub start_step: u64,
    /// Steps completed in total.
    pub step: u64,
    /// Stopped early by the stop flag.
    pub stopped: bool,
    pub elapsed_s: f64,
    pub samples_per_s: f64,
    /// Samples per second from the end of the run's first step to the end of its last: the
    /// steady rate, without the first step's one-off costs (buffer allocation, cuBLAS's
    /// kernel loading, the first batch). `None` before the second step.
    pub steady_samples_per_s: Option<f64>,
    /// Seconds from the end of the run's first step to the end of its last (`None` before
    /// the second step).
    pub steady_s: Option<f64>,
    /// The last step's loss and accuracy (NaN when no step ran).
    pub loss: f64,
    pub accuracy: f64,
    pub last_checkpoint: Option<PathBuf>,
    /// The loader's rate and how long the steps waited for it
    /// ([`LoaderStats::limited`]: whether it set the pace).
    pub loader: LoaderStats,
    /// Per GPU of the engine, the most device memory in use at once during the run, in bytes
    /// ([`Engine::memory_peaks`]); empty on the CPU.
    pub memory_peaks: Vec<Option<u64>>,
    /// What ran each convolution pass on the first GPU ([`Engine::conv_paths`]); empty on the
    /// CPU and for models without convolutions.
    pub conv_paths: Vec<String>,
    /// The host's time enqueueing the first GPU's steps ([`Engine::host_times`]); `None` on
    /// the CPU.
    pub host_times: Option<HostTimes>,
}

/// Trains `job` on `engine` from scratch or from the newest checkpoint.
pub fn train(
    job: &Job,
    engine: &mut dyn Engine,
    opts: &TrainOptions,
    on_step: &mut dyn FnMut(&Progress),
) -> Result<Outcome> {
    check_dr(job, &opts.dr, engine.devices())?;
    let layout = job.model.layout();
    let mut start_step = 0;
    // The newest checkpoint on disk: what a failed save leaves the run with.
    let mut kept: Option<(u64, PathBuf)> = None;
    if let Some(latest) = &opts.resume_from {
        let meta = &latest.meta;
        check_resumable(job, opts, meta)?;
        engine.set_state(&state_from_tensors(
            &layout,
            &job.model.buffers(),
            &opts.optimizer,
            &latest.tensors,
            meta,
        )?)?;
        start_step = meta.step;
        kept = Some((meta.step, latest.json.clone()));
    }

    let mut loader = Loader::spawn(
        job.dataset.clone(),
        opts.seed,
        job.batch_size,
        start_step,
        job.iterations,
        opts.prefetch,
    )?;
    let mut shards = shard_ranges(&opts.dr, job.batch_size);
    let started = Instant::now();
    let mut outcome = Outcome {
        start_step,
        step: start_step,
        stopped: false,
        elapsed_s: 0.0,
        samples_per_s: 0.0,
        steady_samples_per_s: None,
        steady_s: None,
        loss: f64::NAN,
        accuracy: f64::NAN,
        last_checkpoint: None,
        loader: LoaderStats::default(),
        memory_peaks: Vec::new(),
        conv_paths: Vec::new(),
        host_times: None,
    };
    let mut saved_at = start_step;
    // Steps handed to the engine: up to one ahead of the steps finished, so the engine enqueues
    // step t + 1 while the GPU still runs step t and the GPU does not wait for the host.
    let mut submitted = start_step;
    // The batch of the step after the last submitted ([`Engine::stage_ahead`]).
    let mut ahead: Option<Arc<Batch>> = None;
    let mut finished_at = Instant::now();
    let mut first_finished: Option<Instant> = None;
    loop {
        while submitted < job.iterations
            && submitted - outcome.step < 2
            && !opts.stop.load(Ordering::SeqCst)
            // A checkpoint saves the state after the step in flight: not one step later.
            && !(submitted > outcome.step && checkpoint_due(opts, submitted))
        {
            if let Some(dr) = opts.dr_updates.as_ref().and_then(|r| r.try_iter().last()) {
                check_dr(job, &dr, engine.devices())?;
                shards = shard_ranges(&dr, job.batch_size);
            }
            let Some(batch) = ahead.take().or_else(|| loader.next_batch().map(Arc::new)) else {
                let why = loader.take_error().map_or_else(
                    || "the loader stopped before the last step".to_string(),
                    |e| e.to_string(),
                );
                return Err(Error::invalid(format!("job '{}'", job.name), why));
            };
            // The step after this one's batch, now, so the engine stages it while this step
            // is enqueued. A loader that stops here leaves `ahead` empty: the next step
            // asks the loader again and reports why. From the second step on: the loader
            // makes the first batches in new buffers, and a wait for the second before the
            // first step would count as the steps waiting for the loader (the first step's
            // planning gives it time to get ahead).
            if submitted > start_step && submitted + 1 < job.iterations {
                ahead = loader.next_batch().map(Arc::new);
                if let Some(next) = &ahead {
                    engine.stage_ahead(next);
                }
            }
            engine.submit(submitted + 1, &batch, &shards)?;
            if let Ok(b) = Arc::try_unwrap(batch) {
                loader.recycle(b);
            }
            submitted += 1;
        }
        if submitted == outcome.step {
            break; // every step done, or stopped
        }
        let mut stats = engine.finish()?;
        outcome.step += 1;
        match opts.faults.step(outcome.step) {
            Some(StepFault::Oom) => {
                return Err(Error::invalid(
                    format!("job '{}': step {}", job.name, outcome.step),
                    format!("out of GPU memory (injected by {})", fault::ENV),
                ));
            }
            Some(StepFault::Nan) => stats.loss = f64::NAN,
            Some(StepFault::Hang) => fault::hang(),
            Some(StepFault::Kill) => fault::kill_self(),
            None => {}
        }
        if !stats.loss.is_finite() {
            // Not rolled back: the run is deterministic, so from its checkpoint it would
            // diverge again at the same step.
            return Err(Error::invalid(
                format!("job '{}'", job.name),
                format!(
                    "the loss is {} at step {} (training diverged; lower the learning rate); {}",
                    stats.loss,
                    outcome.step,
                    kept_words(&kept)
                ),
            ));
        }
        let done = (outcome.step - start_step) as f64 * job.batch_size as f64;
        outcome.elapsed_s = started.elapsed().as_secs_f64();
        outcome.samples_per_s = done / outcome.elapsed_s.max(1e-9);
        match first_finished {
            None => first_finished = Some(Instant::now()),
            Some(t) => {
                let steady = (outcome.step - start_step - 1) as f64 * job.batch_size as f64;
                let steady_s = t.elapsed().as_secs_f64().max(1e-9);
                outcome.steady_s = Some(steady_s);
                outcome.steady_samples_per_s = Some(steady / steady_s);
            }
        }
        outcome.loss = stats.loss;
        outcome.accuracy = stats.correct as f64 / job.batch_size as f64;
        let mut progress = Progress {
            step: outcome.step,
            iterations: job.iterations,
            loss: outcome.loss,
            accuracy: outcome.accuracy,
            samples_per_s: outcome.samples_per_s,
            step_s: finished_at.elapsed().as_secs_f64(),
            checkpoint_error: None,
        };
        // A checkpoint's time counts in the next step's share, as the host spends it between
        // the two.
        finished_at = Instant::now();
        if checkpoint_due(opts, outcome.step) {
            match save(job, engine, opts, &layout, outcome.step, &mut kept) {
                Ok(path) => {
                    outcome.last_checkpoint = path;
                    saved_at = outcome.step;
                }
                Err(e) if opts.on_checkpoint_error == OnCheckpointError::Continue => {
                    progress.checkpoint_error = Some(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        on_step(&progress);
    }
    outcome.stopped = outcome.step < job.iterations;
    if saved_at != outcome.step {
        outcome.last_checkpoint = save(job, engine, opts, &layout, outcome.step, &mut kept)?;
    }
    outcome.elapsed_s = started.elapsed().as_secs_f64();
    outcome.loader = loader.stats();
    outcome.memory_peaks = engine.memory_peaks()?;
    outcome.conv_paths = engine.conv_paths()?;
    outcome.host_times = engine.host_times()?;
    Ok(outcome)
}

/// Whether a checkpoint is due after step `step`.
fn checkpoint_due(opts: &TrainOptions, step: u64) -> bool {
    opts.checkpoint_every > 0 && step.is_multiple_of(opts.checkpoint_every)
}

fn check_dr(job: &Job, dr: &DistributionRatio, devices: usize) -> Result<()> {
    if dr.gpus() != devices {
        return Err(Error::invalid(
            format!("job '{}': distribution ratio", job.name),
            format!("{dr} has {} entries for {devices} devices", dr.gpus()),
        ));
    }
    Ok(())
}

/// What is on disk instead of a checkpoint that could not be written.
fn kept_words(kept: &Option<(u64, PathBuf)>) -> String {
    match kept {
        Some((step, json)) => format!("the checkpoint of step {step} ({}) is kept", json.display()),
        None => "there is no earlier checkpoint".into(),
    }
}

/// Saves step `step` and records it in `kept`; an error says which checkpoint is kept instead.
fn save(
    job: &Job,
    engine: &mut dyn Engine,
    opts: &TrainOptions,
    layout: &Layout,
    step: u64,
    kept: &mut Option<(u64, PathBuf)>,
) -> Result<Option<PathBuf>> {
    let Some(dir) = &opts.checkpoint_dir else {
        return Ok(None);
    };
    let written = write_checkpoint(job, engine, opts, layout, step, dir).map_err(|e| {
        Error::invalid(
            format!("job '{}': checkpoint of step {step}", job.name),
            format!("not written ({e}); {}", kept_words(kept)),
        )
    })?;
    *kept = Some((step, written.clone()));
    Ok(Some(written))
}

fn write_checkpoint(
    job: &Job,
    engine: &mut dyn Engine,
    opts: &TrainOptions,
    layout: &Layout,
    step: u64,
    dir: &Path,
) -> Result<PathBuf> {
    let state = engine.state()?;
    let names: Vec<Vec<String>> = (0..=state.optimizer.len())
        .map(|k| {
            layout
                .slots
                .iter()
                .map(|s| tensor_name(k, &s.name))
                .collect()
        })
        .collect();
    let mut tensors: Vec<(&str, &[usize], &[f32])> = Vec::new();
    for (k, vector) in std::iter::once(&state.params)
        .chain(&state.optimizer)
        .enumerate()
    {
        for (slot, name) in layout.slots.iter().zip(&names[k]) {
            tensors.push((name, &slot.shape, &vector[slot.range()]));
        }
    }
    let buffers = job.model.buffers();
    let buffer_names: Vec<String> = buffers
        .slots
        .iter()
        .map(|s| format!("buffer/{}", s.name))
        .collect();
    for (slot, name) in buffers.slots.iter().zip(&buffer_names) {
        tensors.push((name, &slot.shape, &state.buffers[slot.range()]));
    }
    let meta = CheckpointMeta {
        format: checkpoint::FORMAT,
        step,
        seed: opts.seed,
        data_position: step * job.batch_size as u64,
        job: job.name.clone(),
        model: job.model_name.clone(),
        dataset: job.dataset.name().to_string(),
        batch_size: job.batch_size as u64,
        optimizer: opts.optimizer.to_string(),
        precision: opts.precision,
        tensors_file: String::new(),
        sha256: String::new(),
    };
    checkpoint::save(dir, &meta, &tensors, opts.faults.save(step))
}

/// `param/NAME` for the parameters (k = 0), `opt{k-1}/NAME` for optimizer state vector k-1.
fn tensor_name(k: usize, name: &str) -> String {
    if k == 0 {
        format!("param/{name}")
    } else {
        format!("opt{}/{name}", k - 1)
    }
}

fn check_resumable(job: &Job, opts: &TrainOptions, meta: &CheckpointMeta) -> Result<()> {
    let ctx = format!("checkpoint for step {} of job '{}'", meta.step, meta.job);
    let mismatch = |what: &str, theirs: String, ours: String| {
        Err(Error::invalid(
            &ctx,
            format!("was written with {what} {theirs}, this run has {ours}"),
        ))
    };
    if meta.job != job.name {
        return mismatch("job", meta.job.clone(), job.name.clone());
    }
    if meta.model != job.model_name {
        return mismatch("model", meta.model.clone(), job.model_name.clone());
    }
    if meta.dataset != job.dataset.name() {
        return mismatch("dataset", meta.dataset.clone(), job.dataset.name().into());
    }
    if meta.batch_size != job.batch_size as u64 {
        return mismatch(
            "batch_size",
            meta.batch_size.to_string(),
            job.batch_size.to_string(),
        );
    }
    if meta.seed != opts.seed {
        return mismatch("seed", meta.seed.to_string(), opts.seed.to_string());
    }
    if meta.optimizer != opts.optimizer.to_string() {
        return mismatch(
            "optimizer",
            meta.optimizer.clone(),
            opts.optimizer.to_string(),
        );
    }
    if meta.precision != opts.precision {
        return mismatch(
            "precision",
            meta.precision.to_string(),
            opts.precision.to_string(),
        );
    }
    if meta.step > job.iterations {
        return mismatch(
            "step",
            meta.step.to_string(),
            format!("iterations {}", job.iterations),
        );
    }
    Ok(())
}

fn state_from_tensors(
    layout: &Layout,
    buffer_layout: &Layout,
    optimizer: &Optimizer,
    tensors: &HashMap<String, Tensor>,
    meta: &CheckpointMeta,
) -> Result<State> {
    let mut vectors = vec![vec![0.0f32; layout.total]; 1 + optimizer.state_slots()];
    for (k, vector) in vectors.iter_mut().enumerate() {
        for slot in &layout.slots {
            let name = tensor_name(k, &slot.name);
            let t = tensors.get(&name).ok_or_else(|| {
                Error::invalid(
                    format!("checkpoint {}", meta.tensors_file),
                    format!("has no tensor {name}"),
                )
            })?;
            if t.shape != slot.shape {
                return Err(Error::invalid(
                    format!("checkpoint {}: {name}", meta.tensors_file),
                    format!("shape {:?}, the model needs {:?}", t.shape, slot.shape),
                ));
            }
            vector[slot.range()].copy_from_slice(&t.data);
        }
    }
    let params = vectors.remove(0);
    let mut buffers = vec![0.0f32; buffer_layout.total];
    for slot in &buffer_layout.slots {
        let name = format!("buffer/{}", slot.name);
        let t = tensors.get(&name).ok_or_else(|| {
            Error::invalid(
                format!("checkpoint {}", meta.tensors_file),
                format!("has no tensor {name}"),
            )
        })?;
        if t.data.len() != slot.len {
            return Err(Error::invalid(
                format!("checkpoint {}: {name}", meta.tensors_file),
                format!("{} values, the model needs {:?}", t.data.len(), slot.shape),
            ));
        }
        buffers[slot.range()].copy_from_slice(&t.data);
    }
    Ok(State {
        params,
        optimizer: vectors,
        buffers,
    })
}
