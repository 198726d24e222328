//! The whole CSWinTT tracker around the transformer (spec:
//! `shared/spec/cswintt-tracker.md`): frames and a first box in, one box per frame out.
//!
//! - [`weights`]: the whole checkpoint (backbone, bottleneck, heads, transformer), batch
//!   norms folded at load, and how a tracker file is told from a transformer-only one;
//! - [`frame`]: RGB frames and `[x, y, w, h]` boxes;
//! - [`crop`]: `sample_target` (crop, zero padding, OpenCV's bilinear resize, the padding
//!   mask) and the normalisation;
//! - [`posenc`]: the sine positional encoding of a feature mask, cached per mask;
//! - [`cpu`]: the network's CPU reference (backbone, bottleneck, transformer, heads);
//! - [`gpu`]: the network on a GPU (crop kernel, cuDNN convolutions, the transformer's GPU
//!   engine, heads), one CUDA graph a step;
//! - [`track`]: the tracking loop over any [`track::Network`];
//! - [`golden`]: `--check` against the original's golden files;
//! - [`dataset`]: sequences as datasets ship them (frames folders, LaSOT, GOT-10k, OTB),
//!   ground truth, frames decoded ahead on other threads;
//! - [`eval`]: success AUC, precision and normalised precision as pytracking computes them,
//!   and the success plot;
//! - [`cli`]: `attnrt-infer`'s tracker modes (track, check, time);
//! - [`synthetic`]: seeded tracker files of any size, for tests.

pub mod cli;
pub mod cpu;
pub mod crop;
pub mod dataset;
pub mod eval;
pub mod frame;
pub mod golden;
pub mod gpu;
pub mod posenc;
pub mod synthetic;
pub mod track;
pub mod weights;

pub use cpu::CpuNetwork;
pub use frame::{BBox, Frame};
pub use gpu::{GpuNetwork, gpu_network};
pub use track::{CropKind, Features, Network, Prediction, Tracked, Tracker};
pub use weights::{TrackerConfig, TrackerWeights, is_tracker};
