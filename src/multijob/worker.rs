//! One job of a multi-job run, in a process of its own (`attnrt-train --worker NAME`): it sets
//! the job up, answers the manager's commands on standard input, and reports on standard
//! output ([`super::protocol`]). A process per job is what isolates the jobs: a crash, an
//! out-of-memory error or a poisoned CUDA context ends one worker, and the manager goes on.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};

use super::protocol::{Command, Event, send};
use crate::sched::{DistributionRatio, JobFile};
use crate::train::optim::OptimizerKind;
use crate::train::run::calibrate::Calibration;
use crate::train::{
    Devices, Precision, TrainOptions, checkpoint, open_engine, open_job, optimizer_for,
    precision_for, train,
};
use crate::{Error, Result};

/// What a worker is told on its command line.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub jobs_path: PathBuf,
    /// The `[[job]]` name.
    pub job: String,
    pub devices: Devices,
    pub seed: u64,
    pub optimizer: Option<OptimizerKind>,
    pub lr: Option<f32>,
    pub precision: Option<Precision>,
    /// This job's own checkpoint directory.
    pub checkpoint_dir: Option<PathBuf>,
    pub checkpoint_every: u64,
    pub resume: bool,
    pub prefetch: usize,
}

/// Runs the worker; returns the process exit code. Any error is sent to the manager as
/// [`Event::Failed`] (and printed to standard error) before the worker exits with 1.
pub fn serve(cfg: &WorkerConfig) -> u8 {
    let mut out = io::stdout().lock();
    let stop = Arc::new(AtomicBool::new(false));
    match run(cfg, &mut out, &stop) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("attnrt-train worker '{}': {e}", cfg.job);
            let _ = send(
                &mut out,
                &Event::Failed {
                    message: e.to_string(),
                },
            );
            1
        }
    }
}

fn run(cfg: &WorkerConfig, out: &mut impl Write, stop: &Arc<AtomicBool>) -> Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::io("signal handler", e))?;
    }
    let origin = cfg.jobs_path.display().to_string();
    let file = JobFile::load(&cfg.jobs_path)?;
    let spec = file
        .jobs
        .iter()
        .find(|j| j.name == cfg.job)
        .ok_or_else(|| Error::invalid(&origin, format!("has no job named '{}'", cfg.job)))?;
    let job = open_job(spec, &origin, cfg.seed)?;
    let optimizer = optimizer_for(spec, cfg.optimizer, cfg.lr)?;
    let precision = precision_for(spec, cfg.precision)?;
    let mut engine = open_engine(&cfg.devices, &job, optimizer, precision, cfg.seed)?;
    let start_step = match (&cfg.checkpoint_dir, cfg.resume) {
        // The step only: `train` loads and verifies the checkpoint itself.
        (Some(dir), true) => checkpoint::latest_step(dir)?.unwrap_or(0),
        _ => 0,
    };
    let lost = |e: io::Error| Error::io("the manager's pipe (standard output)", e);
    send(
        out,
        &Event::Ready {
            start_step,
            iterations: job.iterations,
            batch_size: job.batch_size,
            notice: engine.notice(),
        },
    )
    .map_err(lost)?;

    let (control, dr_updates) = route_commands(stop.clone());
    let dr = loop {
        match control.recv() {
            Ok(Command::Calibrate { gpu }) => {
                let calibration = Calibration::measure(&job, engine.as_mut(), cfg.seed, gpu)?;
                send(out, &Event::Calibrated { calibration }).map_err(lost)?;
            }
            Ok(Command::Start { dr }) => break dr,
            // Stop, or the manager is gone: nothing trained since the last checkpoint.
            _ => {
                send(out, &Event::Stopped { step: start_step }).map_err(lost)?;
                return Ok(());
            }
        }
    };

    let opts = TrainOptions {
        seed: cfg.seed,
        optimizer,
        precision,
        dr,
        checkpoint_dir: cfg.checkpoint_dir.clone(),
        checkpoint_every: cfg.checkpoint_every,
        resume: cfg.resume,
        prefetch: cfg.prefetch,
        stop: stop.clone(),
        dr_updates: Some(dr_updates),
    };
    let outcome = train(&job, engine.as_mut(), &opts, &mut |p| {
        let step = Event::Step {
            step: p.step,
            step_s: p.step_s,
            loss: p.loss,
            accuracy: p.accuracy,
            samples_per_s: p.samples_per_s,
        };
        // Without a manager to report to, checkpoint and stop.
        if send(out, &step).is_err() {
            stop.store(true, Ordering::SeqCst);
        }
    })?;
    let last = if outcome.stopped {
        Event::Stopped { step: outcome.step }
    } else {
        Event::Finished {
            step: outcome.step,
            loss: outcome.loss,
            accuracy: outcome.accuracy,
        }
    };
    send(out, &last).map_err(lost)
}

/// Reads commands from standard input on a thread of its own: DR changes go to the training
/// loop (applied at its next step), `Stop` (or the end of input, or a line that is not a
/// command) sets `stop`, and every other command goes to the control channel.
fn route_commands(stop: Arc<AtomicBool>) -> (Receiver<Command>, Receiver<DistributionRatio>) {
    let (control_tx, control) = mpsc::channel();
    let (dr_tx, dr_updates) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(Command::SetDr { dr }) => {
                    let _ = dr_tx.send(dr);
                }
                Ok(Command::Stop) => break,
                Ok(other) => {
                    if control_tx.send(other).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("attnrt-train worker: not a command ({e}): {line}");
                    break;
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        let _ = control_tx.send(Command::Stop);
    });
    (control, dr_updates)
}
