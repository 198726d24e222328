//! Synthetic workloads: the five thesis models' simulated costs, and a seeded generator of
//! large job files for scale runs (`examples/scale-64gpu.toml` is one of them).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::jobs::{JobFile, JobSim, JobSpec, ManagerConfig, SimulationConfig};
use super::policy::PolicyKind;
use crate::{Error, Result};

/// Simulated training costs of one model on one GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelCost {
    pub name: &'static str,
    pub batch_size: u64,
    /// ms per sample alone on one GPU.
    pub sample_ms: f64,
    /// ms per iteration on each GPU used (launches, optimizer step, data loading).
    pub iter_overhead_ms: f64,
    /// Gradient size, MB (fp32 parameters).
    pub grad_mb: f64,
}

/// The thesis' five workloads, with costs measured on one NVIDIA H100 80GB HBM3 (2026-12-06,
/// build `eba70e9`, f32, 224x224 synthetic images, 1000 classes):
/// `attnrt-train --jobs probe5.toml --gpus 0 --policy static --write-sim fitted5.toml`, where
/// `probe5.toml` is `examples/thesis-4gpu-real.toml` with `gpus = 1`, no `initial_dr`,
/// `iterations = 3` and `arrival_s = 0`. The manager's calibration timed each job alone at its
/// batch and at half of it and fitted `sample_ms` and `iter_overhead_ms` (the per-iteration
/// intercept; AlexNet's came out negative and is clamped to 0). Gradient sizes are the fp32
/// parameter counts at 1000 classes (8.0 M, 25.6 M, 61.1 M, 25.0 M, 2.3 M parameters).
///
/// The thesis' own proportions (per-sample 2.9 / 3.0 / 0.5 / 4.2 / 0.8 ms, overheads
/// 15 / 8 / 4 / 10 / 12 ms, gradients 32 / 98 / 233 / 100 / 9 MB) are kept in
/// `examples/thesis-4gpu.toml`'s `[job.sim]` tables for the thesis scenario.
pub const THESIS_MODELS: [ModelCost; 5] = [
    ModelCost {
        name: "densenet121",
        batch_size: 64,
        sample_ms: 1.077,
        iter_overhead_ms: 12.28,
        grad_mb: 31.9,
    },
    ModelCost {
        name: "resnet50",
        batch_size: 64,
        sample_ms: 1.034,
        iter_overhead_ms: 6.49,
        grad_mb: 102.2,
    },
    ModelCost {
        name: "alexnet",
        batch_size: 128,
        sample_ms: 0.44,
        iter_overhead_ms: 0.0,
        grad_mb: 244.4,
    },
    ModelCost {
        name: "resnext50",
        batch_size: 64,
        sample_ms: 1.493,
        iter_overhead_ms: 18.89,
        grad_mb: 100.1,
    },
    ModelCost {
        name: "shufflenet",
        batch_size: 128,
        sample_ms: 0.255,
        iter_overhead_ms: 0.51,
        grad_mb: 9.1,
    },
];

/// Parameters of [`synthetic`].
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSpec {
    pub gpus: usize,
    pub jobs: usize,
    pub seed: u64,
    /// Mean gap between arrivals (exponential), seconds.
    pub mean_interarrival_s: f64,
    /// Iterations per job, drawn uniformly from this range (inclusive).
    pub iterations: (u64, u64),
    pub policy: PolicyKind,
}

impl SyntheticSpec {
    /// 64 GPUs, 500 jobs, one arrival every 1.5 s on average: about a hundred jobs run at
    /// once at the peak.
    pub fn scale_64x500() -> Self {
        SyntheticSpec {
            gpus: 64,
            jobs: 500,
            seed: 2026,
            mean_interarrival_s: 1.5,
            iterations: (200, 2000),
            policy: PolicyKind::Thesis,
        }
    }
}

/// A generated workload: its job file and the model each job stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub file: JobFile,
    /// The [`ModelCost::name`] of each job, by job index.
    pub models: Vec<&'static str>,
}

/// A job file of `spec.jobs` jobs drawn from [`THESIS_MODELS`] with Poisson arrivals; each job
/// starts on a hand-made placement, `[5,5]` on two neighbouring GPUs picked at random (all 10
/// units on one GPU when the machine has one). Deterministic for a given spec.
pub fn synthetic(spec: &SyntheticSpec) -> Result<Workload> {
    if spec.gpus == 0 {
        return Err(Error::invalid(
            "synthetic workload: gpus",
            "must be at least 1",
        ));
    }
    let (lo, hi) = spec.iterations;
    if lo == 0 || hi < lo {
        return Err(Error::invalid(
            "synthetic workload: iterations",
            format!("need 1 <= low <= high, got ({lo}, {hi})"),
        ));
    }
    if !(spec.mean_interarrival_s.is_finite() && spec.mean_interarrival_s >= 0.0) {
        return Err(Error::invalid(
            "synthetic workload: mean_interarrival_s",
            "must be finite and >= 0",
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut t = 0.0;
    let mut jobs = Vec::with_capacity(spec.jobs);
    let mut models = Vec::with_capacity(spec.jobs);
    for k in 0..spec.jobs {
        let model = THESIS_MODELS[rng.random_range(0..THESIS_MODELS.len())];
        let iterations = rng.random_range(lo..=hi);
        let g = rng.random_range(0..spec.gpus);
        let mut dr = vec![0i64; spec.gpus];
        if spec.gpus == 1 {
            dr[0] = 10;
        } else {
            dr[g] = 5;
            dr[(g + 1) % spec.gpus] = 5;
        }
        jobs.push(JobSpec {
            name: format!("{}-{k:04}", model.name),
            batch_size: model.batch_size,
            iterations,
            arrival_s: (t * 1000.0_f64).round() / 1000.0,
            initial_dr: Some(dr),
            sim: Some(JobSim {
                sample_ms: model.sample_ms,
                iter_overhead_ms: model.iter_overhead_ms,
                grad_mb: model.grad_mb,
            }),
        });
        models.push(model.name);
        let u: f64 = rng.random();
        t += -(1.0 - u).ln() * spec.mean_interarrival_s;
    }
    let file = JobFile {
        manager: ManagerConfig {
            policy: spec.policy,
            ..ManagerConfig::default()
        },
        simulation: Some(SimulationConfig::with_gpus(spec.gpus)),
        jobs,
    };
    file.validate("synthetic workload")?;
    Ok(Workload { file, models })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_valid() {
        let spec = SyntheticSpec {
            jobs: 20,
            ..SyntheticSpec::scale_64x500()
        };
        let a = synthetic(&spec).unwrap();
        let b = synthetic(&spec).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.models.len(), 20);
        assert!(a.file.jobs[3].name.starts_with(a.models[3]));
        let a = a.file;
        assert_eq!(a.jobs.len(), 20);
        a.check_gpus(64, "x").unwrap();
        let text = toml::to_string(&a).unwrap();
        assert_eq!(JobFile::parse(&text, "gen").unwrap(), a);
        let one = synthetic(&SyntheticSpec {
            gpus: 1,
            jobs: 3,
            ..spec
        })
        .unwrap()
        .file;
        assert_eq!(one.jobs[0].initial_dr, Some(vec![10]));
    }
}
