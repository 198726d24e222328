//! The bottom layer: types that several layers above share and that need no GPU.
//!
//! - [`precision`]: one [`Precision`] for every engine, with its tolerances;
//! - [`tensor`]: the host [`Tensor`] and [`relative_error`], the one error measure;
//! - [`safetensors`]: reading ([`TensorFile`]) and writing safetensors files, for models,
//!   golden files, inputs, outputs and checkpoints;
//! - [`stats`]: latency statistics ([`LatencyStats`], nearest-rank percentiles);
//! - [`dr`]: [`DistributionRatio`], how a data-parallel job splits its mini-batch over devices
//!   (the trainer splits by it, the scheduler decides it);
//! - [`devices`]: one grammar for naming devices on every command line.

pub mod devices;
pub mod dr;
pub mod precision;
pub mod safetensors;
pub mod stats;
pub mod tensor;

pub use devices::{Device, DeviceList, Devices};
pub use dr::DistributionRatio;
pub use precision::Precision;
pub use safetensors::TensorFile;
pub use stats::LatencyStats;
pub use tensor::{Tensor, relative_error};
