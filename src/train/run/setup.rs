//! From a job file's `[[job]]` and the command line to a ready [`Job`] and [`Engine`]: shared
//! by single-job training and by each worker process of a multi-job run.

use std::fmt;
use std::sync::Arc;

use crate::base::Precision;
use crate::sched::jobs::JobSpec;
use crate::train::data::Dataset;
use crate::train::models::ModelSpec;
use crate::train::optim::{Optimizer, OptimizerKind};
use crate::train::run::engine::{CpuEngine, Engine, GpuEngine, State};
use crate::train::run::trainer::Job;
use crate::{Error, Result};

/// The devices a job's mini-batch is split over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Devices {
    /// `n` shards computed in turn on the CPU (`cpu` is one; `cpu:N` lets a multi-job run
    /// rehearse an N-GPU machine without one).
    Cpu(usize),
    /// CUDA ordinals.
    Gpus(Vec<usize>),
}

/// The learning rate when neither the job file nor `--lr` gives one.
pub const DEFAULT_LR: f32 = 1e-3;

impl Devices {
    /// Parses `--gpus`: `all` (every GPU; the CPU when there is none, with the reason as the
    /// second value), `cpu`, `cpu:N`, or ordinals like `0,1`.
    pub fn parse(flag: &str) -> Result<(Devices, Option<String>)> {
        let bad = |p: &str| Error::invalid(format!("--gpus {flag}"), p);
        match flag {
            "cpu" => Ok((Devices::Cpu(1), None)),
            "all" => Ok(match crate::gpu::device_count() {
                Ok(n) if crate::kernels::compiled() => (Devices::Gpus((0..n).collect()), None),
                Ok(_) => (
                    Devices::Cpu(1),
                    Some("this build has no compiled kernels; training on the CPU".into()),
                ),
                Err(e) => (Devices::Cpu(1), Some(format!("{e}; training on the CPU"))),
            }),
            _ => {
                if let Some(n) = flag.strip_prefix("cpu:") {
                    return match n.parse::<usize>() {
                        Ok(n) if (1..=crate::kernels::allreduce::MAX_PEERS).contains(&n) => {
                            Ok((Devices::Cpu(n), None))
                        }
                        _ => Err(bad(&format!(
                            "cpu:N needs N in 1..={}",
                            crate::kernels::allreduce::MAX_PEERS
                        ))),
                    };
                }
                let ordinals = flag
                    .split(',')
                    .map(|g| g.trim().parse::<usize>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| bad("expected all, cpu, cpu:N, or GPU ordinals like 0,1"))?;
                let mut seen = ordinals.clone();
                seen.sort_unstable();
                seen.dedup();
                if seen.len() != ordinals.len() {
                    return Err(bad("names a GPU twice"));
                }
                Ok((Devices::Gpus(ordinals), None))
            }
        }
    }

    /// How many shards a step has (the DR's length).
    pub fn count(&self) -> usize {
        match self {
            Devices::Cpu(n) => *n,
            Devices::Gpus(o) => o.len(),
        }
    }

    /// The value of `--gpus` that names these devices (for worker processes).
    pub fn flag(&self) -> String {
        match self {
            Devices::Cpu(n) => format!("cpu:{n}"),
            Devices::Gpus(o) => o.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, Devices::Gpus(_))
    }
}

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Devices::Cpu(1) => write!(f, "the CPU"),
            Devices::Cpu(n) => write!(f, "the CPU ({n} shards, in turn)"),
            Devices::Gpus(o) => write!(f, "GPUs {o:?}"),
        }
    }
}

/// The optimizer of a job: `--optimizer`/`--lr` when given (they override the file), else
/// the job's `optimizer`/`lr` keys, else AdamW at [`DEFAULT_LR`].
pub fn optimizer_for(
    spec: &JobSpec,
    flag_kind: Option<OptimizerKind>,
    flag_lr: Option<f32>,
) -> Result<Optimizer> {
    let kind = match (flag_kind, &spec.optimizer) {
        (Some(k), _) => k,
        (None, Some(name)) => name
            .parse()
            .map_err(|p: String| Error::invalid(format!("job '{}': optimizer", spec.name), p))?,
        (None, None) => OptimizerKind::AdamW,
    };
    let lr = flag_lr
        .or(spec.lr.map(|lr| lr as f32))
        .unwrap_or(DEFAULT_LR);
    Ok(kind.with_lr(lr))
}

/// The precision of a job's GEMMs: `--precision` when given (it overrides the file), else the
/// job's `precision` key, else f32.
pub fn precision_for(spec: &JobSpec, flag: Option<Precision>) -> Result<Precision> {
    let precision = match (flag, &spec.precision) {
        (Some(p), _) => p,
        (None, Some(name)) => name
            .parse()
            .map_err(|p: String| Error::invalid(format!("job '{}': precision", spec.name), p))?,
        (None, None) => Precision::F32,
    };
    precision.require("the trainer", &crate::train::PRECISIONS)?;
    Ok(precision)
}

/// The job's dataset and model, opened and checked; errors name `origin`, the job and the key.
pub fn open_job(spec: &JobSpec, origin: &str, seed: u64) -> Result<Job> {
    let ctx = |key: &str| format!("{origin}: job '{}': {key}", spec.name);
    let dataset = Arc::new(Dataset::open(&spec.dataset, seed, &ctx("dataset"))?);
    let model = ModelSpec::parse(
        &spec.model,
        dataset.shape(),
        dataset.classes(),
        &ctx("model"),
    )?;
    Ok(Job {
        name: spec.name.clone(),
        model_name: spec.model.clone(),
        model,
        dataset,
        batch_size: spec.batch_size as usize,
        iterations: spec.iterations,
    })
}

/// A fresh engine for `job` on `devices`, its replicas initialised from `seed`, its GEMMs in
/// `precision` (emulated on the CPU).
pub fn open_engine(
    devices: &Devices,
    job: &Job,
    optimizer: Optimizer,
    precision: Precision,
    seed: u64,
) -> Result<Box<dyn Engine>> {
    let state = State::fresh(job.model.init(seed), &optimizer);
    let model = &job.model;
    Ok(match devices {
        Devices::Gpus(ordinals) => Box::new(GpuEngine::new(
            ordinals, model, optimizer, precision, &state,
        )?),
        Devices::Cpu(n) => Box::new(CpuEngine::new(
            model.clone(),
            optimizer,
            precision,
            *n,
            state,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::JobFile;

    #[test]
    fn precision_comes_from_the_flag_then_the_job_then_f32() {
        let text = "[[job]]\nname = \"j\"\nmodel = \"mlp\"\ndataset = \"synthetic\"\n\
                    batch_size = 8\niterations = 1\n";
        let plain = JobFile::parse(text, "jobs.toml").unwrap().jobs.remove(0);
        let bf16 = JobSpec {
            precision: Some("bf16".into()),
            ..plain.clone()
        };
        assert_eq!(precision_for(&plain, None).unwrap(), Precision::F32);
        assert_eq!(precision_for(&bf16, None).unwrap(), Precision::Bf16);
        assert_eq!(
            precision_for(&bf16, Some(Precision::F32)).unwrap(),
            Precision::F32
        );
        let bad = JobSpec {
            precision: Some("f16".into()),
            ..plain
        };
        let e = precision_for(&bad, None).unwrap_err().to_string();
        assert!(
            e.contains("job 'j': precision") && e.contains("'f16'"),
            "{e}"
        );
    }

    #[test]
    fn parses_device_lists() {
        assert_eq!(Devices::parse("cpu").unwrap().0, Devices::Cpu(1));
        assert_eq!(Devices::parse("cpu:3").unwrap().0, Devices::Cpu(3));
        assert_eq!(Devices::parse("1,0").unwrap().0, Devices::Gpus(vec![1, 0]));
        assert_eq!(Devices::Gpus(vec![1, 0]).flag(), "1,0");
        assert_eq!(Devices::Cpu(2).flag(), "cpu:2");
        for bad in ["cpu:0", "cpu:x", "0,0", "a", ""] {
            let e = Devices::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--gpus"), "{bad}: {e}");
        }
    }
}
