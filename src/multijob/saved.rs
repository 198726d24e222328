//! The manager's own checkpoint (`manager.json` in the checkpoint directory), written after
//! every manager round and when the run ends or stops: the run clock, and per job how far the
//! manager had got with it, so that `--resume` continues every job's Slow-Down accounting
//! where it stopped, even after the manager was killed. The jobs' parameters are in their own
//! checkpoints (one subdirectory per job).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::base::DistributionRatio;
use crate::sched::jobs::limits::ARRIVAL_S;
use crate::sched::report::{FailedJob, JobReport};
use crate::train::run::calibrate::Calibration;
use crate::{Error, Result};

pub const FILE_NAME: &str = "manager.json";

/// Where a job stood when the run stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SavedJob {
    /// Not arrived, or arrived and training: resumes from its checkpoint.
    Unfinished {
        name: String,
        calibration: Option<Calibration>,
        /// The DR it last ran with (it resumes with it).
        dr: Option<DistributionRatio>,
    },
    Finished {
        report: JobReport,
    },
    Failed {
        failure: FailedJob,
    },
}

impl SavedJob {
    pub fn name(&self) -> &str {
        match self {
            SavedJob::Unfinished { name, .. } => name,
            SavedJob::Finished { report } => &report.name,
            SavedJob::Failed { failure } => &failure.name,
        }
    }
}

/// The whole saved state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedRun {
    /// The run clock when it stopped, seconds (arrivals and completion times use it).
    pub clock_s: f64,
    /// Busy seconds per device so far.
    pub busy_s: Vec<f64>,
    /// By job index.
    pub jobs: Vec<SavedJob>,
}

impl SavedRun {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Writes atomically (temporary file, then rename).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = Self::path(dir);
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// The saved state in `dir`, checked against the job file's job names (in order) and
    /// the run's `devices`, and its values checked (a damaged file must not start the clock
    /// at 10^308 s or index past the devices). `Ok(None)` when there is none (the run never
    /// stopped early).
    pub fn load(dir: &Path, names: &[&str], devices: usize) -> Result<Option<SavedRun>> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let ctx = path.display().to_string();
        let saved: SavedRun =
            serde_json::from_str(&text).map_err(|e| Error::invalid(&ctx, e.to_string()))?;
        let saved_names: Vec<&str> = saved.jobs.iter().map(SavedJob::name).collect();
        if saved_names != names {
            return Err(Error::invalid(
                ctx,
                format!(
                    "was written for jobs {saved_names:?}, the job file has {names:?}; \
                     resume with the same job file"
                ),
            ));
        }
        saved.check(devices).map_err(|p| Error::invalid(ctx, p))?;
        Ok(Some(saved))
    }

    fn check(&self, devices: usize) -> std::result::Result<(), String> {
        let max_s = ARRIVAL_S.1;
        if !(self.clock_s.is_finite() && (0.0..=max_s).contains(&self.clock_s)) {
            return Err(format!(
                "clock_s must be in 0..={max_s} seconds, got {}",
                self.clock_s
            ));
        }
        if self.busy_s.len() != devices {
            return Err(format!(
                "busy_s has {} entries, the run has {devices} devices; resume on the same \
                 devices",
                self.busy_s.len()
            ));
        }
        if let Some(b) = self.busy_s.iter().find(|b| !(b.is_finite() && **b >= 0.0)) {
            return Err(format!("busy_s must hold finite seconds >= 0, found {b}"));
        }
        for job in &self.jobs {
            if let SavedJob::Unfinished {
                name,
                calibration,
                dr,
            } = job
            {
                if let Some(dr) = dr
                    && dr.gpus() != devices
                {
                    return Err(format!(
                        "job '{name}': dr {dr} is for {} devices, the run has {devices}",
                        dr.gpus()
                    ));
                }
                if let Some(c) = calibration {
                    c.check()
                        .map_err(|p| format!("job '{name}': calibration: {p}"))?;
                }
            }
        }
        Ok(())
    }
}
