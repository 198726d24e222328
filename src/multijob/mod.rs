//! Multi-job training under the DR manager on a real machine (`attnrt-train --jobs FILE` with
//! several jobs): every job trains in a worker process of its own, and the manager process
//! applies the scheduling policy of [`crate::sched`] with measured inputs.
//!
//! - [`protocol`]: the JSON-lines protocol between manager and workers;
//! - [`worker`]: a worker process (one job);
//! - [`process`]: the workers as the manager sees them;
//! - [`monitor`]: GPU utilisation (NVML, or step reports) and memory;
//! - [`supervisor`]: the manager's loop; [`saved`]: its state for `--resume`;
//! - [`view`]: the live terminal view; [`simfile`]: a calibrated job file for the simulator.
//!
//! See `docs/SCHEDULING.md` (how to run it) and `docs/ARCHITECTURE.md` (why processes).

pub mod monitor;
pub mod process;
pub mod protocol;
pub mod saved;
pub mod simfile;
pub mod supervisor;
pub mod view;
pub mod worker;

pub use supervisor::{RunConfig, RunOutcome, run};
