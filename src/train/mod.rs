//! The data-parallel trainer (issue 7): one job, its mini-batch split over GPUs by a
//! distribution ratio, gradients summed peer to peer by our own kernels (no NCCL).
//!
//! - [`data`]: the datasets (synthetic, CIFAR-10, MNIST);
//! - [`batches`]: the seeded sample order, batches, DR shards, the prefetching loader;
//! - [`model`]: model specs and the flat parameter layout; [`vit`]: the ViT classifier;
//!   [`optim`]: SGD and AdamW;
//! - [`precision`]: f32 or bf16 GEMMs (f32 master weights either way);
//! - [`cpu`]: the CPU forward/backward (reference and backend); [`replica`]: the same on a
//!   GPU (the linear layers on cuBLASLt through [`linear`], attention on cuBLAS through
//!   [`blas`], the rest `kernels/train_ops.cu`), the ViT's in [`vit_gpu`];
//! - [`allreduce`]: the gradient exchange; [`engine`]: CPU and multi-GPU engines;
//! - [`checkpoint`]: atomic, checksummed checkpoints; [`trainer`]: the loop;
//! - [`setup`]: from a `[[job]]` and the flags to a job and an engine; [`calibrate`]: the
//!   exclusive iteration time a multi-job manager needs.
//!
//! See `docs/TRAINING.md`.

pub mod allreduce;
pub mod batches;
pub mod blas;
pub mod calibrate;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod engine;
pub mod linear;
pub mod model;
pub mod optim;
pub mod precision;
pub mod replica;
pub mod setup;
pub mod trainer;
pub mod vit;
pub mod vit_gpu;

pub use data::Dataset;
pub use engine::{CpuEngine, Engine, GpuEngine, State};
pub use model::ModelSpec;
pub use optim::Optimizer;
pub use precision::Precision;
pub use setup::{Devices, open_engine, open_job, optimizer_for, precision_for};
pub use trainer::{Job, Outcome, Progress, TrainOptions, train};
