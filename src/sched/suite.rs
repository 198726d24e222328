//! The workload suite: a seeded generator of varied workloads, and a runner that simulates
//! every policy on each and scores it against the workload's lower bound
//! ([`super::bound`]). `cargo run --release --example suite` prints the tables and draws
//! the plot ([`super::plot::suite_svg`]); docs/SCHEDULING.md has the results.
//!
//! Each workload draws: 2 to 16 GPUs; 3 to 50 jobs of the thesis' five models with their
//! per-sample and per-iteration costs scaled by `10^u`, `u` uniform in `[-1, 1]` (iteration
//! times over two orders of magnitude), each 20 to 300 s alone; arrivals all at once, Poisson,
//! in bursts, or evenly staggered, at an offered load (exclusive time over GPU time until the
//! last arrival) of 0.8 to 2; a first placement that is bad (everything on GPU 0), hand-made
//! (`[5,5]` on two neighbouring GPUs), good (one GPU each, round-robin) or none (even);
//! in one workload of four a reconfiguration stall of 50 to 500 ms, in one of four a
//! co-location efficiency of 0.9.

use std::fmt::Write as _;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::bound::file_bound;
use super::jobs::{JobFile, JobSim, JobSpec, ManagerConfig, SimulationConfig};
use super::policy::PolicyKind;
use super::report::Report;
use super::sim::{SimOptions, simulate};
use super::workload::{THESIS_MODELS, Workload};
use crate::Result;

/// The suite's default seed and size.
pub const DEFAULT_SEED: u64 = 2027;
pub const DEFAULT_WORKLOADS: usize = 24;
/// Max Slow-Downs within this of the lowest count as the fairest.
pub const TIE: f64 = 0.02;

const GPU_COUNTS: [usize; 7] = [2, 3, 4, 6, 8, 12, 16];
const ARRIVALS: [&str; 4] = ["together", "poisson", "bursts", "staggered"];
const PLACEMENTS: [&str; 4] = ["gpu0", "pairs", "packed", "even"];

/// One generated workload of the suite.
#[derive(Clone, Debug, PartialEq)]
pub struct SuiteWorkload {
    /// `wNN-<gpus>gpu-<jobs>jobs-<arrivals>-<placement>`.
    pub name: String,
    pub workload: Workload,
}

/// `count` workloads drawn from `seed` (module docs). Deterministic.
pub fn generate(seed: u64, count: usize) -> Result<Vec<SuiteWorkload>> {
    let mut seeds = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|w| {
            let mut rng = ChaCha8Rng::seed_from_u64(seeds.random());
            workload(w, &mut rng)
        })
        .collect()
}

fn workload(w: usize, rng: &mut ChaCha8Rng) -> Result<SuiteWorkload> {
    let m = GPU_COUNTS[rng.random_range(0..GPU_COUNTS.len())];
    let n = rng.random_range(3..=(4 * m).min(50));
    let arrivals = ARRIVALS[rng.random_range(0..ARRIVALS.len())];
    let placement = PLACEMENTS[rng.random_range(0..PLACEMENTS.len())];
    let load: f64 = rng.random_range(0.5..1.0);
    let mut machine = SimulationConfig::with_gpus(m);
    if rng.random_range(0..4) == 0 {
        machine.reconfigure_ms = rng.random_range(50.0..500.0f64).round();
    }
    if rng.random_range(0..4) == 0 {
        machine.colocation_efficiency = 0.9;
    }
    let mut models = Vec::with_capacity(n);
    let mut jobs: Vec<JobSpec> = (0..n)
        .map(|k| {
            let model = THESIS_MODELS[rng.random_range(0..THESIS_MODELS.len())];
            let scale = 10f64.powf(rng.random_range(-1.0..1.0));
            let sample_ms = round3(model.sample_ms * scale);
            let iter_overhead_ms = round3(model.iter_overhead_ms * scale);
            let iter_s = (model.batch_size as f64 * sample_ms + iter_overhead_ms) / 1000.0;
            let alone_s: f64 = rng.random_range(20.0..300.0);
            let initial_dr = match placement {
                "gpu0" => Some((0..m).map(|g| if g == 0 { 10 } else { 0 }).collect()),
                "pairs" => {
                    let g = rng.random_range(0..m);
                    let mut dr = vec![0i64; m];
                    dr[g] = 5;
                    dr[(g + 1) % m] = 5;
                    Some(dr)
                }
                "packed" => Some((0..m).map(|g| if g == k % m { 10 } else { 0 }).collect()),
                _ => None,
            };
            models.push(model.name);
            JobSpec {
                name: format!("{}-{k:02}", model.name),
                batch_size: model.batch_size,
                iterations: ((alone_s / iter_s).round() as u64).max(1),
                arrival_s: 0.0,
                initial_dr,
                sim: Some(JobSim {
                    sample_ms,
                    iter_overhead_ms,
                    grad_mb: model.grad_mb,
                }),
            }
        })
        .collect();
    let total: f64 = jobs
        .iter()
        .filter_map(|j| j.exclusive_iter_s().map(|x| x * j.iterations as f64))
        .sum();
    // Arrivals spread over the time the machine needs for all the work at `load`.
    let span = total / (m as f64 * load);
    let mut t = 0.0;
    for (k, job) in jobs.iter_mut().enumerate() {
        job.arrival_s = match arrivals {
            "together" => 0.0,
            "poisson" => {
                let at = t;
                let u: f64 = rng.random();
                t += -(1.0 - u).ln() * span / n as f64;
                at
            }
            // Four bursts over the span.
            "bursts" => (k * 4 / n) as f64 * span / 4.0,
            _ => k as f64 * span / n as f64,
        };
        job.arrival_s = round3(job.arrival_s);
    }
    let file = JobFile {
        manager: ManagerConfig::default(),
        simulation: Some(machine),
        jobs,
    };
    let name = format!("w{w:02}-{m}gpu-{n}jobs-{arrivals}-{placement}");
    file.validate(&name)?;
    Ok(SuiteWorkload {
        name,
        workload: Workload { file, models },
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One workload's results: its bound and one report per policy.
#[derive(Clone, Debug)]
pub struct SuiteRow {
    pub workload: String,
    pub gpus: usize,
    pub jobs: usize,
    pub bound: f64,
    pub reports: Vec<Report>,
    /// DR changes per policy.
    pub changes: Vec<u64>,
}

/// Simulates every policy of `policies` on every workload (workloads in parallel).
pub fn run(workloads: &[SuiteWorkload], policies: &[PolicyKind]) -> Result<Vec<SuiteRow>> {
    workloads
        .par_iter()
        .map(|w| {
            let file = &w.workload.file;
            let bound = file_bound(file, &w.name)?;
            let outcomes = policies
                .iter()
                .map(|&p| {
                    let options = SimOptions {
                        policy: Some(p),
                        skip_bound: true,
                        ..SimOptions::default()
                    };
                    simulate(file, &w.name, &options).map(|mut o| {
                        o.report = o.report.with_bound(bound);
                        o
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let changes = outcomes.iter().map(|o| o.stats.dr_changes).collect();
            let reports = outcomes.into_iter().map(|o| o.report).collect();
            Ok(SuiteRow {
                workload: w.name.clone(),
                gpus: file.simulation.as_ref().map_or(0, |s| s.gpus),
                jobs: file.jobs.len(),
                bound,
                reports,
                changes,
            })
        })
        .collect()
}

/// Per policy, over the rows: `(mean ratio, worst ratio, fairest count, mean of mean SD,
/// mean Jain, mean makespan over the shortest, mean utilisation)`.
pub fn summary(rows: &[SuiteRow], policies: &[PolicyKind]) -> Vec<PolicySummary> {
    let n = rows.len().max(1) as f64;
    policies
        .iter()
        .enumerate()
        .map(|(p, &kind)| {
            let ratio = |r: &SuiteRow| r.reports[p].max_slowdown / r.bound;
            let best_sd = |r: &SuiteRow| {
                r.reports
                    .iter()
                    .map(|x| x.max_slowdown)
                    .fold(f64::INFINITY, f64::min)
            };
            let best_makespan = |r: &SuiteRow| {
                r.reports
                    .iter()
                    .map(|x| x.makespan_s)
                    .fold(f64::INFINITY, f64::min)
            };
            PolicySummary {
                policy: kind,
                mean_ratio: rows.iter().map(ratio).sum::<f64>() / n,
                worst_ratio: rows.iter().map(ratio).fold(0.0, f64::max),
                fairest: rows
                    .iter()
                    .filter(|r| r.reports[p].max_slowdown <= best_sd(r) + TIE)
                    .count(),
                mean_slowdown: rows.iter().map(|r| r.reports[p].mean_slowdown).sum::<f64>() / n,
                jain: rows.iter().map(|r| r.reports[p].jain_index).sum::<f64>() / n,
                makespan: rows
                    .iter()
                    .map(|r| r.reports[p].makespan_s / best_makespan(r))
                    .sum::<f64>()
                    / n,
                util: rows.iter().map(|r| r.reports[p].mean_gpu_util).sum::<f64>() / n,
                changes_per_job: rows
                    .iter()
                    .map(|r| r.changes[p] as f64 / r.jobs.max(1) as f64)
                    .sum::<f64>()
                    / n,
            }
        })
        .collect()
}

/// One policy's figures over the suite.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicySummary {
    pub policy: PolicyKind,
    /// Mean and largest `max_slowdown / bound`.
    pub mean_ratio: f64,
    pub worst_ratio: f64,
    /// Workloads where its max Slow-Down is within [`TIE`] of the lowest.
    pub fairest: usize,
    /// Means over the workloads of the mean Slow-Down and Jain's index.
    pub mean_slowdown: f64,
    pub jain: f64,
    /// Mean of its makespan over the shortest of all policies.
    pub makespan: f64,
    /// Mean GPU utilisation, percent.
    pub util: f64,
    /// Mean DR changes per job.
    pub changes_per_job: f64,
}

/// The summary as a Markdown table.
pub fn summary_table(rows: &[SuiteRow], policies: &[PolicyKind]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| policy | max SD / bound, mean | worst | fairest (of {}) | mean SD | Jain (1/SD) | \
         makespan / shortest | GPU util (%) | DR changes / job |",
        rows.len()
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for p in summary(rows, policies) {
        let _ = writeln!(
            s,
            "| `{}` | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} |",
            p.policy,
            p.mean_ratio,
            p.worst_ratio,
            p.fairest,
            p.mean_slowdown,
            p.jain,
            p.makespan,
            p.util,
            p.changes_per_job
        );
    }
    s
}

/// Every workload's bound and each policy's max Slow-Down, as a Markdown table.
pub fn workload_table(rows: &[SuiteRow], policies: &[PolicyKind]) -> String {
    let mut s = String::new();
    let _ = write!(s, "| workload | bound |");
    for p in policies {
        let _ = write!(s, " `{p}` |");
    }
    let _ = write!(s, "\n|---|---|");
    for _ in policies {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    for r in rows {
        let best = r
            .reports
            .iter()
            .map(|x| x.max_slowdown)
            .fold(f64::INFINITY, f64::min);
        let _ = write!(s, "| {} | {:.3} |", r.workload, r.bound);
        for rep in &r.reports {
            if rep.max_slowdown <= best + TIE {
                let _ = write!(s, " **{:.3}** |", rep.max_slowdown);
            } else {
                let _ = write!(s, " {:.3} |", rep.max_slowdown);
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_covers_the_ranges_deterministically() {
        let a = generate(DEFAULT_SEED, DEFAULT_WORKLOADS).unwrap();
        assert_eq!(a, generate(DEFAULT_SEED, DEFAULT_WORKLOADS).unwrap());
        assert_eq!(a.len(), DEFAULT_WORKLOADS);
        for w in &a {
            let file = &w.workload.file;
            let m = file.simulation.as_ref().unwrap().gpus;
            assert!((2..=16).contains(&m), "{}", w.name);
            assert!((3..=50).contains(&file.jobs.len()), "{}", w.name);
            assert_eq!(w.workload.models.len(), file.jobs.len());
            file.check_gpus(m, &w.name).unwrap();
        }
        for part in ARRIVALS.iter().chain(&PLACEMENTS) {
            assert!(
                a.iter().any(|w| w.name.contains(part)),
                "no workload with {part}"
            );
        }
        let x: Vec<f64> = a
            .iter()
            .flat_map(|w| {
                w.workload
                    .file
                    .jobs
                    .iter()
                    .filter_map(|j| j.exclusive_iter_s())
            })
            .collect();
        let (lo, hi) = (
            x.iter().copied().fold(f64::INFINITY, f64::min),
            x.iter().copied().fold(0.0, f64::max),
        );
        assert!(hi / lo > 100.0, "iteration times {lo}..{hi}");
    }
}
