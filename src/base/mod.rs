//! The bottom layer: types that several layers above share and that need no GPU.
//!
//! - [`precision`]: one [`Precision`] for every engine, with its tolerances;
//! - [`dr`]: [`DistributionRatio`], how a data-parallel job splits its mini-batch over devices
//!   (the trainer splits by it, the scheduler decides it);
//! - [`devices`]: one grammar for naming devices on every command line.

pub mod devices;
pub mod dr;
pub mod precision;

pub use devices::{Device, DeviceList, Devices};
pub use dr::DistributionRatio;
pub use precision::Precision;
