//! The line protocol between the manager and its job processes: one JSON object per line,
//! commands on the job process's standard input, events on its standard output (its standard
//! error is free for logs). The first command is always [`Command::Open`], which carries
//! every setting the job needs: a job process reads no file and no flag of its own.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::base::DistributionRatio;
use crate::train::SessionConfig;
use crate::train::run::calibrate::Calibration;

/// Manager to job process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Open the job (data, model, devices, checkpoint) as `config` says; answered by
    /// [`Event::Ready`].
    Open { config: Box<SessionConfig> },
    /// Measure the job alone ([`Calibration::measure`]), one-device points on `gpu`.
    Calibrate { gpu: usize },
    /// Start training with this split.
    Start { dr: DistributionRatio },
    /// Use this split from the next iteration on.
    SetDr { dr: DistributionRatio },
    /// Checkpoint and exit (also what a closed standard input means).
    Stop,
}

/// Job process to manager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Set up (data, model, devices, checkpoint read); waiting for commands.
    Ready {
        /// The step a resumed job continues from (0 when fresh).
        start_step: u64,
        iterations: u64,
        batch_size: usize,
        /// A line about how the job runs (e.g. a fallback), if any.
        notice: Option<String>,
        /// Newer checkpoints than the one resumed from that did not load, each named with
        /// why (they were set aside).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        damaged: Vec<String>,
    },
    Calibrated {
        calibration: Calibration,
    },
    /// One training step done.
    Step {
        step: u64,
        /// The step's wall time, seconds.
        step_s: f64,
        loss: f64,
        accuracy: f64,
        samples_per_s: f64,
        /// The step's checkpoint could not be written and the job goes on: why, and which
        /// checkpoint is kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint_error: Option<String>,
    },
    /// Every iteration done (and checkpointed, with a checkpoint directory).
    Finished {
        step: u64,
        loss: f64,
        accuracy: f64,
    },
    /// Stopped on request after checkpointing at `step`.
    Stopped {
        step: u64,
    },
    /// The job cannot go on; the job process exits after sending this.
    Failed {
        message: String,
    },
}

/// Writes `msg` as one line and flushes, so the reader sees it at once.
pub fn send<T: Serialize>(out: &mut impl Write, msg: &T) -> io::Result<()> {
    let line = serde_json::to_string(msg).map_err(io::Error::other)?;
    writeln!(out, "{line}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_single_lines() {
        let dr = DistributionRatio::new(vec![3, 7]).unwrap();
        let mut buf = Vec::new();
        send(&mut buf, &Command::SetDr { dr: dr.clone() }).unwrap();
        send(&mut buf, &Event::Stopped { step: 4 }).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], r#"{"command":"set_dr","dr":[3,7]}"#);
        assert_eq!(
            serde_json::from_str::<Command>(lines[0]).unwrap(),
            Command::SetDr { dr }
        );
        assert_eq!(
            serde_json::from_str::<Event>(lines[1]).unwrap(),
            Event::Stopped { step: 4 }
        );
        // A DR that does not sum to 10 is refused on the way in.
        assert!(serde_json::from_str::<Command>(r#"{"command":"set_dr","dr":[3,3]}"#).is_err());
    }
}
