//! The bottom layer: types that several layers above share and that need no GPU.
//!
//! - [`precision`]: one [`Precision`] for every engine, with its tolerances.

pub mod precision;

pub use precision::Precision;
