//! The manager's decision log: every admission and evaluation round, with the measured inputs
//! the policy saw and the distribution ratios it answered. The simulator and the real trainer
//! both record through [`Manager`]; [`replay`] feeds a log's inputs to a fresh manager of the
//! same policy and checks it decides the same, which is how the tests show that the live
//! manager and the simulator run one policy code path.

use serde::{Deserialize, Serialize};

use super::cost::RoundModel;
use super::dr::DistributionRatio;
use super::policy::{Admission, JobObservation, Manager, PeriodInputs, PolicyKind, ThesisParams};
use crate::{Error, Result};

/// One running job as a round saw it, and the DR decided for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundJob {
    /// The job's index in the job file.
    pub job: usize,
    pub sd: f64,
    pub dr: DistributionRatio,
    pub decided: DistributionRatio,
}

/// One call into the manager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Admit {
        time_s: f64,
        job: usize,
        initial_dr: Option<DistributionRatio>,
        dr: DistributionRatio,
    },
    Round {
        time_s: f64,
        /// Per GPU, percent over the last period.
        util: Vec<f64>,
        jobs: Vec<RoundJob>,
        /// The cost model the policy saw, for the policies that use one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<RoundModel>,
    },
}

/// A run's decision log (JSON with `--decisions FILE`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionLog {
    pub policy: PolicyKind,
    pub params: ThesisParams,
    pub gpus: usize,
    pub entries: Vec<Entry>,
}

impl DecisionLog {
    pub fn to_json(&self) -> String {
        // Plain numbers and strings: serialising cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::invalid(origin, e.to_string()))
    }
}

/// Replays `log` through a fresh manager of its policy. `Ok(None)` when every decision is
/// reproduced; `Ok(Some(what))` describes the first one that is not.
pub fn replay(log: &DecisionLog) -> Result<Option<String>> {
    let mut manager = Manager::new(log.gpus, log.policy.build(log.params))?;
    for (n, entry) in log.entries.iter().enumerate() {
        match entry {
            Entry::Admit {
                job,
                initial_dr,
                dr,
                ..
            } => {
                let got = manager.admit(&Admission {
                    job_index: *job,
                    initial_dr: initial_dr.clone(),
                })?;
                if got != *dr {
                    return Ok(Some(format!(
                        "entry {n}: job {job} admitted with {got}, the log says {dr}"
                    )));
                }
            }
            Entry::Round {
                util, jobs, model, ..
            } => {
                let inputs = PeriodInputs::new(
                    util.clone(),
                    jobs.iter()
                        .map(|j| JobObservation {
                            sd: j.sd,
                            dr: j.dr.clone(),
                        })
                        .collect(),
                )?;
                let inputs = match model {
                    Some(model) => inputs.with_model(model.clone())?,
                    None => inputs,
                };
                let decisions = manager.evaluate(&inputs)?;
                for (d, j) in decisions.iter().zip(jobs) {
                    if d.dr != j.decided {
                        return Ok(Some(format!(
                            "entry {n}: job {} decided {}, the log says {}",
                            j.job, d.dr, j.decided
                        )));
                    }
                }
            }
        }
    }
    Ok(None)
}
