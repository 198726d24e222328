//! The live view of a multi-job run: on a terminal, one progress bar per job (progress, SD,
//! DR, samples/s) and one line per device (utilisation, memory), redrawn in place; elsewhere
//! (a log file, a test), the same table printed as plain lines every `plain_every_s`.

use std::fmt::Write as _;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::monitor::DeviceStatus;
use crate::sched::DistributionRatio;

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
    /// `gpu` or `cpu`.
    pub device_kind: &'static str,
}

impl JobRow {
    fn text(&self) -> String {
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

fn device_text(kind: &str, g: usize, d: &DeviceStatus) -> String {
    let mut s = format!("{kind} {g}  util {:>3.0}%", d.util);
    if let Some((used, total)) = d.memory_gib {
        let _ = write!(s, "  mem {used:.1}/{total:.1} GiB");
    }
    s
}

/// The view: indicatif bars on a terminal, plain lines otherwise.
pub struct LiveView {
    multi: MultiProgress,
    jobs: Vec<ProgressBar>,
    devices: Vec<ProgressBar>,
    plain_every_s: f64,
    last_plain_s: Option<f64>,
}

impl LiveView {
    /// A view on standard error; without a terminal, plain tables every `plain_every_s`.
    pub fn new(plain_every_s: f64) -> Self {
        LiveView {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            jobs: Vec::new(),
            devices: Vec::new(),
            plain_every_s,
            last_plain_s: None,
        }
    }

    fn ensure_bars(&mut self, s: &Snapshot) {
        if self.jobs.len() == s.jobs.len() && self.devices.len() == s.devices.len() {
            return;
        }
        let width = s.jobs.iter().map(|j| j.name.len()).max().unwrap_or(4);
        let bar_style = ProgressStyle::with_template(&format!(
            "{{prefix:<{width}}} [{{bar:24}}] {{pos:>7}}/{{len:<7}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let line_style =
            ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
        for row in &s.jobs[self.jobs.len()..] {
            let bar = self.multi.add(ProgressBar::new(row.iterations));
            bar.set_style(bar_style.clone());
            bar.set_prefix(row.name.clone());
            self.jobs.push(bar);
        }
        for _ in self.devices.len()..s.devices.len() {
            let line = self.multi.add(ProgressBar::new(1));
            line.set_style(line_style.clone());
            self.devices.push(line);
        }
    }

    /// Shows `s`: redraws the bars, or prints a plain table when one is due.
    pub fn show(&mut self, s: &Snapshot) {
        if self.multi.is_hidden() {
            let due = self
                .last_plain_s
                .is_none_or(|t| s.time_s - t >= self.plain_every_s);
            if due {
                self.last_plain_s = Some(s.time_s);
                eprint!("{}", plain_table(s));
            }
            return;
        }
        self.ensure_bars(s);
        for (bar, row) in self.jobs.iter().zip(&s.jobs) {
            bar.set_position(row.step);
            bar.set_message(row.text());
        }
        for (g, (line, d)) in self.devices.iter().zip(&s.devices).enumerate() {
            line.set_message(device_text(s.device_kind, g, d));
        }
    }

    /// A line above the bars (DR changes, failures).
    pub fn note(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// Shows `last` and leaves it on screen (each job's final state; the report's table
    /// follows on standard output).
    pub fn finish(&mut self, last: &Snapshot) {
        if self.multi.is_hidden() {
            eprint!("{}", plain_table(last));
            return;
        }
        self.show(last);
        for bar in self.jobs.iter().chain(&self.devices) {
            bar.finish();
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
        let _ = writeln!(
            out,
            "[{:>8.1} s] {}",
            s.time_s,
            device_text(s.device_kind, g, d)
        );
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
            device_kind: "gpu",
        };
        let t = plain_table(&s);
        assert!(
            t.contains("job vit  40/100  running    SD 1.250  DR [3,7]  812 samples/s"),
            "{t}"
        );
        assert!(t.contains("gpu 0  util  87%  mem 12.0/79.6 GiB"), "{t}");
    }
}
