//! attnrt: hand-written CUDA kernels and a small GPU runtime for running the CSWinTT
//! transformer and for Slow-Down-fair multi-job data-parallel training.
//!
//! Layers, bottom up; each imports only from those below it (see `docs/ARCHITECTURE.md`):
//! - [`error`]: the one error type;
//! - [`base`]: types every layer shares, no CUDA: [`base::Precision`], the host
//!   [`base::Tensor`], safetensors I/O, latency statistics, [`base::DistributionRatio`], the
//!   device grammar;
//! - [`gpu`]: the runtime on cudarc (devices, streams, events, buffers, the compiled kernel
//!   images, modules, graphs, NVTX);
//! - [`kernels`]: the ops, one module each: typed launchers and the op's CPU reference;
//! - models and engines: [`model`] (the CSWinTT config and weights, synthetic models, golden
//!   files), [`cswintt`] (the transformer as a CPU reference and a GPU engine, the golden
//!   comparison), [`tracker`] (the whole tracker: backbone, heads, crops, the tracking loop,
//!   datasets) and [`train`] (the data-parallel trainer);
//! - orchestration: [`sched`] (Slow-Down, policies, the manager round, the simulator; no
//!   CUDA) and [`multijob`] (the whole job file; several training jobs under the manager);
//! - the binaries `attnrt-infer` and `attnrt-train`.

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
