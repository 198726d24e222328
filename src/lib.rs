//! attnrt: hand-written CUDA kernels and a small GPU runtime for running the CSWinTT
//! transformer and for Slow-Down-fair multi-job data-parallel training.
//!
//! Layers, bottom up (see `docs/ARCHITECTURE.md`):
//! - [`gpu`]: the runtime on cudarc (devices, streams, events, buffers, modules, graphs, NVTX);
//! - [`kernels`]: the compiled kernel registry and typed launchers;
//! - [`model`]: safetensors I/O, the CSWinTT config and weights, synthetic models;
//! - [`cswintt`]: the transformer, as a CPU reference and a GPU engine;
//! - [`sched`]: distribution ratios, Slow-Down and policies, and the simulator (no CUDA);
//! - [`tracker`]: the whole tracker (backbone, heads, crops, the tracking loop);
//! - `train`: the data-parallel trainer (issue 7).

pub mod base;
pub mod cswintt;
pub mod error;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod multijob;
pub mod sched;
pub mod tracker;
pub mod train;

pub use error::{Error, Result};
