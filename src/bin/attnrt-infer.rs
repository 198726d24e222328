//! `attnrt-infer`: runs the CSWinTT transformer on the CPU reference or the GPU engine,
//! times it, checks it against golden files, and writes outputs; with a whole tracker,
//! tracks sequences of frames (`attnrt::tracker::cli`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use attnrt::base::TensorFile;
use attnrt::base::devices::Device;
use attnrt::cswintt::gpu::trace::{Overlap, chrome_trace, head_overlap};
use attnrt::cswintt::{Backend, EngineOptions, Inputs, Mode, Precision, check, flops};
use attnrt::cswintt::{select_backend, time_runs};
use attnrt::gpu::nvtx;
use attnrt::model::synthetic::{self, Padding};
use attnrt::model::{Config, Weights};
use attnrt::tracker::cli::Event as TrackEvent;
use attnrt::{Error, Result};

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
struct Args {
    /// Weights file (safetensors, parameter names of the released checkpoint; f32, f16 or bf16).
    /// Default: the built-in synthetic model of the released size (c=256, 8 heads, ff=2048, 6+6
    /// layers, S=24, T=8), generated in memory with a fixed seed. With --check and no --model, the
    /// golden file's companion `NAME.weights.safetensors`.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,

    /// Where to run: `auto` (the GPU when usable, else the CPU with a one-line notice), `cpu`,
    /// `cuda`, `cuda:N` or the bare ordinal `N`.
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    device: Device,

    /// Batch size of the random inputs (default 1). With --input the batch comes from the file.
    #[arg(long, value_name = "N")]
    batch: Option<usize>,

    /// Inputs from a safetensors file with the golden files' `input.*` names
    /// (`input.template1.feat` (T,T,b,c), `input.template2.feat`, `input.search.feat` (S,S,b,c),
    /// optional masks `input.*.mask` (b,side,side) and `input.query_embed` (1,c)). Default: seeded
    /// random inputs.
    #[arg(long, value_name = "PATH")]
    input: Option<PathBuf>,

    /// Write the outputs `search_feat` (S*S,b,c) and `hs` (1,b,c) to this safetensors file.
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,

    /// Run a golden file's `input.*`, compare every `expected.*` tensor this engine can produce,
    /// print one line per tensor with its relative error ||ours - expected||_F / ||expected||_F,
    /// and exit 1 when one exceeds the tolerance of the precision in use (f32 on the CPU: 1e-5).
    #[arg(long, value_name = "GOLDEN", conflicts_with_all = ["input", "batch", "iters"])]
    check: Option<PathBuf>,

    /// Timed runs (default 10). Not used by --check, which runs once.
    #[arg(long, value_name = "N")]
    iters: Option<usize>,

    /// Untimed runs before the timed ones (default 2; with --check, 0).
    #[arg(long, value_name = "N")]
    warmup: Option<usize>,

    /// Seed of the random inputs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,

    /// Random inputs with padded borders (like crops at an image edge).
    #[arg(long)]
    pad: bool,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,

    /// GPU head dispatch: sequential, streams (one stream per head) or fused (one launch for all
    /// heads of a layer). Results are bit-identical across modes. Ignored on the CPU.
    #[arg(long, value_name = "MODE", default_value = "sequential")]
    mode: Mode,

    /// Arithmetic precision: f32, tf32 or bf16. The CPU reference supports only f32; tf32 and bf16
    /// are GPU-only: the linear layers and attention's two products run on tensor cores (f32
    /// accumulation), the softmax and LayerNorm stay f32; --check holds them to 2e-3 and 2e-2.
    #[arg(long, value_name = "P", default_value = "f32")]
    precision: Precision,

    /// GPU: capture the whole forward pass in a CUDA graph once (per batch size) and replay it;
    /// inputs are uploaded into the engine's buffers before each replay. With --check, the
    /// intermediates come from an eager run and search_feat and hs from a replay. Ignored on the
    /// CPU.
    #[arg(long)]
    graph: bool,

    /// GPU: after the timed runs, time one eager forward pass with CUDA events and write it as a
    /// Chrome-trace JSON (open in ui.perfetto.dev or chrome://tracing): one span per stage and per
    /// head kernel, one track per stream. Also prints how much the head kernels overlapped. With
    /// a whole tracker, one tracking step (the first tracked frame's with --frames): a span per
    /// stage (crop, each backbone stage, transformer, heads), also printed as a table.
    #[arg(long, value_name = "FILE", conflicts_with = "check")]
    trace: Option<PathBuf>,

    #[command(flatten)]
    track: attnrt::tracker::cli::TrackArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    for n in nvtx::notices() {
        eprintln!("attnrt-infer: {n}");
    }
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("attnrt-infer: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    let shared = attnrt::tracker::cli::Shared {
        model: args.model.as_deref(),
        check: args.check.as_deref(),
        device: args.device,
        precision: args.precision,
        mode: args.mode,
        graph: args.graph,
        json: args.json,
        iters: args.iters,
        warmup: args.warmup,
        seed: args.seed,
        trace: args.trace.as_deref(),
    };
    let mut view = TrackView::new(args.json);
    let tracked =
        attnrt::tracker::cli::run(&args.track, &shared, &mut std::io::stdout(), &mut |e| {
            view.show(e)
        })?;
    if let Some(code) = tracked {
        return Ok(ExitCode::from(code));
    }
    if args.batch == Some(0) {
        return Err(Error::invalid("--batch", "must be at least 1"));
    }
    let (weights, model_desc) = Weights::for_run(args.model.as_deref(), args.check.as_deref())?;
    let weights = Arc::new(weights);
    let cfg = weights.config.clone();
    let options = EngineOptions {
        mode: args.mode,
        precision: args.precision,
        graph: args.graph,
    };
    let selected = select_backend(args.device, weights.clone(), options)?;
    if let Some(n) = &selected.notice {
        eprintln!("attnrt-infer: {n}");
    }
    let mut backend = selected.backend;
    if let Some(golden) = &args.check {
        return check_golden(&args, golden, &cfg, &model_desc, backend.as_mut());
    }

    let inputs = match &args.input {
        Some(p) => {
            let inputs = Inputs::load(p, &cfg)?;
            if let Some(b) = args.batch.filter(|&b| b != inputs.batch) {
                let problem = format!("{b} disagrees with --input's batch {}", inputs.batch);
                return Err(Error::invalid("--batch", problem));
            }
            inputs
        }
        None => {
            let padding = if args.pad {
                Padding::Borders
            } else {
                Padding::None
            };
            let batch = args.batch.unwrap_or(1);
            let with_query = weights.query_embed.is_none();
            synthetic::random_inputs(&cfg, batch, args.seed, padding, with_query)
        }
    };
    let (warmup, iters) = (args.warmup.unwrap_or(2), args.iters.unwrap_or(10));
    let timing = time_runs(backend.as_mut(), &inputs, warmup, iters)?;
    if let Some(p) = &args.output {
        match timing.last {
            Some(o) => o.save(p)?,
            None => backend.run(&inputs, false)?.save(p)?,
        }
    }
    let overlap = match &args.trace {
        Some(p) => Some(write_trace(backend.as_mut(), &inputs, p)?),
        None => None,
    };

    let (batch, pass_flops) = (inputs.batch, flops(&cfg, inputs.batch));
    let trace = args.trace.as_deref().zip(overlap);
    if args.json {
        let mut j = json!({
            "model": model_desc,
            "config": cfg,
            "device": backend.device(),
            "engine": backend.describe(),
            "precision": backend.precision().to_string(),
            "mode": args.mode.to_string(),
            "graph": args.graph,
            "batch": batch,
            "tokens": cfg.l_all(),
            "warmup": warmup,
            "iters": iters,
            "flops_per_pass": pass_flops,
        });
        if let Some(s) = &timing.latency_ms {
            j["latency_ms"] = json!({"p50": s.p50, "p90": s.p90, "p99": s.p99, "mean": s.mean, "min": s.min, "max": s.max});
            j["fps"] = json!(s.per_second(batch as f64));
            j["gflops"] = json!(s.per_second(pass_flops) / 1e9);
        }
        if let Some((p, o)) = trace {
            j["trace"] = json!({
                "file": p.display().to_string(),
                "head_busy_ms": o.busy_ms,
                "head_union_ms": o.union_ms,
                "concurrency": o.concurrency(),
                "max_concurrent": o.max_concurrent,
            });
        }
        if let Some(p) = &args.output {
            j["output"] = json!(p.display().to_string());
        }
        println!("{j}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("model:   {model_desc}: {cfg}");
    println!("engine:  {} on {}", backend.describe(), backend.device());
    let tokens = cfg.l_all();
    println!("run:     batch {batch}, {tokens} tokens, warmup {warmup}, iters {iters}");
    match &timing.latency_ms {
        Some(s) => {
            println!("latency: {s}");
            let fps = s.per_second(batch as f64);
            println!("fps:     {fps:.2} frames/s (batch / mean latency)");
            println!(
                "compute: {:.1} GFLOP/s ({:.3} GFLOP per pass / mean latency; matrix products only)",
                s.per_second(pass_flops) / 1e9,
                pass_flops / 1e9
            );
        }
        None => println!("latency: no timed runs (--iters 0)"),
    }
    if let Some(p) = &args.output {
        println!("output:  search_feat, hs -> {}", p.display());
    }
    if let Some((p, o)) = trace {
        println!("trace:   one eager pass -> {}", p.display());
        println!("heads:   {o}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Times one pass as spans, writes them to `path` as a Chrome trace, and returns how much
/// the per-head attention spans overlapped.
fn write_trace(backend: &mut dyn Backend, inputs: &Inputs, path: &Path) -> Result<Overlap> {
    let spans = backend.trace(inputs)?;
    std::fs::write(path, chrome_trace(&spans).to_string())
        .map_err(|e| Error::invalid(format!("--trace {}", path.display()), e.to_string()))?;
    Ok(head_overlap(&spans))
}

fn check_golden(
    args: &Args,
    golden: &Path,
    cfg: &Config,
    model_desc: &str,
    backend: &mut dyn Backend,
) -> Result<ExitCode> {
    let file = TensorFile::open(golden)?;
    let warmup = args.warmup.unwrap_or(0);
    let run = check::run(backend, &file, cfg, warmup, args.graph)?;
    if let Some(p) = &args.output {
        run.outputs.save(p)?;
    }
    let c = &run.check;
    if args.json {
        let j = json!({
            "golden": golden.display().to_string(),
            "model": model_desc,
            "device": backend.device(),
            "engine": backend.describe(),
            "precision": backend.precision().to_string(),
            "tolerance": c.tolerance,
            "tensors": c.tensors,
            "skipped": c.skipped,
            "max_rel_err": c.max_rel_err(),
            "failed": c.failed(),
            "passed": c.passed(),
            "run_ms": run.run_ms,
        });
        println!("{j}");
    } else {
        println!("check:   {} against {model_desc}", golden.display());
        println!(
            "engine:  {} on {}, tolerance {:.0e} (relative error ||ours - expected||_F / ||expected||_F)",
            backend.describe(),
            backend.device(),
            c.tolerance
        );
        println!("{c}");
    }
    // 1: a tensor over the tolerance.
    Ok(ExitCode::from(u8::from(!c.passed())))
}

/// The tracker's progress: one bar per sequence with the running frames/s (none with
/// `--json`, and indicatif draws none when stderr is not a terminal), notices on stderr.
struct TrackView {
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl TrackView {
    fn new(quiet: bool) -> TrackView {
        TrackView { quiet, bar: None }
    }

    fn show(&mut self, event: TrackEvent) {
        match event {
            TrackEvent::Notice(n) => eprintln!("attnrt-infer: {n}"),
            TrackEvent::Sequence { name, frames } if !self.quiet => {
                let bar = ProgressBar::new(frames as u64).with_prefix(name.to_string());
                bar.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} frames, {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                self.bar = Some(bar);
            }
            TrackEvent::Frame { done, fps } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done as u64);
                    bar.set_message(format!("{fps:.2} frames/s"));
                }
            }
            TrackEvent::SequenceDone => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
            }
            TrackEvent::Sequence { .. } => {}
        }
    }
}
