//! The GPU runtime: a thin layer on cudarc (driver API, loaded at run time, so building needs
//! no CUDA). It covers device discovery and selection, streams with fork/join, events and
//! event timing, typed device buffers, the compiled kernel images ([`images`]) and their lazy
//! per-device loading with named kernel launches, CUDA graph capture/replay, NVTX ranges, and cuDNN (found and loaded at run time).
//!
//! cudarc's per-allocation event tracking is switched off on every context we open: it makes
//! streams that write disjoint parts of one buffer wait on each other, which would silently
//! serialise the per-head streams. Ordering between streams is ours to state, with
//! [`StreamSet::fork`] and [`StreamSet::join`].

mod buffer;
pub mod cudnn;
mod device;
mod graph;
pub mod images;
mod module;
pub mod nvtx;
mod stream;
pub mod testing;
mod timing;

pub use buffer::{DeviceBuffer, download, poison_nan, upload};
pub use device::{Gpu, device_count, gpu_or_cpu};
pub use graph::Graph;
pub use module::{Kernel, Launch};
pub use stream::StreamSet;
pub use timing::{EventTimer, Span, time_ms};

pub use cudarc::driver::{CudaStream, LaunchConfig};
