//! The tracker's progress bars and notices.

use indicatif::{ProgressBar, ProgressStyle};

use attnrt::tracker::cli::Event as TrackEvent;

/// The tracker's progress: one bar per sequence with the running frames/s (none with
/// `--json`, and indicatif draws none when stderr is not a terminal), notices on stderr.
pub struct TrackView {
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl TrackView {
    pub fn new(quiet: bool) -> TrackView {
        TrackView { quiet, bar: None }
    }

    pub fn show(&mut self, event: TrackEvent) {
        match event {
            TrackEvent::Notice(n) => eprintln!("attnrt-infer: {n}"),
            TrackEvent::Sequence { name, frames } if !self.quiet => {
                let bar = ProgressBar::new(frames as u64).with_prefix(name.to_string());
                bar.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} frames, {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                self.bar = Some(bar);
            }
            TrackEvent::Frame { done, fps } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done as u64);
                    bar.set_message(format!("{fps:.2} frames/s"));
                }
            }
            TrackEvent::SequenceDone => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
            }
            TrackEvent::Sequence { .. } => {}
        }
    }
}
