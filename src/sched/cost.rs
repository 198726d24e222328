//! The simulator's cost model, as functions that the simulator, the lower bound
//! ([`super::bound`]) and the `minmax` policy ([`super::minmax`]) share, so that all three
//! price an iteration the same way:
//!
//! - a job's shard on GPU `g` is `b_g * sample + overhead` seconds of that GPU alone, `b_g`
//!   from [`DistributionRatio::split_batch`] (GPUs given no sample are skipped);
//! - an iteration on `k > 1` GPUs ends with a ring all-reduce of
//!   `latency + 2 (k-1)/k * grad_mb / gbps`;
//! - a GPU running `n >= 2` shards gives each `colocation_efficiency / n` of its speed.
//!
//! [`RoundModel`] is what the manager knows of that model at a round: the machine's costs and,
//! per running job, its costs and progress. It travels with [`super::PeriodInputs`] and in
//! the decision log, so a round can be replayed.

use serde::{Deserialize, Serialize};

use super::dr::{DR_UNITS, DistributionRatio, apportion};
use super::jobs::{JobSim, SimulationConfig};
use super::slowdown::JobProgress;
use crate::{Error, Result};

/// `(GPU, seconds of work alone)` of each shard of one iteration of a job of `batch` samples
/// under `dr`.
pub fn shard_work(batch: u64, costs: &JobSim, dr: &DistributionRatio) -> Vec<(usize, f64)> {
    let (sample_s, overhead_s) = (costs.sample_ms / 1000.0, costs.iter_overhead_ms / 1000.0);
    // `split_batch` over the used GPUs only: the same shards (unused GPUs get no sample and
    // no leftover), without sorting every GPU of a large machine.
    let used: Vec<usize> = dr.used_gpus().collect();
    let weights: Vec<u64> = used.iter().map(|&g| u64::from(dr.get(g))).collect();
    let samples = apportion(&weights, batch).unwrap_or_default();
    used.into_iter()
        .zip(samples)
        .filter(|&(_, samples)| samples > 0)
        .map(|(g, samples)| (g, samples as f64 * sample_s + overhead_s))
        .collect()
}

/// The all-reduce that ends an iteration run on `shards` GPUs, seconds (0 on one GPU).
pub fn allreduce_s(machine: &SimulationConfig, shards: usize, grad_mb: f64) -> f64 {
    if shards <= 1 {
        return 0.0;
    }
    let k = shards as f64;
    machine.allreduce_latency_ms / 1000.0
        + 2.0 * (k - 1.0) / k * grad_mb / (machine.allreduce_gbps * 1000.0)
}

/// The fastest a shard can run: speed 1 alone, `colocation_efficiency / n` beside `n - 1`
/// others (`n >= 2`).
pub fn max_shard_speed(machine: &SimulationConfig) -> f64 {
    (machine.colocation_efficiency / 2.0).max(1.0)
}

/// The most work a GPU can do per second, whoever shares it.
pub fn max_gpu_speed(machine: &SimulationConfig) -> f64 {
    machine.colocation_efficiency.max(1.0)
}

/// Every shape an iteration of a job can take on `machine` (the partitions of the 10 units
/// over at most `min(gpus, 10)` GPUs; where the units sit changes neither the shards' sizes
/// nor their number), as `(shortest time, work)` in seconds: its largest shard at
/// [`max_shard_speed`] plus its all-reduce, and the GPU work of all its shards.
pub fn iteration_shapes(batch: u64, costs: &JobSim, machine: &SimulationConfig) -> Vec<(f64, f64)> {
    let speed = max_shard_speed(machine);
    let max_parts = machine.gpus.clamp(1, usize::from(DR_UNITS));
    partitions(DR_UNITS, max_parts)
        .into_iter()
        .filter_map(|parts| DistributionRatio::new(parts).ok())
        .map(|dr| {
            let shards = shard_work(batch, costs, &dr);
            let slowest = shards.iter().map(|s| s.1).fold(0.0, f64::max);
            let work: f64 = shards.iter().map(|s| s.1).sum();
            (
                slowest / speed + allreduce_s(machine, shards.len(), costs.grad_mb),
                work,
            )
        })
        .collect()
}

/// The shortest iteration a job can have on `machine`, whatever its DR and whoever else runs
/// (the fastest of [`iteration_shapes`]).
pub fn min_iteration_s(batch: u64, costs: &JobSim, machine: &SimulationConfig) -> f64 {
    iteration_shapes(batch, costs, machine)
        .iter()
        .map(|s| s.0)
        .fold(f64::INFINITY, f64::min)
}

/// The partitions of `total` into at most `max_parts` positive parts, largest first.
fn partitions(total: u8, max_parts: usize) -> Vec<Vec<u8>> {
    fn rec(left: u8, cap: u8, max_parts: usize, cur: &mut Vec<u8>, out: &mut Vec<Vec<u8>>) {
        if left == 0 {
            out.push(cur.clone());
            return;
        }
        if cur.len() == max_parts {
            return;
        }
        for p in (1..=cap.min(left)).rev() {
            cur.push(p);
            rec(left - p, p, max_parts, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    rec(total, total, max_parts, &mut Vec::new(), &mut out);
    out
}

/// One running job as the manager knows it at a round: its costs (from `[job.sim]` or the
/// calibration) and its progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobModel {
    pub batch_size: u64,
    pub costs: JobSim,
    /// Seconds since the job arrived.
    pub elapsed_s: f64,
    pub done_iters: u64,
    pub total_iters: u64,
    /// Iteration time alone on one GPU with the whole batch (the Slow-Down's denominator).
    pub exclusive_iter_s: f64,
}

impl JobModel {
    /// The model of a job of `batch_size` samples and `costs`, with `progress` at `now_s`.
    pub fn new(batch_size: u64, costs: &JobSim, progress: &JobProgress, now_s: f64) -> Self {
        JobModel {
            batch_size,
            costs: costs.clone(),
            elapsed_s: (now_s - progress.arrival_s()).max(0.0),
            done_iters: progress.done_iters(),
            total_iters: progress.total_iters(),
            exclusive_iter_s: progress.exclusive_iter_s(),
        }
    }

    /// Iterations still to run.
    pub fn remaining_iters(&self) -> u64 {
        self.total_iters.saturating_sub(self.done_iters)
    }

    /// `total_iters * exclusive_iter_s`.
    pub fn exclusive_s(&self) -> f64 {
        self.total_iters as f64 * self.exclusive_iter_s
    }
}

/// The cost model at one round: the machine, and one [`JobModel`] per job of the round's
/// inputs, in the same order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundModel {
    pub machine: SimulationConfig,
    pub jobs: Vec<JobModel>,
}

impl RoundModel {
    /// Checks what the policies rely on: a machine of `gpus` GPUs with positive speeds and
    /// bandwidth, and `jobs` models with positive exclusive times.
    pub fn check(&self, gpus: usize, jobs: usize) -> Result<()> {
        let ctx = "manager cost model";
        let m = &self.machine;
        if m.gpus != gpus {
            return Err(Error::invalid(
                ctx,
                format!("is for {} GPUs, the machine has {gpus}", m.gpus),
            ));
        }
        if self.jobs.len() != jobs {
            return Err(Error::invalid(
                ctx,
                format!("has {} jobs, the round has {jobs}", self.jobs.len()),
            ));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !positive(m.colocation_efficiency)
            || !positive(m.allreduce_gbps)
            || !non_negative(m.allreduce_latency_ms)
            || !non_negative(m.reconfigure_ms)
        {
            return Err(Error::invalid(
                ctx,
                format!("machine costs must be finite, speeds and bandwidth > 0: {m:?}"),
            ));
        }
        for (i, j) in self.jobs.iter().enumerate() {
            let c = &j.costs;
            if !positive(j.exclusive_iter_s)
                || j.total_iters == 0
                || j.batch_size == 0
                || !non_negative(j.elapsed_s)
                || !non_negative(c.sample_ms)
                || !non_negative(c.iter_overhead_ms)
                || !non_negative(c.grad_mb)
                || !positive(j.batch_size as f64 * c.sample_ms + c.iter_overhead_ms)
            {
                return Err(Error::invalid(
                    ctx,
                    format!(
                        "job {i}: needs batch, iterations, exclusive and iteration time > 0, \
                         costs >= 0: {j:?}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs(sample_ms: f64, overhead_ms: f64, grad_mb: f64) -> JobSim {
        JobSim {
            sample_ms,
            iter_overhead_ms: overhead_ms,
            grad_mb,
        }
    }

    #[test]
    fn shards_match_split_batch() {
        let c = costs(1.0, 2.0, 0.0);
        for (units, batch) in [
            (vec![3u8, 0, 3, 2, 2], 64u64),
            (vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 7),
            (vec![0, 10], 5),
            (vec![4, 0, 3, 0, 3], 1),
        ] {
            let dr = DistributionRatio::new(units).unwrap();
            let expected: Vec<(usize, f64)> = dr
                .split_batch(batch)
                .iter()
                .enumerate()
                .filter(|s| *s.1 > 0)
                .map(|(g, &b)| (g, b as f64 * 0.001 + 0.002))
                .collect();
            assert_eq!(shard_work(batch, &c, &dr), expected, "{dr} {batch}");
        }
    }

    #[test]
    fn partitions_of_ten() {
        // p(10) = 42; into at most 2 parts: 10, 9+1, ..., 5+5.
        assert_eq!(partitions(10, 10).len(), 42);
        assert_eq!(partitions(10, 2).len(), 6);
        assert_eq!(partitions(10, 1), vec![vec![10]]);
    }

    #[test]
    fn shortest_iteration() {
        let mut machine = SimulationConfig::with_gpus(4);
        machine.allreduce_latency_ms = 0.0;
        // No all-reduce, no overhead: 4 GPUs at [3,3,2,2] -> largest shard 30 of 100 samples.
        let c = costs(1.0, 0.0, 0.0);
        assert!((min_iteration_s(100, &c, &machine) - 0.030).abs() < 1e-12);
        // A 100 MB all-reduce (10 ms on 2 GPUs, 15 ms on 4) against 100 ms of compute:
        // [5,5] gives 60 ms, [3,3,2,2] 45 ms, [4,3,3] 40 + 13.3 ms.
        let c = costs(1.0, 0.0, 100.0);
        assert!((min_iteration_s(100, &c, &machine) - 0.045).abs() < 1e-12);
        // One GPU: the exclusive time.
        let one = SimulationConfig::with_gpus(1);
        assert!((min_iteration_s(64, &costs(3.0, 8.0, 98.0), &one) - 0.2).abs() < 1e-12);
        assert_eq!(allreduce_s(&machine, 1, 100.0), 0.0);
    }
}
