//! What the manager of a multi-job run reports while it runs, for a live view to show: a
//! [`Snapshot`] of every job and device, and [`RunEvent`]s (a DR change, a failure, a resume),
//! each written in words by its `Display`. The library prints nothing; `attnrt-train` draws
//! them (progress bars on a terminal, [`plain_table`] lines elsewhere).

use std::fmt::{self, Write as _};

use super::monitor::DeviceStatus;
use crate::base::DistributionRatio;

/// One job's row.
#[derive(Clone, Debug)]
pub struct JobRow {
    pub name: String,
    /// `starting`, `calibrating`, `waiting`, `running`, `finished`, `failed`, `stopped`.
    pub state: &'static str,
    pub step: u64,
    pub iterations: u64,
    pub sd: Option<f64>,
    pub dr: Option<DistributionRatio>,
    pub samples_per_s: f64,
}

/// Everything the view shows at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The run clock, seconds.
    pub time_s: f64,
    pub jobs: Vec<JobRow>,
    pub devices: Vec<DeviceStatus>,
    /// What one device is called: `GPU`, or `CPU shard` on a CPU rehearsal.
    pub unit: &'static str,
}

impl JobRow {
    /// The row's figures after its progress: state, SD, DR, samples/s.
    pub fn text(&self) -> String {
        let mut s = format!("{:<9}", self.state);
        if let Some(sd) = self.sd {
            let _ = write!(s, "  SD {sd:.3}");
        }
        if let Some(dr) = &self.dr {
            let _ = write!(s, "  DR {dr}");
        }
        if self.samples_per_s > 0.0 {
            let _ = write!(s, "  {:.0} samples/s", self.samples_per_s);
        }
        s
    }
}

/// One device's line: `GPU 0  util  87%  mem 12.0/79.6 GiB`.
pub fn device_text(unit: &str, g: usize, d: &DeviceStatus) -> String {
    let mut s = format!("{unit} {g}  util {:>3.0}%", d.util);
    if let Some((used, total)) = d.memory_gib {
        let _ = write!(s, "  mem {used:.1}/{total:.1} GiB");
    }
    s
}

/// Something the manager reports while a run goes on.
#[derive(Clone, Debug)]
pub enum RunEvent {
    /// A line about the run itself (a fallback, stopping, a state file that could not be
    /// written).
    Notice(String),
    /// Where every job and device stands now (sent a few times a second).
    Status(Snapshot),
    /// Where every job and device stood at the end (sent once, last).
    Finished(Snapshot),
    /// The manager changed a job's DR: `words` is the change in words
    /// (`crate::sched::Trace::describe`).
    DrChanged { time_s: f64, words: String },
    /// A job measured alone takes `full_s` per iteration.
    Calibrated { job: String, full_s: f64 },
    /// A job continues from its checkpoint of `step`.
    Resumed { job: String, step: u64 },
    /// A line from a job about how it runs (e.g. a fallback).
    JobNotice { job: String, notice: String },
    /// A job cannot go on; the others continue.
    JobFailed { job: String, error: String },
}

impl fmt::Display for RunEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunEvent::Notice(line) => f.write_str(line),
            RunEvent::Status(s) | RunEvent::Finished(s) => f.write_str(&plain_table(s)),
            RunEvent::DrChanged { time_s, words } => write!(f, "[{time_s:>8.1} s] {words}"),
            RunEvent::Calibrated { job, full_s } => {
                write!(f, "job {job}: {:.2} ms per iteration alone", full_s * 1e3)
            }
            RunEvent::Resumed { job, step } => write!(f, "job {job}: resumed from step {step}"),
            RunEvent::JobNotice { job, notice } => write!(f, "job {job}: {notice}"),
            RunEvent::JobFailed { job, error } => write!(f, "job {job} failed: {error}"),
        }
    }
}

/// The snapshot as plain lines: `[t s] job NAME STATE STEP/ITERS ...` and one per device.
pub fn plain_table(s: &Snapshot) -> String {
    let width = s.jobs.iter().map(|j| j.name.len()).max().unwrap_or(4);
    let mut out = String::new();
    for row in &s.jobs {
        let _ = writeln!(
            out,
            "[{:>8.1} s] job {:<width$}  {}/{}  {}",
            s.time_s,
            row.name,
            row.step,
            row.iterations,
            row.text()
        );
    }
    for (g, d) in s.devices.iter().enumerate() {
        let _ = writeln!(out, "[{:>8.1} s] {}", s.time_s, device_text(s.unit, g, d));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_rows_name_every_figure() {
        let s = Snapshot {
            time_s: 12.0,
            jobs: vec![JobRow {
                name: "vit".into(),
                state: "running",
                step: 40,
                iterations: 100,
                sd: Some(1.25),
                dr: Some(DistributionRatio::new(vec![3, 7]).unwrap()),
                samples_per_s: 812.4,
            }],
            devices: vec![DeviceStatus {
                util: 87.0,
                memory_gib: Some((12.0, 79.6)),
            }],
            unit: "GPU",
        };
        let t = plain_table(&s);
        assert!(
            t.contains("job vit  40/100  running    SD 1.250  DR [3,7]  812 samples/s"),
            "{t}"
        );
        assert!(t.contains("GPU 0  util  87%  mem 12.0/79.6 GiB"), "{t}");
        let cpu = plain_table(&Snapshot {
            unit: "CPU shard",
            ..s
        });
        assert!(cpu.contains("CPU shard 0  util  87%"), "{cpu}");
    }
}
