//! The data-parallel trainer: one job, its mini-batch split over GPUs by a distribution ratio,
//! gradients summed peer to peer by our own kernels (no NCCL). By concern:
//!
//! - [`data`]: the datasets (synthetic, CIFAR-10, MNIST, image folders) and [`data::batches`]: the seeded
//!   sample order, batches, DR shards, the prefetching loader;
//! - [`models`]: model specs and the flat parameter layout, with each model's CPU forward and
//!   backward ([`models::cpu`], [`models::vit`]): the references and the CPU backend;
//! - [`gpu`]: the same passes on one GPU (replica, ViT, cuBLASLt linear layers, cuBLAS);
//! - [`exchange`]: the gradient all-reduce between GPUs;
//! - [`optim`]: SGD and AdamW (f32 master weights in every precision);
//! - [`run`]: a job's keys and its session, engines, the training loop, checkpoints and
//!   calibration.
//!
//! See `docs/TRAINING.md`.

pub mod data;
pub mod exchange;
pub mod gpu;
pub mod models;
pub mod optim;
pub mod run;

pub use crate::base::Precision;
pub use data::Dataset;
pub use gpu::replica::{HostMs, HostTimes};
pub use models::ModelSpec;
pub use optim::Optimizer;

/// The precisions the trainer runs: f32, or bf16 GEMM operands with f32 accumulation.
pub const PRECISIONS: [Precision; 2] = [Precision::F32, Precision::Bf16];
pub use run::checkpoint;
pub use run::engine::{CnnOptions, CpuEngine, Engine, ReplicaEngine, State};
pub use run::fault;
pub use run::session::{RunSettings, Session, SessionConfig, resolve_devices, stop_on_signals};
pub use run::spec::{TrainSpec, parse_precision};
pub use run::trainer::{Job, OnCheckpointError, Outcome, Progress, TrainOptions, train};
