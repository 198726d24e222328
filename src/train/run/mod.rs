//! Running one job: its training keys ([`spec`]), a job opened on its devices and ready to
//! train ([`session`]), the engines that step it on a set of devices ([`engine`]), the training
//! loop ([`trainer`]), its checkpoints ([`checkpoint`]) and the calibration a multi-job manager
//! needs ([`calibrate`]); faults a test injects ([`fault`]).

pub mod calibrate;
pub mod checkpoint;
pub mod engine;
pub mod fault;
pub mod session;
pub mod spec;
pub mod trainer;
