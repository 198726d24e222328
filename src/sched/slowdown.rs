//! The Slow-Down estimator (spec: `dr-scheduling.md`, "Terms").
//!
//! ```text
//! SD_i = (elapsed_i + remaining_iters_i * iter_time_recent_i) / (total_iters_i * iter_time_exclusive_i)
//! ```
//!
//! [`predicted_slowdown`] is the formula itself. [`JobProgress`] keeps what it needs for one
//! job from iteration timestamps only (so the simulator and the real trainer feed it the
//! same way): arrival, iterations done, and the iterations that ended in the last
//! `window_s` seconds, whose mean duration is `iter_time_recent`.
//!
//! When no iteration ended in the window (a job that just arrived, or iterations longer
//! than the period), `iter_time_recent` falls back to the last completed iteration's
//! duration (the exclusive iteration time before the first one), raised to the time the
//! iteration in progress has already taken: it will take at least that long. A job that
//! just arrived therefore has SD 1.

use std::collections::VecDeque;

use crate::{Error, Result};

/// Inputs of the Slow-Down formula for one job; times in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowDownInputs {
    /// Time since the job arrived.
    pub elapsed_s: f64,
    /// Iterations still to run.
    pub remaining_iters: u64,
    /// Mean iteration time over the last period.
    pub recent_iter_s: f64,
    /// Iterations the job runs in all.
    pub total_iters: u64,
    /// Iteration time alone on one GPU with the whole mini-batch.
    pub exclusive_iter_s: f64,
}

/// `(elapsed + remaining * recent) / (total * exclusive)`. Errors on negative or non-finite
/// times, on a zero exclusive time or iteration count, and on `remaining > total`.
pub fn predicted_slowdown(x: &SlowDownInputs) -> Result<f64> {
    let ctx = "slow-down";
    for (name, v) in [
        ("elapsed_s", x.elapsed_s),
        ("recent_iter_s", x.recent_iter_s),
        ("exclusive_iter_s", x.exclusive_iter_s),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err(Error::invalid(
                ctx,
                format!("{name} must be finite and >= 0, got {v}"),
            ));
        }
    }
    if x.exclusive_iter_s <= 0.0 || x.total_iters == 0 {
        return Err(Error::invalid(
            ctx,
            "the exclusive time (total_iters * exclusive_iter_s) must be > 0",
        ));
    }
    if x.remaining_iters > x.total_iters {
        return Err(Error::invalid(
            ctx,
            format!(
                "remaining_iters {} exceeds total_iters {}",
                x.remaining_iters, x.total_iters
            ),
        ));
    }
    Ok((x.elapsed_s + x.remaining_iters as f64 * x.recent_iter_s)
        / (x.total_iters as f64 * x.exclusive_iter_s))
}

/// A finished job's Slow-Down: its completion time (arrival to finish) over its exclusive
/// time (`total_iters * iter_time_exclusive`).
pub fn actual_slowdown(completion_s: f64, exclusive_s: f64) -> Result<f64> {
    if !completion_s.is_finite() || completion_s < 0.0 {
        return Err(Error::invalid(
            "slow-down",
            format!("completion time must be finite and >= 0, got {completion_s}"),
        ));
    }
    if !exclusive_s.is_finite() || exclusive_s <= 0.0 {
        return Err(Error::invalid(
            "slow-down",
            format!("exclusive time must be finite and > 0, got {exclusive_s}"),
        ));
    }
    Ok(completion_s / exclusive_s)
}

/// One job's progress as seen from its iteration timestamps; gives its current Slow-Down.
#[derive(Clone, Debug)]
pub struct JobProgress {
    arrival_s: f64,
    total_iters: u64,
    done_iters: u64,
    exclusive_iter_s: f64,
    window_s: f64,
    /// `(end, duration)` of recent iterations, oldest first.
    recent: VecDeque<(f64, f64)>,
    recent_sum: f64,
    last_duration: Option<f64>,
    current_start: Option<f64>,
}

impl JobProgress {
    /// A job that arrived at `arrival_s`, runs `total_iters` iterations of `exclusive_iter_s`
    /// each when alone, measured over windows of `window_s` (the manager's period).
    pub fn new(
        arrival_s: f64,
        total_iters: u64,
        exclusive_iter_s: f64,
        window_s: f64,
    ) -> Result<Self> {
        let ctx = "job progress";
        if !arrival_s.is_finite() || arrival_s < 0.0 {
            return Err(Error::invalid(
                ctx,
                format!("arrival must be finite and >= 0, got {arrival_s}"),
            ));
        }
        if total_iters == 0 {
            return Err(Error::invalid(ctx, "a job needs at least one iteration"));
        }
        if !exclusive_iter_s.is_finite() || exclusive_iter_s <= 0.0 {
            return Err(Error::invalid(
                ctx,
                format!("exclusive iteration time must be finite and > 0, got {exclusive_iter_s}"),
            ));
        }
        if !window_s.is_finite() || window_s <= 0.0 {
            return Err(Error::invalid(
                ctx,
                format!("window must be finite and > 0, got {window_s}"),
            ));
        }
        Ok(JobProgress {
            arrival_s,
            total_iters,
            done_iters: 0,
            exclusive_iter_s,
            window_s,
            recent: VecDeque::new(),
            recent_sum: 0.0,
            last_duration: None,
            current_start: None,
        })
    }

    /// The same job resumed with `done` iterations already completed.
    pub fn with_done_iters(mut self, done: u64) -> Self {
        self.done_iters = done.min(self.total_iters);
        self
    }

    /// An iteration began at `now_s`.
    pub fn iteration_started(&mut self, now_s: f64) {
        self.current_start = Some(now_s);
    }

    /// The iteration in progress ended at `now_s` (its duration is measured from
    /// [`iteration_started`](Self::iteration_started), or from the arrival for the first).
    pub fn iteration_finished(&mut self, now_s: f64) {
        let start = self.current_start.take().unwrap_or(self.arrival_s);
        let duration = (now_s - start).max(0.0);
        self.done_iters = (self.done_iters + 1).min(self.total_iters);
        self.last_duration = Some(duration);
        self.recent.push_back((now_s, duration));
        self.recent_sum += duration;
        self.prune(now_s);
    }

    fn prune(&mut self, now_s: f64) {
        let horizon = now_s - self.window_s;
        while let Some(&(end, d)) = self.recent.front() {
            if end > horizon {
                break;
            }
            self.recent.pop_front();
            self.recent_sum -= d;
        }
        if self.recent.is_empty() {
            self.recent_sum = 0.0;
        }
    }

    /// Iterations completed.
    pub fn done_iters(&self) -> u64 {
        self.done_iters
    }

    /// Iterations the job runs in all.
    pub fn total_iters(&self) -> u64 {
        self.total_iters
    }

    /// Iteration time alone on one GPU with the whole batch.
    pub fn exclusive_iter_s(&self) -> f64 {
        self.exclusive_iter_s
    }

    /// Whether every iteration has completed.
    pub fn is_finished(&self) -> bool {
        self.done_iters >= self.total_iters
    }

    /// When the job arrived.
    pub fn arrival_s(&self) -> f64 {
        self.arrival_s
    }

    /// The job's exclusive time: `total_iters * exclusive_iter_s`.
    pub fn exclusive_s(&self) -> f64 {
        self.total_iters as f64 * self.exclusive_iter_s
    }

    /// `iter_time_recent` at `now_s`: the mean over the iterations that ended in the last
    /// window, or the fallback described in the module docs.
    pub fn recent_iter_s(&mut self, now_s: f64) -> f64 {
        self.prune(now_s);
        if !self.recent.is_empty() {
            return (self.recent_sum / self.recent.len() as f64).max(0.0);
        }
        let prior = self.last_duration.unwrap_or(self.exclusive_iter_s);
        match self.current_start {
            Some(start) => prior.max(now_s - start),
            None => prior,
        }
    }

    /// The predicted Slow-Down at `now_s`.
    pub fn slowdown(&mut self, now_s: f64) -> f64 {
        let recent = self.recent_iter_s(now_s);
        let inputs = SlowDownInputs {
            elapsed_s: (now_s - self.arrival_s).max(0.0),
            remaining_iters: self.total_iters - self.done_iters,
            recent_iter_s: recent,
            total_iters: self.total_iters,
            exclusive_iter_s: self.exclusive_iter_s,
        };
        // The constructor checked every input the formula rejects.
        predicted_slowdown(&inputs).unwrap_or(f64::INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula() {
        let x = SlowDownInputs {
            elapsed_s: 100.0,
            remaining_iters: 500,
            recent_iter_s: 0.4,
            total_iters: 1000,
            exclusive_iter_s: 0.2,
        };
        // (100 + 500 * 0.4) / (1000 * 0.2) = 300 / 200
        assert!((predicted_slowdown(&x).unwrap() - 1.5).abs() < 1e-12);
        let bad = SlowDownInputs {
            exclusive_iter_s: 0.0,
            ..x
        };
        assert!(predicted_slowdown(&bad).is_err());
        let bad = SlowDownInputs {
            remaining_iters: 1001,
            ..x
        };
        assert!(predicted_slowdown(&bad).is_err());
        let bad = SlowDownInputs {
            elapsed_s: f64::NAN,
            ..x
        };
        assert!(predicted_slowdown(&bad).is_err());
        assert_eq!(actual_slowdown(30.0, 10.0).unwrap(), 3.0);
        assert!(actual_slowdown(30.0, 0.0).is_err());
    }

    #[test]
    fn progress_tracks_recent_iterations() {
        let mut p = JobProgress::new(10.0, 100, 0.5, 5.0).unwrap();
        // Just arrived: SD 1.
        assert!((p.slowdown(10.0) - 1.0).abs() < 1e-12);
        p.iteration_started(10.0);
        // Three seconds into the first iteration: it takes at least 3 s.
        assert!((p.recent_iter_s(13.0) - 3.0).abs() < 1e-12);
        p.iteration_finished(14.0);
        for k in 0..10 {
            let s = 14.0 + f64::from(k);
            p.iteration_started(s);
            p.iteration_finished(s + 1.0);
        }
        assert_eq!(p.done_iters(), 11);
        // Window (19, 24]: five iterations of 1 s each.
        assert!((p.recent_iter_s(24.0) - 1.0).abs() < 1e-12);
        let sd = p.slowdown(24.0);
        assert!((sd - (14.0 + 89.0) / 50.0).abs() < 1e-12, "{sd}");
        // Long after, with no iteration in the window, the last duration is the estimate.
        assert!((p.recent_iter_s(100.0) - 1.0).abs() < 1e-12);
        assert!(JobProgress::new(0.0, 0, 1.0, 1.0).is_err());
        assert!(JobProgress::new(0.0, 1, 0.0, 1.0).is_err());
    }
}
