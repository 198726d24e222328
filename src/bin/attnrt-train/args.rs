//! The command line of `attnrt-train`.

use std::path::PathBuf;

use clap::Parser;
use clap::builder::{PossibleValuesParser, TypedValueParser};

use attnrt::base::{DeviceList, Precision};
use attnrt::sched::PolicyKind;
use attnrt::train::optim::OptimizerKind;
use attnrt::train::{OnCheckpointError, RunSettings, parse_precision};

/// `--policy`: a policy by name, the names listed in the help from [`PolicyKind::ALL`].
fn policy_parser() -> impl TypedValueParser<Value = PolicyKind> {
    PossibleValuesParser::new(PolicyKind::ALL.map(PolicyKind::name))
        .try_map(|name| name.parse::<PolicyKind>())
}

/// Slow-Down-fair multi-job data-parallel training on a shared multi-GPU machine.
///
/// Several training jobs share the GPUs; a manager sets each job's distribution ratio (how
/// its mini-batch is split over the GPUs) so that no job is slowed down much more than the
/// others. Without --simulate, every job of the file trains for real, each in a process of
/// its own, concurrently, while the manager measures GPU utilisation and each job's
/// Slow-Down and changes DRs (a file with one job just trains it). With --simulate, the job
/// file runs through a deterministic simulator instead (no GPU needed).
///
/// Examples:
///   attnrt-train --jobs examples/multijob-2gpu.toml --policy thesis \
///       --checkpoint-dir ckpt --report run.json --plot run.svg --write-sim calibrated.toml
///   attnrt-train --simulate --jobs examples/thesis-4gpu.toml --policy thesis \
///       --report thesis.json --plot thesis.svg
///   attnrt-train --jobs examples/train-mlp-synthetic.toml --gpus cuda:0,1 \
///       --checkpoint-dir ckpt --checkpoint-every 50 --report run.json
///   attnrt-train --check ../shared/golden/train/shufflenet_s1.golden.safetensors --gpus cpu
///   attnrt-train --describe resnet50 --classes 10 --size 32
#[derive(Debug, Parser)]
#[command(name = "attnrt-train", version, verbatim_doc_comment)]
pub struct Args {
    /// Simulate the job file instead of training (uses the [simulation] and [job.sim] tables).
    #[arg(long)]
    pub simulate: bool,

    /// The job file (TOML): [manager], [simulation] and [[job]] tables; see docs/SCHEDULING.md.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["job_process", "check", "describe"]
    )]
    pub jobs: Option<PathBuf>,

    /// Run one training step from a train-step golden file (a torchvision CNN's weights,
    /// batch and PyTorch's f64 results) on the device of --gpus (`cpu`, the default for this
    /// flag, or `0`), print one line per compared quantity family with its error and
    /// tolerance, and exit 1 when one is over.
    #[arg(long, value_name = "GOLDEN", conflicts_with_all = ["jobs", "describe"])]
    pub check: Option<PathBuf>,

    /// Print a CNN's layers (resnet50, densenet121, alexnet, resnext50_32x4d,
    /// shufflenet_v2_x1_0), its parameter count and its FLOPs per sample.
    #[arg(long, value_name = "MODEL", conflicts_with = "jobs")]
    pub describe: Option<String>,

    /// --describe: the classes.
    #[arg(long, value_name = "K", default_value_t = 1000, requires = "describe")]
    pub classes: usize,

    /// --describe: the input images' side.
    #[arg(long, value_name = "S", default_value_t = 224, requires = "describe")]
    pub size: usize,

    /// The policy (docs/SCHEDULING.md describes each); overrides [manager] policy.
    #[arg(long, value_name = "NAME", value_parser = policy_parser())]
    pub policy: Option<PolicyKind>,

    /// Write the JSON report here ("-" for standard output; the table then goes to stderr).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,

    /// Write an SVG plot of each job's Slow-Down and each GPU's utilisation over time.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,

    /// Overrides [manager] sd_threshold (thesis policy: jobs below it never move).
    #[arg(long, value_name = "SD")]
    pub sd_threshold: Option<f64>,

    /// Overrides [manager] util_threshold, percentage points (thesis policy).
    #[arg(long, value_name = "PCT")]
    pub util_threshold: Option<f64>,

    /// Overrides [manager] period_s, seconds between manager rounds.
    #[arg(long, value_name = "SECONDS")]
    pub period: Option<f64>,

    /// Print every distribution-ratio change the manager makes (to stderr).
    #[arg(long)]
    pub log_changes: bool,

    /// Write the manager's decision log (every admission and round, with the measured
    /// inputs) as JSON.
    #[arg(long, value_name = "PATH")]
    pub decisions: Option<PathBuf>,

    /// Multi-job runs: write the job file with [simulation] and [job.sim] fitted to the
    /// calibration measurements, for --simulate.
    #[arg(long, value_name = "PATH")]
    pub write_sim: Option<PathBuf>,

    /// Multi-job runs: take each job's exclusive iteration time from [job.sim] instead of
    /// measuring it alone before the run.
    #[arg(long)]
    pub no_calibrate: bool,

    /// Multi-job runs: a running job that reports no step for this many manager periods (and
    /// for at least 10 times its longest step so far) is hung: it is killed, reported as
    /// failed, and its devices go to the others.
    #[arg(long, value_name = "N", default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..))]
    pub hang_periods: u32,

    /// Internal: run as the process of this job of a multi-job run (started by the manager,
    /// which sends it everything else on standard input).
    #[arg(long, value_name = "JOB", hide = true)]
    pub job_process: Option<String>,

    #[command(flatten)]
    pub train: TrainArgs,
}

/// Flags of real training (ignored with --simulate).
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Devices: `all` (every GPU; the CPU when there is none), `cpu`, `cpu:N` (N shards in
    /// turn on the CPU: rehearses an N-GPU machine), or GPUs like `cuda:0,1` or `0,1`.
    #[arg(long, value_name = "LIST", default_value = "all")]
    pub gpus: DeviceList,

    /// Distribution ratio over the chosen devices, tenths like `2,8`; overrides the job's
    /// initial_dr (default even).
    #[arg(long, value_name = "TENTHS")]
    pub dr: Option<String>,

    /// Seed for initialisation, sample order and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// `adamw` or `sgd` (momentum 0.9); overrides the jobs' `optimizer` (default adamw).
    #[arg(long)]
    pub optimizer: Option<OptimizerKind>,

    /// Learning rate; overrides the jobs' `lr` (default 1e-3).
    #[arg(long)]
    pub lr: Option<f32>,

    /// `f32` or `bf16`: the linear layers' GEMM operands (bf16 accumulates in f32; weights,
    /// optimizer state and gradients stay f32); overrides the jobs' `precision` (default f32).
    #[arg(long, value_parser = parse_precision)]
    pub precision: Option<Precision>,

    /// Directory for checkpoints (safetensors + JSON; one subdirectory per job when the file
    /// has several).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,

    /// Checkpoint every K steps (0: only on SIGINT/SIGTERM and at the end).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub checkpoint_every: u64,

    /// Continue from the newest intact checkpoint in --checkpoint-dir (a damaged newer one
    /// is named and renamed to *.damaged).
    #[arg(long)]
    pub resume: bool,

    /// When a periodic checkpoint cannot be written (a full disk): `stop` ends the run with
    /// the error, `continue` says so and trains on (the next checkpoint tries again). Either
    /// way the previous checkpoint is kept.
    #[arg(long, value_name = "WHAT", default_value_t = OnCheckpointError::Stop)]
    pub on_checkpoint_error: OnCheckpointError,

    /// Print a loss/accuracy/throughput line every N steps (default: 10 lines per run).
    #[arg(long, value_name = "N")]
    pub log_every: Option<u64>,

    /// Batches the loader prepares ahead.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub prefetch: usize,

    /// One-job runs of a CNN on GPUs: at the end, print what ran each convolution's forward
    /// and backward passes on the first GPU (cuDNN's algorithm, on the NHWC tensors or, in
    /// f32, on channel-major NCHW copies of them, or a cuBLASLt GEMM, with the timings that
    /// chose it). The JSON report holds the same lines as `conv_paths`.
    #[arg(long)]
    pub show_convs: bool,
}

impl TrainArgs {
    /// The settings every job of the run trains with.
    pub fn settings(&self) -> RunSettings {
        RunSettings {
            seed: self.seed,
            optimizer: self.optimizer,
            lr: self.lr,
            precision: self.precision,
            checkpoint_dir: self.checkpoint_dir.clone(),
            checkpoint_every: self.checkpoint_every,
            resume: self.resume,
            on_checkpoint_error: self.on_checkpoint_error,
            prefetch: self.prefetch,
        }
    }
}
