//! `attnrt-infer`'s flags.

use std::path::PathBuf;

use clap::Parser;

use attnrt::base::devices::Device;
use attnrt::cswintt::{Mode, Precision};

const AFTER_HELP: &str = "\
Examples:
  attnrt-infer                                  time the default model (CPU when no GPU)
  attnrt-infer --check shared/golden/tiny_s1.golden.safetensors
  attnrt-infer --model cswintt.safetensors --batch 4 --iters 50 --json
  attnrt-infer --input inputs.safetensors --output out.safetensors --iters 1
  attnrt-infer --device cuda --mode fused --graph --iters 100
  attnrt-infer --device cuda --mode streams --trace streams.json   (open in ui.perfetto.dev)
  attnrt-infer --model tracker.safetensors --frames SEQUENCE_DIR --boxes boxes.txt
  attnrt-infer --model tracker.safetensors --check shared/golden/tracker_s1.golden.safetensors

Exit status: 0 success; 1 --check found a tensor over the tolerance; 2 an error
(bad flag, unreadable or invalid file, unavailable device).";

/// Run the CSWinTT transformer (encoder + decoder) on the CPU reference or the GPU
/// engine: time it, check it against a golden file, or write its outputs.
#[derive(Parser, Debug)]
#[command(name = "attnrt-infer", version, after_help = AFTER_HELP)]
pub struct Args {
    /// Weights file (safetensors, parameter names of the released checkpoint; f32, f16 or bf16).
    /// Default: the built-in synthetic model of the released size (c=256, 8 heads, ff=2048, 6+6
    /// layers, S=24, T=8), generated in memory with a fixed seed. With --check and no --model, the
    /// golden file's companion `NAME.weights.safetensors`.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Where to run: `auto` (the GPU when usable, else the CPU with a one-line notice), `cpu`,
    /// `cuda`, `cuda:N` or the bare ordinal `N`.
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: Device,

    /// Batch size of the random inputs (default 1). With --input the batch comes from the file.
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,

    /// Inputs from a safetensors file with the golden files' `input.*` names
    /// (`input.template1.feat` (T,T,b,c), `input.template2.feat`, `input.search.feat` (S,S,b,c),
    /// optional masks `input.*.mask` (b,side,side) and `input.query_embed` (1,c)). Default: seeded
    /// random inputs.
    #[arg(long, value_name = "PATH")]
    pub input: Option<PathBuf>,

    /// Write the outputs `search_feat` (S*S,b,c) and `hs` (1,b,c) to this safetensors file.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Run a golden file's `input.*`, compare every `expected.*` tensor this engine can produce,
    /// print one line per tensor with its relative error ||ours - expected||_F / ||expected||_F,
    /// and exit 1 when one exceeds the tolerance of the precision in use (f32 on the CPU: 1e-5).
    #[arg(long, value_name = "GOLDEN", conflicts_with_all = ["input", "batch", "iters"])]
    pub check: Option<PathBuf>,

    /// Timed runs (default 10). Not used by --check, which runs once.
    #[arg(long, value_name = "N")]
    pub iters: Option<usize>,

    /// Untimed runs before the timed ones (default 2; with --check, 0).
    #[arg(long, value_name = "N")]
    pub warmup: Option<usize>,

    /// Seed of the random inputs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Random inputs with padded borders (like crops at an image edge).
    #[arg(long)]
    pub pad: bool,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// GPU head dispatch: sequential, streams (one stream per head) or fused (one launch for all
    /// heads of a layer). Results are bit-identical across modes. Ignored on the CPU.
    #[arg(long, value_name = "MODE", default_value = "sequential")]
    pub mode: Mode,

    /// Arithmetic precision: f32, tf32 or bf16. The CPU reference supports only f32; tf32 and bf16
    /// are GPU-only: the linear layers and attention's two products run on tensor cores (f32
    /// accumulation), the softmax and LayerNorm stay f32; --check holds them to 2e-3 and 2e-2.
    #[arg(long, value_name = "P", default_value = "f32")]
    pub precision: Precision,

    /// GPU: capture the whole forward pass in a CUDA graph once (per batch size) and replay it;
    /// inputs are uploaded into the engine's buffers before each replay. With --check, the
    /// intermediates come from an eager run and search_feat and hs from a replay. Ignored on the
    /// CPU.
    #[arg(long)]
    pub graph: bool,

    /// GPU: after the timed runs, time one eager forward pass with CUDA events and write it as a
    /// Chrome-trace JSON (open in ui.perfetto.dev or chrome://tracing): one span per stage and per
    /// head kernel, one track per stream. Also prints how much the head kernels overlapped. With
    /// a whole tracker, one tracking step (the first tracked frame's with --frames): a span per
    /// stage (crop, each backbone stage, transformer, heads), also printed as a table.
    #[arg(long, value_name = "FILE", conflicts_with = "check")]
    pub trace: Option<PathBuf>,

    #[command(flatten)]
    pub track: attnrt::tracker::cli::TrackArgs,
}
