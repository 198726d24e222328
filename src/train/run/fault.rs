//! Faults injected on purpose, a testing aid: the environment variable `ATTNRT_FAULT` names
//! faults that a job then meets, so that tests can check what each one does to a run (the
//! checkpoint tests, the multi-job soak test) without a full disk, a broken GPU or a lucky
//! kill. It is read here and nowhere else, once per job ([`Faults::from_env`], by
//! `Session::open`); unset, nothing is injected.
//!
//! `ATTNRT_FAULT=FAULT[,FAULT...]`, each `[JOB=]KIND@STEP`, for job `JOB` only or for every
//! job:
//! - `oom@K`: step K fails as a GPU out of memory would (the run ends with that error);
//! - `nan@K`: step K's loss is NaN;
//! - `hang@K`: step K never finishes, and stop requests are ignored (a deadlocked device);
//! - `kill@K`: the process kills itself (SIGKILL) after step K, before its checkpoint;
//! - `kill@K:POINT`: the same in the middle of step K's checkpoint, at `POINT`, one of
//!   [`SavePoint::ALL`] (`tensors_partial`, `tensors_renamed`, `json_partial`,
//!   `json_renamed`, `pruning`);
//! - `write_fail@K`: writing step K's checkpoint fails half-way with "no space left on
//!   device".

use std::str::FromStr;

use crate::train::run::checkpoint::{SaveFault, SavePoint};
use crate::{Error, Result};

/// The environment variable.
pub const ENV: &str = "ATTNRT_FAULT";

/// What happens at a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepFault {
    Oom,
    Nan,
    Hang,
    Kill,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Step(StepFault),
    Save(SaveFault),
}

/// The faults one job meets, by step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    at: Vec<(u64, Kind)>,
}

impl Faults {
    /// No faults.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// The faults `ATTNRT_FAULT` gives job `job`; a value that does not parse is an error
    /// naming the variable.
    pub fn from_env(job: &str) -> Result<Faults> {
        match std::env::var(ENV) {
            Ok(text) => Faults::parse(&text, job),
            Err(_) => Ok(Faults::none()),
        }
    }

    /// The faults in `text` (the variable's grammar) that apply to job `job`.
    pub fn parse(text: &str, job: &str) -> Result<Faults> {
        let mut at = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = |why: &str| Error::invalid(format!("{ENV} entry '{item}'"), why.to_string());
            let (target, fault) = match item.rsplit_once('=') {
                Some((name, fault)) => (Some(name), fault),
                None => (None, item),
            };
            let (kind, rest) = fault
                .split_once('@')
                .ok_or_else(|| bad("expected KIND@STEP, e.g. nan@5"))?;
            let (step, point) = match rest.split_once(':') {
                Some((step, point)) => (step, Some(point)),
                None => (rest, None),
            };
            let step: u64 = step
                .parse()
                .map_err(|_| bad("the step after '@' is not a whole number"))?;
            let kind = match (kind, point) {
                ("oom", None) => Kind::Step(StepFault::Oom),
                ("nan", None) => Kind::Step(StepFault::Nan),
                ("hang", None) => Kind::Step(StepFault::Hang),
                ("kill", None) => Kind::Step(StepFault::Kill),
                ("kill", Some(p)) => Kind::Save(SaveFault::KillAt(
                    SavePoint::from_str(p).map_err(|why| bad(&why))?,
                )),
                ("write_fail", None) => Kind::Save(SaveFault::DiskFull),
                (_, Some(_)) => return Err(bad("only kill takes a :POINT")),
                _ => return Err(bad("KIND is one of oom, nan, hang, kill, write_fail")),
            };
            if target.is_none_or(|t| t == job) {
                at.push((step, kind));
            }
        }
        Ok(Faults { at })
    }

    /// The fault of step `step` itself, if any.
    pub fn step(&self, step: u64) -> Option<StepFault> {
        self.at.iter().find_map(|&(s, k)| match k {
            Kind::Step(f) if s == step => Some(f),
            _ => None,
        })
    }

    /// The fault of step `step`'s checkpoint, if any.
    pub fn save(&self, step: u64) -> Option<SaveFault> {
        self.at.iter().find_map(|&(s, k)| match k {
            Kind::Save(f) if s == step => Some(f),
            _ => None,
        })
    }
}

/// Ends this process at once with SIGKILL, as the out-of-memory killer or `kill -9` would.
pub fn kill_self() -> ! {
    let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
    // SIGKILL cannot be caught, so this is reached only if raising it failed.
    std::process::abort()
}

/// Blocks the calling thread for ever, as a deadlocked device call would.
pub fn hang() -> ! {
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_per_job_and_bad_ones_name_the_variable() {
        let text = "a=nan@3, b=hang@2,kill@7:json_renamed,write_fail@4,oom@9";
        let a = Faults::parse(text, "a").unwrap();
        assert_eq!(a.step(3), Some(StepFault::Nan));
        assert_eq!(a.step(2), None);
        assert_eq!(a.step(9), Some(StepFault::Oom));
        assert_eq!(a.save(7), Some(SaveFault::KillAt(SavePoint::JsonRenamed)));
        assert_eq!(a.save(4), Some(SaveFault::DiskFull));
        assert_eq!(
            Faults::parse(text, "b").unwrap().step(2),
            Some(StepFault::Hang)
        );
        assert_eq!(Faults::parse("", "a").unwrap(), Faults::none());
        // A job name may hold '='; the kind after the last one counts.
        let odd = Faults::parse("x=y=kill@1", "x=y").unwrap();
        assert_eq!(odd.step(1), Some(StepFault::Kill));
        for (bad, says) in [
            ("nan", "KIND@STEP"),
            ("nan@x", "whole number"),
            ("melt@1", "one of oom"),
            ("kill@1:midway", "tensors_partial"),
            ("nan@1:pruning", "only kill"),
        ] {
            let e = Faults::parse(bad, "a").unwrap_err().to_string();
            assert!(
                e.starts_with("ATTNRT_FAULT entry") && e.contains(says),
                "{e}"
            );
        }
    }
}
