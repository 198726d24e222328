//! The bottom layer: types that several layers above share and that need no GPU.
//!
//! - [`precision`]: one [`Precision`] for every engine, with its tolerances;
//! - [`tensor`]: the host [`Tensor`] and [`relative_error`], the one error measure;
//! - [`safetensors`]: reading ([`TensorFile`]) and writing safetensors files, for models,
//!   golden files, inputs, outputs and checkpoints;
//! - [`stats`]: latency statistics ([`LatencyStats`], nearest-rank percentiles).

pub mod precision;
pub mod safetensors;
pub mod stats;
pub mod tensor;

pub use precision::Precision;
pub use safetensors::TensorFile;
pub use stats::LatencyStats;
pub use tensor::{Tensor, relative_error};
