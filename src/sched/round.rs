//! One manager round, written once for the simulator ([`super::sim`]) and the live manager of a
//! real run (`crate::multijob`): the caller measures (each device's utilisation, each running
//! job's Slow-Down and DR), [`Manager::round`] records what it saw, asks the policy, and returns
//! the DR changes, which the caller applies (a new shard plan in the simulator, a command to
//! the job's process in a real run).

use std::fmt;

use super::cost::RoundModel;
use super::policy::{Action, JobObservation, Manager, PeriodInputs};
use crate::Result;
use crate::base::DistributionRatio;

/// What the manager saw over a run, one sample per round.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Job names, by job index.
    pub job_names: Vec<String>,
    /// Per job: `(time_s, slowdown)` at each round while it ran, then its final SD at its
    /// finish time.
    pub job_sd: Vec<Vec<(f64, f64)>>,
    /// Per device: `(time_s, utilisation %)` at each round.
    pub gpu_util: Vec<Vec<(f64, f64)>>,
    /// Every DR change, in order.
    pub changes: Vec<DrChange>,
    /// What one device is called in plots and messages: `GPU`, or `CPU shard` on a CPU
    /// rehearsal.
    pub unit: &'static str,
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new(Vec::new(), 0, "GPU")
    }
}

impl Trace {
    /// An empty trace of jobs `job_names` on `devices` devices called `unit`.
    pub fn new(job_names: Vec<String>, devices: usize, unit: &'static str) -> Self {
        Trace {
            job_sd: vec![Vec::new(); job_names.len()],
            job_names,
            gpu_util: vec![Vec::new(); devices],
            changes: Vec::new(),
            unit,
        }
    }

    /// A DR change in words: `job NAME: SD 1.234, DR [5,5] -> [0,10]: ...`.
    pub fn describe(&self, change: &DrChange) -> String {
        let name = self.job_names.get(change.job).map_or("?", String::as_str);
        format!(
            "job {name}: SD {:.3}, DR {} -> {}: {}",
            change.sd,
            change.from,
            change.to,
            change.action.describe(self.unit)
        )
    }
}

/// One DR change made by the manager.
#[derive(Clone, Debug, PartialEq)]
pub struct DrChange {
    pub time_s: f64,
    /// Job index.
    pub job: usize,
    /// The job's SD when the round ran.
    pub sd: f64,
    pub from: DistributionRatio,
    pub to: DistributionRatio,
    pub action: Action,
}

impl Action {
    /// Why a DR is what it is, in words, devices called `unit` (`GPU`, `CPU shard`).
    pub fn describe(&self, unit: &str) -> String {
        match *self {
            Action::Keep => "kept".into(),
            Action::Set => "set by the policy".into(),
            Action::Exclusive { gpu } => {
                format!("all on {unit} {gpu} (fewer jobs than devices: one each)")
            }
            Action::UtilRebalance { added_gpu } => format!(
                "spread over its devices and {unit} {added_gpu} by free capacity \
                 (utilisation gap above the threshold)"
            ),
            Action::SdShift { from, to, units } => format!(
                "{units} tenth{} moved from {unit} {from} to {unit} {to} (the most slowed-down \
                 job, towards the least slowed-down device)",
                if units == 1 { "" } else { "s" }
            ),
            Action::Rebalance => "lowers the largest predicted Slow-Down of the jobs it touches \
                                  (cost model)"
                .into(),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("GPU"))
    }
}

impl Manager {
    /// One round at `now_s` (on the caller's clock): `util` per device (percent over the last
    /// period), `running` each running job's index and observation, in job order, and
    /// `model`, the cost model of those jobs, which the caller builds when the policy predicts
    /// ([`Manager::uses_model`]). Records what it saw in `trace` when given, and returns the
    /// DR changes, in job order, for the caller to apply.
    pub fn round(
        &mut self,
        now_s: f64,
        util: Vec<f64>,
        running: Vec<(usize, JobObservation)>,
        model: Option<RoundModel>,
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<DrChange>> {
        if let Some(trace) = trace.as_deref_mut() {
            for (g, u) in util.iter().enumerate() {
                trace.gpu_util[g].push((now_s, *u));
            }
            for (k, obs) in &running {
                trace.job_sd[*k].push((now_s, obs.sd));
            }
        }
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let (jobs, observations): (Vec<usize>, Vec<JobObservation>) = running.into_iter().unzip();
        let mut inputs = PeriodInputs::new(util, observations)?;
        if let Some(model) = model {
            inputs = inputs.with_model(model)?;
        }
        self.set_time(now_s);
        let decisions = self.evaluate_jobs(&jobs, &inputs)?;
        let changes: Vec<DrChange> = decisions
            .into_iter()
            .zip(jobs)
            .zip(inputs.jobs())
            .filter(|((decision, _), obs)| decision.changes(&obs.dr))
            .map(|((decision, job), obs)| DrChange {
                time_s: now_s,
                job,
                sd: obs.sd,
                from: obs.dr.clone(),
                to: decision.dr,
                action: decision.action,
            })
            .collect();
        if let Some(trace) = trace {
            trace.changes.extend(changes.iter().cloned());
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{PolicyKind, ThesisParams};

    fn dr(u: &[u8]) -> DistributionRatio {
        DistributionRatio::new(u.to_vec()).unwrap()
    }

    #[test]
    fn a_round_records_and_returns_the_changes() {
        let mut m = Manager::new(2, PolicyKind::Even.build(ThesisParams::default())).unwrap();
        let mut trace = Trace::new(vec!["a".into(), "b".into(), "c".into()], 2, "CPU shard");
        let running = vec![
            (
                0,
                JobObservation {
                    sd: 1.5,
                    dr: dr(&[10, 0]),
                },
            ),
            (
                2,
                JobObservation {
                    sd: 1.0,
                    dr: dr(&[5, 5]),
                },
            ),
        ];
        let changes = m
            .round(3.0, vec![80.0, 10.0], running, None, Some(&mut trace))
            .unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].job, changes[0].time_s), (0, 3.0));
        assert_eq!(changes[0].to, dr(&[5, 5]));
        assert_eq!(trace.changes, changes);
        assert_eq!(trace.job_sd[2], [(3.0, 1.0)]);
        assert!(trace.job_sd[1].is_empty());
        assert_eq!(trace.gpu_util[1], [(3.0, 10.0)]);
        assert_eq!(
            trace.describe(&changes[0]),
            "job a: SD 1.500, DR [10,0] -> [5,5]: set by the policy"
        );
        // No running job: the utilisation is still recorded, nothing is decided.
        assert!(
            m.round(4.0, vec![0.0, 0.0], Vec::new(), None, Some(&mut trace))
                .unwrap()
                .is_empty()
        );
        assert_eq!(trace.gpu_util[0].len(), 2);
    }

    #[test]
    fn actions_in_words() {
        let shift = Action::SdShift {
            from: 1,
            to: 0,
            units: 2,
        };
        assert_eq!(
            shift.to_string(),
            "2 tenths moved from GPU 1 to GPU 0 (the most slowed-down job, towards the least \
             slowed-down device)"
        );
        assert!(
            Action::Exclusive { gpu: 1 }
                .describe("CPU shard")
                .starts_with("all on CPU shard 1")
        );
        assert!(!format!("{}", Action::UtilRebalance { added_gpu: 3 }).contains('{'));
    }
}
