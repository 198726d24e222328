//! The simulator's inputs from a real run's measurements: each job's `[job.sim]` costs from
//! its calibration, and the machine's all-reduce cost fitted over the jobs
//! (`--write-sim FILE`; then `attnrt-train --simulate --jobs FILE` predicts the same run).

use crate::sched::jobs::limits::{ALLREDUCE_GBPS, STALL_MS};
use crate::sched::jobs::{JobSim, SimulationConfig};
use crate::train::run::calibrate::Calibration;

use super::jobfile::JobFile;

/// `file` with `[simulation]` for a machine of `gpus` devices and every calibrated job's
/// `[job.sim]` filled in from `calibrations` (by job index).
pub fn calibrated_file(
    file: &JobFile,
    gpus: usize,
    calibrations: &[Option<Calibration>],
) -> JobFile {
    let mut out = file.clone();
    let mut machine = out
        .sched
        .simulation
        .clone()
        .unwrap_or_else(|| SimulationConfig::with_gpus(gpus));
    machine.gpus = gpus;
    let points: Vec<(f64, f64)> = calibrations
        .iter()
        .flatten()
        .filter_map(|c| allreduce_s(c).map(|s| (c.grad_mb, s * 1e3)))
        .collect();
    // A fit through noisy points can land outside what a job file may hold (a 10-minute
    // all-reduce gives 30 kB/s): held to the bounds, so that the file written loads again.
    if let Some((latency_ms, gbps)) = fit_allreduce(&points) {
        machine.allreduce_latency_ms = latency_ms.clamp(STALL_MS.0, STALL_MS.1);
        machine.allreduce_gbps = gbps.clamp(ALLREDUCE_GBPS.0, ALLREDUCE_GBPS.1);
    }
    out.sched.simulation = Some(machine);
    for (job, c) in out.sched.jobs.iter_mut().zip(calibrations) {
        if let Some(c) = c {
            job.sim = Some(sim_costs(c));
        }
    }
    out
}

/// The simulator's cost model fitted to a calibration: the per-sample slope from the full and
/// half batches, the rest of the full batch's time as fixed cost.
pub fn sim_costs(c: &Calibration) -> JobSim {
    let half = (c.batch_size / 2).max(1);
    let per_sample_s = if c.batch_size > half {
        ((c.full_s - c.half_s) / (c.batch_size - half) as f64).max(0.0)
    } else {
        c.full_s / c.batch_size as f64
    };
    let overhead_s = (c.full_s - per_sample_s * c.batch_size as f64).max(0.0);
    JobSim {
        sample_ms: per_sample_s * 1e3,
        iter_overhead_ms: overhead_s * 1e3,
        grad_mb: c.grad_mb,
    }
}

/// The all-reduce's share of the split step: what the split took beyond its slower shard's
/// compute under [`sim_costs`], seconds (`None` on one device).
pub fn allreduce_s(c: &Calibration) -> Option<f64> {
    let costs = sim_costs(c);
    let shard = c.batch_size.div_ceil(2) as f64 * costs.sample_ms + costs.iter_overhead_ms;
    c.split_s.map(|s| (s - shard / 1e3).max(0.0))
}

/// Fits `ms = latency + grad_mb / gbps` (the simulator's two-GPU all-reduce cost) to
/// `(grad_mb, ms)` points by least squares; `None` when the points cannot give a positive
/// bandwidth (fewer than two distinct sizes, or a cost that does not grow with size).
fn fit_allreduce(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx <= 0.0 || sxy <= 0.0 {
        return None;
    }
    let slope = sxy / sxx; // ms per MB
    let latency = (my - slope * mx).max(0.0);
    Some((latency, 1.0 / slope))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_costs_fit_the_two_points() {
        let c = Calibration {
            full_s: 0.030,
            half_s: 0.018,
            split_s: Some(0.021),
            grad_mb: 4.0,
            batch_size: 128,
        };
        let sim = sim_costs(&c);
        // 12 ms over 64 samples; 30 - 128 * 0.1875 = 6 ms fixed.
        assert!((sim.sample_ms - 0.1875).abs() < 1e-12);
        assert!((sim.iter_overhead_ms - 6.0).abs() < 1e-9);
        // Split: 64 * 0.1875 + 6 = 18 ms of compute, 3 ms of exchange.
        assert!((allreduce_s(&c).unwrap() - 0.003).abs() < 1e-9);
        let exclusive = 128.0 * sim.sample_ms + sim.iter_overhead_ms;
        assert!((exclusive - 30.0).abs() < 1e-9);
    }

    /// Found by the fuzzer: calibrations whose split steps differ by 559 s fitted 34 kB/s, a
    /// value the job file's bounds refuse, so `--write-sim` wrote a file that did not load.
    #[test]
    fn fitted_allreduce_stays_within_the_job_file_bounds() {
        let c = |grad_mb, split_s| {
            Some(Calibration {
                full_s: 1e-5,
                half_s: 0.0,
                split_s: Some(split_s),
                grad_mb,
                batch_size: 1,
            })
        };
        let text = "[[job]]\nname = \"a\"\nmodel = \"mlp\"\ndataset = \"synthetic\"\n\
                    batch_size = 1\niterations = 1\n[[job]]\nname = \"b\"\nmodel = \"mlp\"\n\
                    dataset = \"synthetic\"\nbatch_size = 1\niterations = 1\n";
        let file = JobFile::parse(text, "jobs.toml").unwrap();
        let out = calibrated_file(&file, 2, &[c(211089.6, 1e-5), c(211108.9, 559.18)]);
        let machine = out.sched.simulation.as_ref().unwrap();
        assert_eq!(machine.allreduce_gbps, ALLREDUCE_GBPS.0);
        JobFile::parse(&out.to_toml().unwrap(), "sim.toml").unwrap();
    }

    #[test]
    fn fits_latency_and_bandwidth() {
        // 0.2 ms + MB / (100 GB/s = 0.01 ms per MB).
        let pts = [(10.0, 0.3), (50.0, 0.7), (100.0, 1.2)];
        let (lat, gbps) = fit_allreduce(&pts).unwrap();
        assert!((lat - 0.2).abs() < 1e-9, "{lat}");
        assert!((gbps - 100.0).abs() < 1e-6, "{gbps}");
        assert!(fit_allreduce(&pts[..1]).is_none());
        assert!(fit_allreduce(&[(10.0, 1.0), (20.0, 0.5)]).is_none());
    }
}
