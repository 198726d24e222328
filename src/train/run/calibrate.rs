//! Calibration: a job's iteration time alone, measured on the real engine before a multi-job
//! run starts (the Slow-Down's denominator, `iter_time_exclusive`), plus the two extra points
//! that turn the job into the simulator's cost model (`[job.sim]`, fitted by
//! `crate::multijob::simfile`).
//!
//! Calibration steps are real forward/backward/update steps on the job's first batches, but
//! the engine's state is put back afterwards: a calibrated run trains exactly as an
//! uncalibrated one would.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::base::DistributionRatio;
use crate::train::data::batches::{Loader, shard_ranges};
use crate::train::run::engine::Engine;
use crate::train::run::trainer::Job;

/// Steps run before timing (first-use allocations, cuBLAS heuristics, caches).
pub const WARMUP_STEPS: usize = 3;
/// Steps timed per configuration; the median is kept.
pub const TIMED_STEPS: usize = 8;

/// Measured iteration times of one job, seconds (medians).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The whole mini-batch alone on one device: `iter_time_exclusive`.
    pub full_s: f64,
    /// Half the mini-batch alone on one device (separates per-sample from fixed cost).
    pub half_s: f64,
    /// The whole mini-batch split 5/5 over two devices (the all-reduce's cost), when the
    /// machine has two.
    pub split_s: Option<f64>,
    /// Gradient size, MB (10^6 bytes).
    pub grad_mb: f64,
    pub batch_size: usize,
}

impl Calibration {
    /// Checks values read back from a file: finite, non-negative times and size, a positive
    /// full-batch time (the Slow-Down's denominator) and batch. Returns the problem.
    pub fn check(&self) -> std::result::Result<(), String> {
        let times = [("full_s", self.full_s), ("half_s", self.half_s)]
            .into_iter()
            .chain(self.split_s.map(|s| ("split_s", s)))
            .chain([("grad_mb", self.grad_mb)]);
        for (key, v) in times {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{key} must be finite and >= 0, got {v}"));
            }
        }
        if self.full_s <= 0.0 || self.batch_size == 0 {
            return Err(format!(
                "full_s and batch_size must be > 0, got {} and {}",
                self.full_s, self.batch_size
            ));
        }
        Ok(())
    }

    /// Measures `job` on `engine` (device `gpu` for the one-device points). Leaves the
    /// engine's state as it found it.
    pub fn measure(job: &Job, engine: &mut dyn Engine, seed: u64, gpu: usize) -> Result<Self> {
        let devices = engine.devices();
        let saved = engine.state()?;
        let alone = DistributionRatio::exclusive(devices, gpu)?;
        let full_s = median_step_s(job, engine, seed, &alone, job.batch_size)?;
        let half_s = median_step_s(job, engine, seed, &alone, (job.batch_size / 2).max(1))?;
        let split_s = if devices >= 2 {
            let other = if gpu == 0 { 1 } else { 0 };
            let mut units = vec![0u8; devices];
            units[gpu] = 5;
            units[other] = 5;
            let split = DistributionRatio::new(units)?;
            Some(median_step_s(job, engine, seed, &split, job.batch_size)?)
        } else {
            None
        };
        engine.set_state(&saved)?;
        Ok(Calibration {
            full_s,
            half_s,
            split_s,
            grad_mb: saved.params.len() as f64 * 4.0 / 1e6,
            batch_size: job.batch_size,
        })
    }
}

/// Median wall time of [`TIMED_STEPS`] steps of `batch` samples under `dr`, after
/// [`WARMUP_STEPS`], on the job's first batches.
fn median_step_s(
    job: &Job,
    engine: &mut dyn Engine,
    seed: u64,
    dr: &DistributionRatio,
    batch: usize,
) -> Result<f64> {
    let steps = WARMUP_STEPS + TIMED_STEPS;
    let mut loader = Loader::spawn(job.dataset.clone(), seed, batch, 0, steps as u64, 2)?;
    let shards = shard_ranges(dr, batch);
    let mut times = Vec::with_capacity(TIMED_STEPS);
    for t in 1..=steps {
        let started = Instant::now();
        let Some(b) = loader.next_batch() else {
            match loader.take_error() {
                Some(e) => return Err(e),
                None => break,
            }
        };
        engine.step(t as u64, &Arc::new(b), &shards)?;
        if t > WARMUP_STEPS {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times.get(times.len() / 2).copied().unwrap_or(f64::NAN))
}
