//! The whole job file (TOML) of `attnrt-train`, composed from its two owners: the scheduling
//! part ([`sched::JobFile`]: `[manager]`, `[simulation]`, and each `[[job]]`'s name, size,
//! arrival, initial split and `[job.sim]`) and each job's training keys ([`TrainSpec`]:
//! `model`, `dataset`, `optimizer`, `lr`, `precision`). Each part is typed and checked by its
//! owner, every error naming the file, the job and the key; a key neither knows is an error.
//! See `docs/SCHEDULING.md` for the format.

use std::path::Path;

use crate::base::Devices;
use crate::sched;
use crate::sched::workload::Workload;
use crate::train::{RunSettings, SessionConfig, TrainSpec};
use crate::{Error, Result};

/// A job file: the scheduling part and, by job index, each job's training keys.
#[derive(Clone, Debug, PartialEq)]
pub struct JobFile {
    pub sched: sched::JobFile,
    /// One per job of `sched.jobs`, in the same order.
    pub train: Vec<TrainSpec>,
}

impl JobFile {
    /// Reads and checks a job file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks job-file text; `origin` (usually the path) starts every error.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let (sched, tables) = sched::JobFile::parse_with(text, origin, &TrainSpec::KEYS)?;
        let train = sched
            .jobs
            .iter()
            .zip(tables)
            .map(|(job, table)| {
                TrainSpec::from_table(table, &format!("{origin}: job '{}'", job.name))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(JobFile { sched, train })
    }

    /// A generated workload as a job file whose jobs train the model they stand for on
    /// synthetic data.
    pub fn from_workload(workload: Workload) -> Self {
        let train = workload
            .models
            .iter()
            .map(|model| TrainSpec {
                model: model.to_string(),
                dataset: "synthetic".into(),
                optimizer: None,
                lr: None,
                precision: None,
                classes: None,
                init_weights: None,
                sync_bn: None,
                dropout: None,
                f32_conv_transforms: None,
            })
            .collect();
        JobFile {
            sched: workload.file,
            train,
        }
    }

    /// What job `k`'s session opens on `devices` with `settings`.
    pub fn session_config(
        &self,
        k: usize,
        origin: &str,
        devices: &Devices,
        settings: &RunSettings,
    ) -> SessionConfig {
        let job = &self.sched.jobs[k];
        SessionConfig {
            origin: origin.to_string(),
            name: job.name.clone(),
            batch_size: job.batch_size,
            iterations: job.iterations,
            spec: self.train[k].clone(),
            devices: devices.clone(),
            settings: settings.clone(),
        }
    }

    /// The file as TOML text, each `[[job]]`'s keys in the order the examples use: `name`,
    /// `model`, `dataset`, the scheduling keys, the other training keys, then `[job.sim]`.
    pub fn to_toml(&self) -> Result<String> {
        let bad = |e: &dyn std::fmt::Display| Error::invalid("job file", e.to_string());
        let mut file = toml::Table::try_from(&self.sched).map_err(|e| bad(&e))?;
        if let Some(toml::Value::Array(jobs)) = file.get_mut("job") {
            for (job, spec) in jobs.iter_mut().zip(&self.train) {
                let toml::Value::Table(sched) = job else {
                    continue;
                };
                let mut sched = std::mem::take(sched);
                let mut train = toml::Table::try_from(spec).map_err(|e| bad(&e))?;
                let mut out = toml::Table::new();
                for key in ["name", "model", "dataset"] {
                    if let Some(v) = sched.remove(key).or_else(|| train.remove(key)) {
                        out.insert(key.into(), v);
                    }
                }
                let sim = sched.remove("sim");
                out.extend(sched);
                out.extend(train);
                if let Some(sim) = sim {
                    out.insert("sim".into(), sim);
                }
                *job = toml::Value::Table(out);
            }
        }
        toml::to_string(&file).map_err(|e| bad(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::Precision;

    const TEXT: &str = r#"
[manager]
policy = "even"
[[job]]
name = "a"
model = "mlp"
dataset = "synthetic"
batch_size = 8
iterations = 2
initial_dr = [5, 5]
precision = "bf16"
[job.sim]
sample_ms = 1.0
[[job]]
name = "b"
model = "vit-tiny"
dataset = "synthetic:100"
batch_size = 4
iterations = 1
"#;

    fn err(text: &str) -> String {
        JobFile::parse(text, "jobs.toml").unwrap_err().to_string()
    }

    #[test]
    fn both_parts_are_read_and_written_back() {
        let f = JobFile::parse(TEXT, "jobs.toml").unwrap();
        assert_eq!(f.sched.jobs.len(), 2);
        assert_eq!(f.train[0].precision, Some(Precision::Bf16));
        assert_eq!(f.train[1].dataset, "synthetic:100");
        let text = f.to_toml().unwrap();
        assert_eq!(JobFile::parse(&text, "again").unwrap(), f);
        let a = text.find("name = \"a\"").unwrap();
        let keys: Vec<usize> = [
            "model =",
            "dataset =",
            "batch_size",
            "precision",
            "[job.sim]",
        ]
        .iter()
        .map(|k| text[a..].find(k).unwrap())
        .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{text}");
        let cfg = f.session_config(0, "jobs.toml", &Devices::Cpu(2), &RunSettings::in_memory(3));
        assert_eq!(
            (cfg.name.as_str(), cfg.batch_size, cfg.iterations),
            ("a", 8, 2)
        );
    }

    #[test]
    fn errors_name_the_file_the_job_and_the_key() {
        let e = err(&TEXT.replace("iterations = 1\n", "iterations = 1\nlr = -1.0\n"));
        assert!(e.starts_with("jobs.toml: job 'b': lr"), "{e}");
        let e = err(&TEXT.replace("precision = \"bf16\"", "precision = \"half\""));
        assert!(
            e.starts_with("jobs.toml: job 'a': precision") && e.contains("'half'"),
            "{e}"
        );
        let e = err(&TEXT.replace("model = \"vit-tiny\"\n", ""));
        assert!(e.contains("job 'b'") && e.contains("model"), "{e}");
        let e = err(&TEXT.replace("iterations = 1\n", "iterations = 1\nepochs = 3\n"));
        assert!(e.contains("job 'b'") && e.contains("epochs"), "{e}");
        let e = err(&TEXT.replace("[5, 5]", "[5, 4]"));
        assert!(e.contains("job 'a': initial_dr"), "{e}");
    }
}
