//! The simulator's inputs from a real run's measurements: each job's `[job.sim]` costs from
//! its calibration, and the machine's all-reduce cost fitted over the jobs
//! (`--write-sim FILE`; then `attnrt-train --simulate --jobs FILE` predicts the same run).

use crate::sched::JobFile;
use crate::sched::jobs::SimulationConfig;
use crate::train::run::calibrate::Calibration;

/// `file` with `[simulation]` for a machine of `gpus` devices and every calibrated job's
/// `[job.sim]` filled in from `calibrations` (by job index).
pub fn calibrated_file(
    file: &JobFile,
    gpus: usize,
    calibrations: &[Option<Calibration>],
) -> JobFile {
    let mut out = file.clone();
    let mut machine = out
        .simulation
        .clone()
        .unwrap_or_else(|| SimulationConfig::with_gpus(gpus));
    machine.gpus = gpus;
    let points: Vec<(f64, f64)> = calibrations
        .iter()
        .flatten()
        .filter_map(|c| c.allreduce_s().map(|s| (c.grad_mb, s * 1e3)))
        .collect();
    if let Some((latency_ms, gbps)) = fit_allreduce(&points) {
        machine.allreduce_latency_ms = latency_ms;
        machine.allreduce_gbps = gbps;
    }
    out.simulation = Some(machine);
    for (job, c) in out.jobs.iter_mut().zip(calibrations) {
        if let Some(c) = c {
            job.sim = Some(c.sim_costs());
        }
    }
    out
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
