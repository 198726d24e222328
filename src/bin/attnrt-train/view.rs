//! The live view of a multi-job run: on a terminal, one progress bar per job (progress, SD,
//! DR, samples/s) and one line per device (utilisation, memory), redrawn in place; elsewhere
//! (a log file, a test), the same table printed as plain lines every `plain_every_s`.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use attnrt::multijob::status::{Snapshot, device_text, plain_table};

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
            line.set_message(device_text(s.unit, g, d));
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
