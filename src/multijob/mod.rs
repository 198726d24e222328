//! Multi-job training under the DR manager on a real machine (`attnrt-train --jobs FILE` with
//! several jobs): every job trains in a job process of its own, and the manager process
//! applies the scheduling policy of [`crate::sched`] with measured inputs.
//!
//! - [`jobfile`]: the whole job file, composed of the scheduler's and the trainer's parts;
//! - [`protocol`]: the JSON-lines protocol between the manager and the job processes;
//! - [`job_process`]: what runs in a job process (one job);
//! - [`process`]: the job processes as the manager sees them;
//! - [`monitor`]: GPU utilisation (NVML, or step reports) and memory;
//! - [`supervisor`]: the manager's loop; [`saved`]: its state for `--resume`;
//! - [`status`]: what the manager reports while it runs (snapshots, events in words);
//! - [`simfile`]: a calibrated job file for the simulator.
//!
//! See `docs/SCHEDULING.md` (how to run it) and `docs/ARCHITECTURE.md` (why processes).

pub mod job_process;
pub mod jobfile;
pub mod monitor;
pub mod process;
pub mod protocol;
pub mod saved;
pub mod simfile;
pub mod status;
pub mod supervisor;

pub use jobfile::JobFile;
pub use status::RunEvent;
pub use supervisor::{RunConfig, RunOutcome, run};
