//! Running one job: from a `[[job]]` and the flags to a ready job and engine ([`setup`]), the
//! engines that step it on a set of devices ([`engine`]), the training loop ([`trainer`]), its
//! checkpoints ([`checkpoint`]) and the calibration a multi-job manager needs ([`calibrate`]).

pub mod calibrate;
pub mod checkpoint;
pub mod engine;
pub mod setup;
pub mod trainer;
