//! The end-of-run report: per job completion, exclusive time and Slow-Down; per run the
//! maximum and mean Slow-Down, Jain's fairness index over `1/SD`, the makespan and the mean
//! GPU utilisation. Written as JSON and as a terminal table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One finished job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    pub name: String,
    /// Arrival to finish, seconds.
    pub completion_s: f64,
    /// `iterations * exclusive iteration time`, seconds.
    pub exclusive_s: f64,
    /// `completion_s / exclusive_s`.
    pub slowdown: f64,
}

/// A job that did not finish (real runs only: a worker that failed or crashed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailedJob {
    pub name: String,
    /// Steps completed when it failed.
    pub step: u64,
    pub error: String,
}

/// A run's report; the JSON has exactly these fields (`failed` only when a job failed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub policy: String,
    pub gpus: usize,
    pub jobs: Vec<JobReport>,
    pub max_slowdown: f64,
    pub mean_slowdown: f64,
    /// Jain's index over `1/slowdown`: 1 when every job is slowed down equally, `1/n` at worst.
    pub jain_index: f64,
    /// First arrival to last finish, seconds.
    pub makespan_s: f64,
    /// Busy fraction of each GPU over the makespan, averaged over GPUs, percent.
    pub mean_gpu_util: f64,
    /// Jobs that failed; the figures above are over the finished jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedJob>,
    /// The lowest maximum Slow-Down any schedule could reach on this workload under the
    /// simulator's cost model ([`super::bound`]), over the finished jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slowdown_bound: Option<f64>,
    /// `max_slowdown / max_slowdown_bound`: 1 is the best possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_ratio: Option<f64>,
}

impl Report {
    /// Builds the run figures from the per-job ones. `busy_s` is each GPU's busy time.
    pub fn new(
        policy: &str,
        gpus: usize,
        jobs: Vec<JobReport>,
        makespan_s: f64,
        busy_s: &[f64],
    ) -> Self {
        let sds: Vec<f64> = jobs.iter().map(|j| j.slowdown).collect();
        let max_slowdown = sds.iter().copied().fold(0.0, f64::max);
        let mean_slowdown = if sds.is_empty() {
            0.0
        } else {
            sds.iter().sum::<f64>() / sds.len() as f64
        };
        let inv: Vec<f64> = sds
            .iter()
            .map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 })
            .collect();
        let mean_gpu_util = if makespan_s > 0.0 && !busy_s.is_empty() {
            busy_s.iter().map(|b| b / makespan_s).sum::<f64>() / busy_s.len() as f64 * 100.0
        } else {
            0.0
        };
        Report {
            policy: policy.to_string(),
            gpus,
            jobs,
            max_slowdown,
            mean_slowdown,
            jain_index: jain_index(&inv),
            makespan_s,
            mean_gpu_util,
            failed: Vec::new(),
            max_slowdown_bound: None,
            bound_ratio: None,
        }
    }

    /// The report with the workload's [`max_slowdown_bound`](Self::max_slowdown_bound).
    pub fn with_bound(mut self, bound: f64) -> Self {
        self.max_slowdown_bound = Some(bound);
        self.bound_ratio = (bound > 0.0).then(|| self.max_slowdown / bound);
        self
    }

    /// The report with `failed` jobs listed.
    pub fn with_failed(mut self, failed: Vec<FailedJob>) -> Self {
        self.failed = failed;
        self
    }

    /// The JSON text of the report.
    pub fn to_json(&self) -> String {
        // Serialising plain numbers and strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A readable table: one row per job, then the run figures.
    pub fn table(&self) -> String {
        let width = self
            .jobs
            .iter()
            .map(|j| j.name.len())
            .max()
            .unwrap_or(0)
            .max(3);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "policy {} on {} GPU(s), {} job(s)",
            self.policy,
            self.gpus,
            self.jobs.len()
        );
        let _ = writeln!(
            s,
            "{:<width$}  {:>12}  {:>12}  {:>9}",
            "job", "completion_s", "exclusive_s", "slowdown"
        );
        for j in &self.jobs {
            let _ = writeln!(
                s,
                "{:<width$}  {:>12.1}  {:>12.1}  {:>9.3}",
                j.name, j.completion_s, j.exclusive_s, j.slowdown
            );
        }
        for f in &self.failed {
            let _ = writeln!(
                s,
                "{:<width$}  FAILED at step {}: {}",
                f.name, f.step, f.error
            );
        }
        let _ = writeln!(s, "max slowdown   {:.3}", self.max_slowdown);
        if let Some(bound) = self.max_slowdown_bound {
            let ratio = self.bound_ratio.unwrap_or(f64::NAN);
            let _ = writeln!(
                s,
                "lower bound    {bound:.3} (max slowdown / bound {ratio:.3})"
            );
        }
        let _ = writeln!(s, "mean slowdown  {:.3}", self.mean_slowdown);
        let _ = writeln!(s, "Jain (1/SD)    {:.3}", self.jain_index);
        let _ = writeln!(s, "makespan       {:.1} s", self.makespan_s);
        let _ = write!(s, "mean GPU util  {:.1} %", self.mean_gpu_util);
        s
    }
}

/// Jain's fairness index `(sum x)^2 / (n * sum x^2)`; 1 for an empty or all-zero input.
pub fn jain_index(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let sq: f64 = x.iter().map(|v| v * v).sum();
    if x.is_empty() || sq == 0.0 {
        1.0
    } else {
        sum * sum / (x.len() as f64 * sq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain() {
        assert!((jain_index(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((jain_index(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert!((jain_index(&[1.0, 0.5]) - 2.25 / 2.5).abs() < 1e-12);
    }

    #[test]
    fn report_fields() {
        let jobs = vec![
            JobReport {
                name: "a".into(),
                completion_s: 20.0,
                exclusive_s: 10.0,
                slowdown: 2.0,
            },
            JobReport {
                name: "b".into(),
                completion_s: 10.0,
                exclusive_s: 10.0,
                slowdown: 1.0,
            },
        ];
        let r = Report::new("thesis", 2, jobs, 20.0, &[20.0, 10.0]);
        assert_eq!(r.max_slowdown, 2.0);
        assert_eq!(r.mean_slowdown, 1.5);
        assert!((r.mean_gpu_util - 75.0).abs() < 1e-12);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "gpus",
                "jain_index",
                "jobs",
                "makespan_s",
                "max_slowdown",
                "mean_gpu_util",
                "mean_slowdown",
                "policy"
            ]
        );
        let mut jk: Vec<_> = v["jobs"][0].as_object().unwrap().keys().cloned().collect();
        jk.sort();
        assert_eq!(jk, ["completion_s", "exclusive_s", "name", "slowdown"]);
        assert!(r.table().contains("max slowdown   2.000"));
    }
}
