//! attnrt: hand-written CUDA kernels and a small GPU runtime for running the CSWinTT
//! transformer and for Slow-Down-fair multi-job data-parallel training.
//!
//! Layers, bottom up (see `docs/ARCHITECTURE.md`):
//! - [`gpu`]: the runtime on cudarc (devices, streams, events, buffers, the compiled kernel
//!   images, modules, graphs, NVTX);
//! - [`kernels`]: the ops, one module each: typed launchers and the op's CPU reference;
//! - [`model`]: safetensors I/O, the CSWinTT config and weights, synthetic models;
//! - [`cswintt`]: the transformer, as a CPU reference and a GPU engine;
//! - [`sched`]: distribution ratios, Slow-Down and policies, and the simulator (no CUDA);
//! - `train`: the data-parallel trainer (issue 7).

pub mod base;
pub mod cswintt;
pub mod error;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod multijob;
pub mod sched;
pub mod train;

pub use error::{Error, Result};
