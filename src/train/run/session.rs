//! One job, set up to train: what `attnrt-train` does with a one-job file and what every job
//! process of a multi-job run does, written once. A [`SessionConfig`] (the job's keys, the
//! devices, the command line's settings) opens a [`Session`]: the dataset and model, the
//! optimizer and precision with the flags' overrides applied, an engine on the devices, and
//! the step a resumed run continues from. The session then calibrates, trains, or both.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Receiver;

use serde::{Deserialize, Serialize};

use crate::base::{DeviceList, Devices, DistributionRatio, Precision, TensorFile};
use crate::kernels::allreduce::MAX_PEERS;
use crate::train::data::Dataset;
use crate::train::models::ModelSpec;
use crate::train::models::cnn::{self, Arch};
use crate::train::optim::{Optimizer, OptimizerKind};
use crate::train::run::calibrate::Calibration;
use crate::train::run::checkpoint::{self, Damaged, Latest};
use crate::train::run::engine::{
    CnnOptions, CpuEngine, Engine, ExchangeChoice, ReplicaEngine, State,
};
use crate::train::run::fault::Faults;
use crate::train::run::spec::{DEFAULT_LR, TrainSpec};
use crate::train::run::trainer::{Job, OnCheckpointError, Outcome, Progress, TrainOptions, train};
use crate::{Error, Result};

/// A flag that SIGINT and SIGTERM set: a run that watches it checkpoints at the next step
/// boundary and stops. Every process of `attnrt-train` installs its handlers through this.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::io("signal handler", e))?;
    }
    Ok(stop)
}

/// The devices `list` names on this machine: `all` is every GPU, or the CPU (with the reason
/// as the second value) when there is none or the kernels were not compiled.
pub fn resolve_devices(list: &DeviceList) -> Result<(Devices, Option<String>)> {
    match list {
        DeviceList::All => Ok(match crate::gpu::device_count() {
            Ok(n) if crate::kernels::compiled() => (Devices::Gpus((0..n).collect()), None),
            Ok(_) => (
                Devices::Cpu(1),
                Some("this build has no compiled kernels; training on the CPU".into()),
            ),
            Err(e) => (Devices::Cpu(1), Some(format!("{e}; training on the CPU"))),
        }),
        DeviceList::Named(devices) => {
            if devices.count() > MAX_PEERS {
                return Err(Error::invalid(
                    format!("devices {list}"),
                    format!("a job splits over at most {MAX_PEERS} devices"),
                ));
            }
            Ok((devices.clone(), None))
        }
    }
}

/// The command line's training settings, shared by every job of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Seed for initialisation, sample order and augmentation.
    pub seed: u64,
    /// Override every job's `optimizer`, `lr` and `precision` keys.
    pub optimizer: Option<OptimizerKind>,
    pub lr: Option<f32>,
    pub precision: Option<Precision>,
    /// The job's own checkpoint directory (a multi-job run gives each job its own).
    pub checkpoint_dir: Option<PathBuf>,
    /// Save every this many steps (0: only on stop and at the end).
    pub checkpoint_every: u64,
    /// Continue from the newest intact checkpoint in `checkpoint_dir`.
    pub resume: bool,
    /// What a periodic checkpoint that cannot be written does (default: stop the run).
    #[serde(default)]
    pub on_checkpoint_error: OnCheckpointError,
    /// Batches the loader prepares ahead.
    pub prefetch: usize,
}

impl RunSettings {
    /// Seed `seed`, no overrides, no checkpoints, two batches prefetched: what tests of a
    /// session need.
    pub fn in_memory(seed: u64) -> RunSettings {
        RunSettings {
            seed,
            optimizer: None,
            lr: None,
            precision: None,
            checkpoint_dir: None,
            checkpoint_every: 0,
            resume: false,
            on_checkpoint_error: OnCheckpointError::Stop,
            prefetch: 2,
        }
    }
}

/// Everything needed to open one job's [`Session`]; a multi-job manager sends it to each job
/// process once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// The job file, for errors.
    pub origin: String,
    pub name: String,
    pub batch_size: u64,
    pub iterations: u64,
    pub spec: TrainSpec,
    pub devices: Devices,
    pub settings: RunSettings,
}

/// One job, open on its devices.
pub struct Session {
    job: Job,
    optimizer: Optimizer,
    precision: Precision,
    settings: RunSettings,
    engine: Box<dyn Engine>,
    resume_from: Option<Latest>,
    start_step: u64,
    /// Newer checkpoints than the one resumed from that did not load (set aside).
    damaged: Vec<Damaged>,
    faults: Faults,
}

impl Session {
    /// Opens the job's data and model and a fresh engine on its devices, and with `resume`
    /// reads the newest intact checkpoint (damaged newer ones are set aside and listed by
    /// [`Session::damaged`]); errors about the job's keys name the file, the job and the
    /// key.
    pub fn open(cfg: SessionConfig) -> Result<Session> {
        let SessionConfig {
            origin,
            name,
            batch_size,
            iterations,
            spec,
            devices,
            settings,
        } = cfg;
        let ctx = |key: &str| format!("{origin}: job '{name}': {key}");
        let faults = Faults::from_env(&name)?;
        let dataset = Arc::new(Dataset::open(
            &spec.dataset,
            settings.seed,
            &ctx("dataset"),
        )?);
        let is_cnn = Arch::from_name(&spec.model).is_some();
        let classes = spec
            .classes
            .unwrap_or(if is_cnn { 1000 } else { dataset.classes() });
        if classes < dataset.classes() {
            return Err(Error::invalid(
                ctx("classes"),
                format!(
                    "{classes} outputs for a dataset of {} classes",
                    dataset.classes()
                ),
            ));
        }
        let model = ModelSpec::parse(&spec.model, dataset.shape(), classes, &ctx("model"))?;
        let kind = settings
            .optimizer
            .or(spec.optimizer)
            .unwrap_or(OptimizerKind::AdamW);
        let lr = settings
            .lr
            .or(spec.lr.map(|lr| lr as f32))
            .unwrap_or(DEFAULT_LR);
        let optimizer = kind.with_lr(lr);
        let precision = settings
            .precision
            .or(spec.precision)
            .unwrap_or(Precision::F32);
        precision.require("the trainer", &crate::train::PRECISIONS)?;
        let state = match &spec.init_weights {
            None => State::fresh(model.init(settings.seed), &optimizer)
                .with_buffers(model.initial_buffers()),
            Some(path) => {
                let ModelSpec::Cnn(config) = &model else {
                    return Err(Error::invalid(
                        ctx("init_weights"),
                        "only the torchvision CNNs load initial weights",
                    ));
                };
                let file = TensorFile::open(path)
                    .map_err(|e| Error::invalid(ctx("init_weights"), e.to_string()))?;
                let (params, buffers) = cnn::graph(*config)
                    .load(&file, "")
                    .map_err(|e| Error::invalid(ctx("init_weights"), e.to_string()))?;
                State::fresh(params, &optimizer).with_buffers(buffers)
            }
        };
        if let (Some(_), ModelSpec::Cnn(config)) = (spec.dropout, &model)
            && !cnn::graph(*config).has_dropout()
        {
            return Err(Error::invalid(
                ctx("dropout"),
                format!("model '{}' has no dropout layer", spec.model),
            ));
        }
        let sync_bn = spec.sync_bn.unwrap_or(false);
        let engine: Box<dyn Engine> = match &devices {
            Devices::Gpus(ordinals) => {
                let cnn = CnnOptions {
                    sync_bn,
                    dropout: spec.dropout.map(|p| p as f32),
                    f32_conv_transforms: spec.f32_conv_transforms.unwrap_or(false),
                };
                Box::new(ReplicaEngine::with_exchange(
                    ordinals,
                    &model,
                    optimizer,
                    precision,
                    &state,
                    ExchangeChoice::Auto,
                    cnn,
                )?)
            }
            Devices::Cpu(n) => {
                let engine = CpuEngine::new(model.clone(), optimizer, precision, *n, state)
                    .with_sync_bn(sync_bn);
                Box::new(match spec.dropout {
                    Some(p) => engine.with_dropout(p as f32),
                    None => engine,
                })
            }
        };
        let mut resume_from = match (&settings.checkpoint_dir, settings.resume) {
            (Some(dir), true) => checkpoint::load_latest(dir)?,
            _ => None,
        };
        let damaged = resume_from
            .as_mut()
            .map(|l| std::mem::take(&mut l.damaged))
            .unwrap_or_default();
        checkpoint::set_aside(&damaged)?;
        let start_step = resume_from.as_ref().map_or(0, |l| l.meta.step);
        Ok(Session {
            job: Job {
                name,
                model_name: spec.model,
                model,
                dataset,
                batch_size: batch_size as usize,
                iterations,
            },
            optimizer,
            precision,
            settings,
            engine,
            resume_from,
            start_step,
            damaged,
            faults,
        })
    }

    pub fn job(&self) -> &Job {
        &self.job
    }

    pub fn optimizer(&self) -> Optimizer {
        self.optimizer
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The step a resumed run continues from (0 when fresh).
    pub fn start_step(&self) -> u64 {
        self.start_step
    }

    /// Checkpoints newer than the one resumed from that did not load, newest first; they
    /// were renamed to `*.damaged` ([`checkpoint::set_aside`]).
    pub fn damaged(&self) -> &[Damaged] {
        &self.damaged
    }

    /// A line about how the engine runs (e.g. a fallback), if any.
    pub fn notice(&self) -> Option<String> {
        self.engine.notice()
    }

    /// Measures the job alone, one-device points on device `gpu` ([`Calibration::measure`]);
    /// the engine's state is left as it was.
    pub fn calibrate(&mut self, gpu: usize) -> Result<Calibration> {
        Calibration::measure(&self.job, self.engine.as_mut(), self.settings.seed, gpu)
    }

    /// Trains to the end, or until `stop` is set (after a checkpoint), starting with the split
    /// `dr`; `dr_updates` (from a multi-job manager) change it at step boundaries. A session
    /// trains once.
    pub fn train(
        &mut self,
        dr: DistributionRatio,
        stop: Arc<AtomicBool>,
        dr_updates: Option<Receiver<DistributionRatio>>,
        on_step: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome> {
        let s = &self.settings;
        let opts = TrainOptions {
            seed: s.seed,
            optimizer: self.optimizer,
            precision: self.precision,
            dr,
            checkpoint_dir: s.checkpoint_dir.clone(),
            checkpoint_every: s.checkpoint_every,
            resume_from: self.resume_from.take(),
            on_checkpoint_error: s.on_checkpoint_error,
            faults: self.faults.clone(),
            prefetch: s.prefetch,
            stop,
            dr_updates,
        };
        train(&self.job, self.engine.as_mut(), &opts, on_step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, settings: RunSettings) -> SessionConfig {
        let table = toml::from_str(&format!(
            "model = \"mlp:8\"\ndataset = \"synthetic:64\"\n{extra}"
        ))
        .unwrap();
        SessionConfig {
            origin: "jobs.toml".into(),
            name: "j".into(),
            batch_size: 8,
            iterations: 2,
            spec: TrainSpec::from_table(table, "jobs.toml: job 'j'").unwrap(),
            devices: Devices::Cpu(2),
            settings,
        }
    }

    /// The flags override the job's keys, which override the defaults.
    #[test]
    fn settings_come_from_the_flags_then_the_job_then_the_defaults() {
        let plain = Session::open(config("", RunSettings::in_memory(1))).unwrap();
        assert_eq!(plain.precision(), Precision::F32);
        assert_eq!(plain.optimizer(), Optimizer::adamw(DEFAULT_LR));
        let keyed = config(
            "precision = \"bf16\"\noptimizer = \"sgd\"\nlr = 0.5",
            RunSettings::in_memory(1),
        );
        let s = Session::open(keyed.clone()).unwrap();
        assert_eq!(s.precision(), Precision::Bf16);
        assert_eq!(s.optimizer(), Optimizer::sgd(0.5));
        let flags = RunSettings {
            precision: Some(Precision::F32),
            optimizer: Some(OptimizerKind::AdamW),
            lr: Some(0.25),
            ..RunSettings::in_memory(1)
        };
        let s = Session::open(SessionConfig {
            settings: flags,
            ..keyed
        })
        .unwrap();
        assert_eq!(s.precision(), Precision::F32);
        assert_eq!(s.optimizer(), Optimizer::adamw(0.25));
        let bad = config("", RunSettings::in_memory(1));
        let e = Session::open(SessionConfig {
            spec: TrainSpec {
                dataset: "imagenet".into(),
                ..bad.spec.clone()
            },
            ..bad
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.starts_with("jobs.toml: job 'j': dataset"), "{e}");
    }

    #[test]
    fn a_session_trains_and_calibrates_on_cpu_shards() {
        let mut s = Session::open(config("", RunSettings::in_memory(1))).unwrap();
        let c = s.calibrate(1).unwrap();
        assert!(c.full_s > 0.0 && c.split_s.is_some());
        let stop = Arc::new(AtomicBool::new(false));
        let mut steps = 0;
        let out = s
            .train(DistributionRatio::even(2).unwrap(), stop, None, &mut |_| {
                steps += 1
            })
            .unwrap();
        assert_eq!((out.step, steps), (2, 2));
    }

    #[test]
    fn device_lists_resolve() {
        let (d, notice) = resolve_devices(&"cpu:3".parse().unwrap()).unwrap();
        assert_eq!((d, notice), (Devices::Cpu(3), None));
        let (d, _) = resolve_devices(&DeviceList::All).unwrap();
        assert!(d.count() >= 1);
        let e = resolve_devices(&"cpu:9".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cpu:9") && e.contains("at most 8"), "{e}");
    }
}
