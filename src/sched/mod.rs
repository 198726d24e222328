//! Slow-Down-fair scheduling of data-parallel training jobs on a shared multi-GPU machine.
//! Pure Rust, no CUDA: the same code runs in the simulator, in tests and in the trainer.
//!
//! - [`dr`] (from [`crate::base`], which the trainer shares): [`DistributionRatio`], the per-GPU
//!   split of a job's mini-batch, and the largest-remainder rounding that keeps splits exact;
//! - [`slowdown`]: the Slow-Down estimator and per-job progress tracking;
//! - [`policy`]: the [`Policy`] trait, the `static`, `even`, `packed` and `thesis` policies,
//!   and the [`Manager`] whose [`Manager::evaluate`] is one evaluation round;
//! - [`round`]: one manager round (observations in, the policy's changes out), which the
//!   simulator and the live manager both run, and the [`Trace`] of what the rounds saw;
//! - [`decisions`]: the manager's decision log and its replay;
//! - [`jobs`]: the scheduling part of the job file (TOML);
//! - [`sim`]: the discrete-event simulator; [`report`]: its report; [`plot`]: SVG plots;
//! - [`workload`]: synthetic workloads for scale runs.
//!
//! The model and the policies are described in `docs/SCHEDULING.md`.

pub mod bound;
pub mod cost;
pub mod decisions;
pub mod jobs;
pub mod minmax;
pub mod plot;
pub mod policy;
pub mod report;
pub mod round;
pub mod sim;
pub mod slowdown;
pub mod suite;
pub mod workload;

pub use crate::base::dr;
pub use dr::DistributionRatio;
pub use jobs::JobFile;
pub use policy::{Decision, Manager, PeriodInputs, Policy, PolicyKind, ThesisParams};
pub use report::Report;
pub use round::{DrChange, Trace};
pub use sim::{SimOptions, SimOutcome, simulate};
