//! The scheduling part of the job file (TOML): the manager, the simulated machine, and each
//! job's name, size, arrival, initial split and simulated costs.
//!
//! ```toml
//! [manager]
//! policy = "thesis"        # static | even | packed | thesis
//! period_s = 5.0
//! sd_threshold = 1.1
//! util_threshold = 20.0
//! [simulation]             # read by the simulator only
//! gpus = 4
//! colocation_efficiency = 1.0
//! allreduce_gbps = 10.0
//! allreduce_latency_ms = 0.5
//! reconfigure_ms = 0.0
//! [[job]]
//! name = "resnet50"
//! batch_size = 128
//! iterations = 3000
//! arrival_s = 0.0
//! initial_dr = [5, 5, 0, 0]   # optional; default even
//! [job.sim]                # read by the simulator only
//! sample_ms = 0.9
//! iter_overhead_ms = 3.0
//! grad_mb = 98.0
//! ```
//!
//! A `[[job]]` also holds keys that only the trainer reads (`model`, `dataset`, ...): the layer
//! that reads whole job files names them to [`JobFile::parse_with`], which hands each job's
//! values for them back unread (`crate::multijob::jobfile` composes the two parts).
//!
//! Unknown keys are errors. Every error names the file, the section or job, and the key.
//! `initial_dr` entries and sum are checked on load; its length is checked against the GPU
//! count by whoever knows it ([`JobFile::check_gpus`]: the simulator with `[simulation]
//! gpus`, the trainer with the machine's).
//!
//! Every number is bounded ([`limits`]): far beyond any real machine or job, but tight enough
//! that a typo (`1e308`, a stray exponent) is an error rather than a simulation of centuries
//! at sub-microsecond steps, or a machine of 10^18 GPUs allocated up front.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::policy::{PolicyKind, ThesisParams};
use crate::base::DistributionRatio;
use crate::{Error, Result};

/// `[manager]`: the policy and its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    /// Default `thesis`.
    #[serde(default = "default_policy")]
    pub policy: PolicyKind,
    /// Seconds between evaluation rounds, and the window over which utilisation and the
    /// recent iteration time are measured. Default 5.
    #[serde(default = "default_period")]
    pub period_s: f64,
    /// Default 1.1.
    #[serde(default = "default_sd_threshold")]
    pub sd_threshold: f64,
    /// Percentage points. Default 20.
    #[serde(default = "default_util_threshold")]
    pub util_threshold: f64,
}

fn default_policy() -> PolicyKind {
    PolicyKind::Thesis
}
fn default_period() -> f64 {
    5.0
}
fn default_sd_threshold() -> f64 {
    ThesisParams::DEFAULT_SD_THRESHOLD
}
fn default_util_threshold() -> f64 {
    ThesisParams::DEFAULT_UTIL_THRESHOLD
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            policy: default_policy(),
            period_s: default_period(),
            sd_threshold: default_sd_threshold(),
            util_threshold: default_util_threshold(),
        }
    }
}

impl ManagerConfig {
    /// This configuration with the given values (command-line flags, say) replacing its own.
    pub fn overridden(
        &self,
        policy: Option<PolicyKind>,
        sd_threshold: Option<f64>,
        util_threshold: Option<f64>,
        period_s: Option<f64>,
    ) -> ManagerConfig {
        ManagerConfig {
            policy: policy.unwrap_or(self.policy),
            sd_threshold: sd_threshold.unwrap_or(self.sd_threshold),
            util_threshold: util_threshold.unwrap_or(self.util_threshold),
            period_s: period_s.unwrap_or(self.period_s),
        }
    }

    /// The thesis thresholds, checked.
    pub fn thesis_params(&self) -> Result<ThesisParams> {
        ThesisParams::new(self.sd_threshold, self.util_threshold)
    }
}

/// `[simulation]`: the simulated machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationConfig {
    /// Number of GPUs, at least 1.
    pub gpus: usize,
    /// Aggregate speed of a GPU running shards of two or more jobs at once, relative to one
    /// job alone (1.0: perfect time slicing; 0.9: 10% lost to switching). Default 1.
    #[serde(default = "default_one")]
    pub colocation_efficiency: f64,
    /// All-reduce bandwidth between GPUs, GB/s (10^9 bytes/s). Default 10.
    #[serde(default = "default_allreduce_gbps")]
    pub allreduce_gbps: f64,
    /// Fixed cost of one all-reduce, ms. Default 0.5.
    #[serde(default = "default_allreduce_latency")]
    pub allreduce_latency_ms: f64,
    /// Stall of a running job before its first iteration after a DR change, ms (moving
    /// replicas, rebuilding communicators). Default 0.
    #[serde(default)]
    pub reconfigure_ms: f64,
}

fn default_one() -> f64 {
    1.0
}
fn default_allreduce_gbps() -> f64 {
    10.0
}
fn default_allreduce_latency() -> f64 {
    0.5
}

impl SimulationConfig {
    /// A machine of `gpus` GPUs with the default parameters.
    pub fn with_gpus(gpus: usize) -> Self {
        SimulationConfig {
            gpus,
            colocation_efficiency: default_one(),
            allreduce_gbps: default_allreduce_gbps(),
            allreduce_latency_ms: default_allreduce_latency(),
            reconfigure_ms: 0.0,
        }
    }
}

/// `[job.sim]`: a job's simulated costs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSim {
    /// Compute per sample, ms, alone on one GPU.
    pub sample_ms: f64,
    /// Fixed cost per iteration on each GPU the job uses, ms.
    #[serde(default)]
    pub iter_overhead_ms: f64,
    /// Gradient size, MB (10^6 bytes), all-reduced every iteration on more than one GPU.
    #[serde(default)]
    pub grad_mb: f64,
}

/// One `[[job]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    pub batch_size: u64,
    pub iterations: u64,
    /// Seconds after the start at which the job arrives. Default 0.
    #[serde(default)]
    pub arrival_s: f64,
    /// Initial distribution ratio, one entry per GPU; `None` means even.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_dr: Option<Vec<i64>>,
    /// Simulated costs; ignored by the real trainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim: Option<JobSim>,
}

impl JobSpec {
    /// The initial DR checked against a machine of `gpus` GPUs.
    pub fn initial_dr(&self, gpus: usize, origin: &str) -> Result<Option<DistributionRatio>> {
        let Some(units) = &self.initial_dr else {
            return Ok(None);
        };
        let ctx = format!("{origin}: job '{}': initial_dr", self.name);
        if units.len() != gpus {
            return Err(Error::invalid(
                ctx,
                format!("has {} entries, expected one per GPU ({gpus})", units.len()),
            ));
        }
        DistributionRatio::from_signed(units)
            .map(Some)
            .map_err(|p| Error::invalid(ctx, p))
    }

    /// Exclusive iteration time in seconds from the `sim` table: `batch * sample_ms +
    /// iter_overhead_ms`.
    pub fn exclusive_iter_s(&self) -> Option<f64> {
        self.sim
            .as_ref()
            .map(|s| (self.batch_size as f64 * s.sample_ms + s.iter_overhead_ms) / 1000.0)
    }
}

/// A whole job file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    #[serde(default)]
    pub manager: ManagerConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulation: Option<SimulationConfig>,
    #[serde(rename = "job", default)]
    pub jobs: Vec<JobSpec>,
}

impl JobFile {
    /// Parses and checks job-file text that has scheduling keys only; `origin` (usually the
    /// path) starts every error.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        Self::parse_with(text, origin, &[]).map(|(file, _)| file)
    }

    /// Parses and checks job-file text whose `[[job]]`s may also hold `other_keys`, which
    /// belong to a layer above: each job's values for them come back unread, one table per
    /// job in file order.
    pub fn parse_with(
        text: &str,
        origin: &str,
        other_keys: &[&str],
    ) -> Result<(Self, Vec<toml::Table>)> {
        let table: toml::Table = toml::from_str(text).map_err(|e| Error::parse(origin, e))?;
        let mut file = JobFile {
            manager: ManagerConfig::default(),
            simulation: None,
            jobs: Vec::new(),
        };
        let mut others = Vec::new();
        for (key, value) in table {
            match key.as_str() {
                "manager" => {
                    file.manager = ManagerConfig::deserialize(value)
                        .map_err(|e| Error::parse(format!("{origin}: [manager]"), e))?;
                }
                "simulation" => {
                    file.simulation = Some(
                        SimulationConfig::deserialize(value)
                            .map_err(|e| Error::parse(format!("{origin}: [simulation]"), e))?,
                    );
                }
                "job" => {
                    let toml::Value::Array(items) = value else {
                        return Err(Error::invalid(
                            format!("{origin}: job"),
                            "expected an array of tables, written [[job]]",
                        ));
                    };
                    for (k, item) in items.into_iter().enumerate() {
                        let (job, other) = parse_job(item, k, origin, other_keys)?;
                        file.jobs.push(job);
                        others.push(other);
                    }
                }
                other => {
                    return Err(Error::invalid(
                        origin,
                        format!("unknown key `{other}`, expected `manager`, `simulation` or `job`"),
                    ));
                }
            }
        }
        file.validate(origin)?;
        Ok((file, others))
    }

    /// Checks every value that does not depend on the GPU count (see the module docs).
    /// [`parse`](Self::parse) calls it; call it again on a file built in code.
    pub fn validate(&self, origin: &str) -> Result<()> {
        use limits::*;
        let m = &self.manager;
        let mctx = |key: &str| format!("{origin}: [manager] {key}");
        check_period(m.period_s).map_err(|p| Error::invalid(mctx("period_s"), p))?;
        if !m.sd_threshold.is_finite() || m.sd_threshold < 0.0 {
            return Err(Error::invalid(
                mctx("sd_threshold"),
                format!("must be finite and >= 0, got {}", m.sd_threshold),
            ));
        }
        if !m.util_threshold.is_finite() || !(0.0..=100.0).contains(&m.util_threshold) {
            return Err(Error::invalid(
                mctx("util_threshold"),
                format!(
                    "must be percentage points in 0..=100, got {}",
                    m.util_threshold
                ),
            ));
        }
        if let Some(s) = &self.simulation {
            let sctx = |key: &str| format!("{origin}: [simulation] {key}");
            if !(1..=MAX_GPUS).contains(&s.gpus) {
                return Err(Error::invalid(
                    sctx("gpus"),
                    format!("must be 1..={MAX_GPUS}, got {}", s.gpus),
                ));
            }
            within(s.colocation_efficiency, COLOCATION_EFFICIENCY)
                .map_err(|p| Error::invalid(sctx("colocation_efficiency"), p))?;
            within(s.allreduce_gbps, ALLREDUCE_GBPS)
                .map_err(|p| Error::invalid(sctx("allreduce_gbps"), p))?;
            within(s.allreduce_latency_ms, STALL_MS)
                .map_err(|p| Error::invalid(sctx("allreduce_latency_ms"), p))?;
            within(s.reconfigure_ms, STALL_MS)
                .map_err(|p| Error::invalid(sctx("reconfigure_ms"), p))?;
        }
        let mut names = HashSet::new();
        let mut dirs = HashSet::new();
        for (k, job) in self.jobs.iter().enumerate() {
            let jctx = |key: &str| format!("{origin}: job '{}': {key}", job.name);
            check_name(&job.name)
                .map_err(|p| Error::invalid(format!("{origin}: job #{}: name", k + 1), p))?;
            if !names.insert(job.name.as_str()) {
                return Err(Error::invalid(
                    jctx("name"),
                    "another job has the same name",
                ));
            }
            let dir = file_name_of(&job.name);
            if !dirs.insert(dir.clone()) {
                return Err(Error::invalid(
                    jctx("name"),
                    format!(
                        "another job's name gives the same file name '{dir}' (each character \
                         but letters, digits, '-', '_' and '.' becomes '_')"
                    ),
                ));
            }
            if !(1..=MAX_BATCH_SIZE).contains(&job.batch_size) {
                return Err(Error::invalid(
                    jctx("batch_size"),
                    format!("must be 1..={MAX_BATCH_SIZE}, got {}", job.batch_size),
                ));
            }
            if job.iterations == 0 {
                return Err(Error::invalid(jctx("iterations"), "must be at least 1"));
            }
            within(job.arrival_s, ARRIVAL_S).map_err(|p| Error::invalid(jctx("arrival_s"), p))?;
            if let Some(units) = &job.initial_dr {
                DistributionRatio::from_signed(units)
                    .map_err(|p| Error::invalid(jctx("initial_dr"), p))?;
            }
            if let Some(sim) = &job.sim {
                within(sim.sample_ms, STALL_MS)
                    .map_err(|p| Error::invalid(jctx("sim.sample_ms"), p))?;
                within(sim.iter_overhead_ms, STALL_MS)
                    .map_err(|p| Error::invalid(jctx("sim.iter_overhead_ms"), p))?;
                within(sim.grad_mb, GRAD_MB).map_err(|p| Error::invalid(jctx("sim.grad_mb"), p))?;
                let exclusive = job.exclusive_iter_s().unwrap_or(0.0);
                if !(exclusive.is_finite() && exclusive > 0.0 && exclusive <= MAX_ITER_S) {
                    return Err(Error::invalid(
                        jctx("sim"),
                        format!(
                            "batch_size * sample_ms + iter_overhead_ms (the exclusive \
                             iteration time) must be > 0 and at most {MAX_ITER_S} s (a day), \
                             got {exclusive} s"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks every `initial_dr` has one entry per GPU of a `gpus`-GPU machine.
    pub fn check_gpus(&self, gpus: usize, origin: &str) -> Result<()> {
        for job in &self.jobs {
            job.initial_dr(gpus, origin)?;
        }
        Ok(())
    }
}

/// The longest job name, bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// A job name is shown in tables and logs, passed on command lines and used in file names:
/// not empty, not too long, and no control characters (a newline would split a log line, an
/// escape sequence would rewrite the terminal, a NUL cannot be an argument).
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "must be at most {MAX_NAME_BYTES} bytes, got {}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{name:?} holds the control character {c:?}; use letters, digits and punctuation"
        ));
    }
    Ok(())
}

/// A job's name as a file name, safe in any directory: letters, digits, `-`, `_` and `.`
/// kept, every other character replaced by `_`, and a leading `.` too (no hidden files, no
/// `..`). [`JobFile::validate`] refuses two jobs with the same file name.
pub fn file_name_of(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if c.is_ascii_alphanumeric() || "-_".contains(c) || (c == '.' && i > 0) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn parse_job(
    item: toml::Value,
    k: usize,
    origin: &str,
    other_keys: &[&str],
) -> Result<(JobSpec, toml::Table)> {
    let toml::Value::Table(mut table) = item else {
        return Err(Error::invalid(
            format!("{origin}: job #{}", k + 1),
            "expected a table",
        ));
    };
    let label = match table.get("name").and_then(|v| v.as_str()) {
        Some(name) => format!("{origin}: job '{name}'"),
        None => format!("{origin}: job #{}", k + 1),
    };
    let mut other = toml::Table::new();
    for key in other_keys {
        if let Some((key, value)) = table.remove_entry(*key) {
            other.insert(key, value);
        }
    }
    // The sim table is read on its own so that its errors say `sim`.
    let sim = match table.remove("sim") {
        None => None,
        Some(v) => {
            Some(JobSim::deserialize(v).map_err(|e| Error::parse(format!("{label}: sim"), e))?)
        }
    };
    let mut job =
        JobSpec::deserialize(toml::Value::Table(table)).map_err(|e| Error::parse(label, e))?;
    job.sim = sim;
    Ok((job, other))
}

/// What each number of a job file may hold. The bounds are far beyond any real machine or
/// job; they exist so that a typo is an error naming the key: times stay where `f64`
/// seconds keep sub-microsecond resolution, and every GPU and sample count is one that can
/// be allocated.
pub mod limits {
    /// `[manager] period_s`, seconds: a millisecond (the manager cannot act faster than its
    /// processes report steps) to a day.
    pub const PERIOD_S: (f64, f64) = (1e-3, 86_400.0);
    /// `[simulation] gpus`: as many as a device list may name.
    pub const MAX_GPUS: usize = crate::base::devices::MAX_DEVICES;
    /// `[simulation] colocation_efficiency`: below 1% a shared GPU does no work; above 10x
    /// is a typo.
    pub const COLOCATION_EFFICIENCY: (f64, f64) = (0.01, 10.0);
    /// `[simulation] allreduce_gbps`: 1 MB/s to 1 PB/s.
    pub const ALLREDUCE_GBPS: (f64, f64) = (1e-3, 1e6);
    /// `allreduce_latency_ms`, `reconfigure_ms`, `sample_ms`, `iter_overhead_ms`: zero to
    /// an hour.
    pub const STALL_MS: (f64, f64) = (0.0, 3.6e6);
    /// `[job.sim] grad_mb`: zero to 10 TB.
    pub const GRAD_MB: (f64, f64) = (0.0, 1e7);
    /// `arrival_s`: zero to 10^8 s (about three years), where an `f64` second still
    /// resolves 15 ns.
    pub const ARRIVAL_S: (f64, f64) = (0.0, 1e8);
    /// `batch_size`: 2^20 samples.
    pub const MAX_BATCH_SIZE: u64 = 1 << 20;
    /// The exclusive iteration time `batch_size * sample_ms + iter_overhead_ms`: a day.
    pub const MAX_ITER_S: f64 = 86_400.0;

    pub(super) fn within(v: f64, (lo, hi): (f64, f64)) -> Result<(), String> {
        if v.is_finite() && (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!("must be finite and in {lo}..={hi}, got {v}"))
        }
    }

    /// `period_s` is checked wherever it comes from (the file or `--period`).
    pub fn check_period(v: f64) -> Result<(), String> {
        within(v, PERIOD_S)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[manager]
policy = "thesis"
period_s = 5.0
sd_threshold = 1.1
util_threshold = 20.0
[simulation]
gpus = 4
colocation_efficiency = 1.0
[[job]]
name = "resnet50"
batch_size = 128
iterations = 3000
arrival_s = 0.0
initial_dr = [5, 5, 0, 0]
[job.sim]
sample_ms = 0.9
iter_overhead_ms = 3.0
grad_mb = 98.0
[[job]]
name = "alexnet"
batch_size = 64
iterations = 10
"#;

    fn err(text: &str) -> String {
        JobFile::parse(text, "jobs.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_the_issue_example() {
        let f = JobFile::parse(GOOD, "jobs.toml").unwrap();
        assert_eq!(f.manager.policy, PolicyKind::Thesis);
        assert_eq!(f.simulation.as_ref().unwrap().gpus, 4);
        assert_eq!(f.simulation.as_ref().unwrap().allreduce_gbps, 10.0);
        assert_eq!(f.jobs.len(), 2);
        assert_eq!(f.jobs[0].sim.as_ref().unwrap().grad_mb, 98.0);
        assert!(f.jobs[1].sim.is_none());
        assert_eq!(f.jobs[1].arrival_s, 0.0);
        let dr = f.jobs[0].initial_dr(4, "jobs.toml").unwrap().unwrap();
        assert_eq!(dr.units(), &[5, 5, 0, 0]);
        assert!(f.check_gpus(4, "x").is_ok());
        let e = f.check_gpus(3, "jobs.toml").unwrap_err().to_string();
        assert!(e.contains("job 'resnet50': initial_dr"), "{e}");
        // Round trip through the writer.
        let again = JobFile::parse(&toml::to_string(&f).unwrap(), "again").unwrap();
        assert_eq!(again, f);
    }

    /// Keys of a layer above come back per job, unread; anything else unknown is an error.
    #[test]
    fn other_layers_keys_come_back_unread() {
        let text = GOOD.replace(
            "iterations = 10",
            "iterations = 10\nmodel = \"mlp\"\nlr = -1.0",
        );
        let (f, others) = JobFile::parse_with(&text, "jobs.toml", &["model", "lr"]).unwrap();
        assert_eq!(f.jobs.len(), 2);
        assert!(others[0].is_empty());
        assert_eq!(others[1]["model"].as_str(), Some("mlp"));
        assert_eq!(others[1]["lr"].as_float(), Some(-1.0));
        let e = err(&text);
        assert!(e.contains("job 'alexnet'") && e.contains("model"), "{e}");
    }

    #[test]
    fn errors_name_job_and_key() {
        let e = err(&GOOD.replace("grad_mb = 98.0", "grad_mb = 98.0\ncolour = 1"));
        assert!(
            e.contains("job 'resnet50': sim") && e.contains("colour"),
            "{e}"
        );
        let e = err(&GOOD.replace("iterations = 3000", "iterations = 3000\nepochs = 1"));
        assert!(e.contains("job 'resnet50'") && e.contains("epochs"), "{e}");
        let e = err(&GOOD.replace("[5, 5, 0, 0]", "[5, 4, 0, 0]"));
        assert!(
            e.contains("job 'resnet50': initial_dr") && e.contains("sum"),
            "{e}"
        );
        let e = err(&GOOD.replace("[5, 5, 0, 0]", "[-5, 15, 0, 0]"));
        assert!(e.contains("job 'resnet50': initial_dr"), "{e}");
        let e = err(&GOOD.replace("sample_ms = 0.9", "sample_ms = -0.9"));
        assert!(e.contains("job 'resnet50': sim.sample_ms"), "{e}");
        let e = err(&GOOD.replace("arrival_s = 0.0", "arrival_s = -1.0"));
        assert!(e.contains("job 'resnet50': arrival_s"), "{e}");
        let e = err(&GOOD.replace("gpus = 4", "gpus = 0"));
        assert!(e.contains("[simulation] gpus"), "{e}");
        let e = err(&GOOD.replace("batch_size = 64", "batch_size = \"many\""));
        assert!(
            e.contains("job 'alexnet'") && e.contains("batch_size"),
            "{e}"
        );
        let e = err(&GOOD.replace("policy = \"thesis\"", "policy = \"fair\""));
        assert!(e.contains("[manager]") && e.contains("fair"), "{e}");
        let e = err(&GOOD.replace("period_s = 5.0", "period_s = 0.0"));
        assert!(e.contains("[manager] period_s"), "{e}");
        let e = err(&GOOD.replace("util_threshold = 20.0", "util_threshold = 200.0"));
        assert!(e.contains("[manager] util_threshold"), "{e}");
        let e = err(&GOOD.replace("colocation_efficiency = 1.0", "colocation = 1.0"));
        assert!(
            e.contains("[simulation]") && e.contains("colocation"),
            "{e}"
        );
        let e = err(&format!("{GOOD}\n[extra]\nx = 1\n"));
        assert!(e.contains("extra"), "{e}");
        let e = err(&GOOD.replace("name = \"alexnet\"", "name = \"resnet50\""));
        assert!(e.contains("job 'resnet50': name"), "{e}");
        let e = err(&GOOD.replace("name = \"alexnet\"\n", ""));
        assert!(e.contains("job #2") && e.contains("name"), "{e}");
        let e = err("[[job]\n");
        assert!(e.starts_with("jobs.toml:"), "{e}");
        let e = err(&GOOD.replace(
            "sample_ms = 0.9\niter_overhead_ms = 3.0",
            "sample_ms = 0.0\niter_overhead_ms = 0.0",
        ));
        assert!(e.contains("job 'resnet50': sim"), "{e}");
    }
}
