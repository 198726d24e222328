//! `attnrt-infer`: runs the CSWinTT transformer on the CPU reference or the GPU engine,
//! times it, checks it against golden files, and writes outputs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use serde_json::json;

use attnrt::cswintt::gpu::trace::{Overlap, chrome_trace, head_overlap};
use attnrt::cswintt::{
    Backend, EXPECTED_PREFIX, EngineOptions, Inputs, Mode, Precision, flops, select_backend,
};
use attnrt::gpu::DeviceChoice;
use attnrt::model::golden::weights_for_golden;
use attnrt::model::synthetic::{self, DEFAULT_SEED, Padding};
use attnrt::model::{Config, TensorFile, Weights, relative_error};

const AFTER_HELP: &str = "\
Examples:
  attnrt-infer                                  time the default model (CPU when no GPU)
  attnrt-infer --check shared/golden/tiny_s1.golden.safetensors
  attnrt-infer --model cswintt.safetensors --batch 4 --iters 50 --json
  attnrt-infer --input inputs.safetensors --output out.safetensors --iters 1
  attnrt-infer --device cuda --mode fused --graph --iters 100
  attnrt-infer --device cuda --mode streams --trace streams.json   (open in ui.perfetto.dev)

Exit status: 0 success; 1 --check found a tensor over the tolerance; 2 an error
(bad flag, unreadable or invalid file, unavailable device).";

/// Run the CSWinTT transformer (encoder + decoder) on the CPU reference or the GPU
/// engine: time it, check it against a golden file, or write its outputs.
#[derive(Parser, Debug)]
#[command(name = "attnrt-infer", version, after_help = AFTER_HELP)]
struct Args {
    /// Weights file (safetensors, parameter names of the released checkpoint; f32, f16 or
    /// bf16). Default: the built-in synthetic model of the released size (c=256, 8 heads,
    /// ff=2048, 6+6 layers, S=24, T=8), generated in memory with a fixed seed. With
    /// --check and no --model, the golden file's companion `NAME.weights.safetensors`.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,

    /// Where to run: `auto` (the GPU when usable, else the CPU with a one-line notice),
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    device: DeviceChoice,

    /// Batch size of the random inputs (default 1). With --input the batch comes from
    /// the file.
    #[arg(long, value_name = "N")]
    batch: Option<usize>,

    /// Inputs from a safetensors file with the golden files' `input.*` names
    /// (`input.template1.feat` (T,T,b,c), `input.template2.feat`, `input.search.feat`
    /// (S,S,b,c), optional masks `input.*.mask` (b,side,side) and `input.query_embed`
    /// (1,c)). Default: seeded random inputs.
    #[arg(long, value_name = "PATH")]
    input: Option<PathBuf>,

    /// Write the outputs `search_feat` (S*S,b,c) and `hs` (1,b,c) to this safetensors
    /// file.
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,

    /// Run a golden file's `input.*`, compare every `expected.*` tensor this engine can
    /// produce, print one line per tensor with its relative error
    /// ||ours - expected||_F / ||expected||_F, and exit 1 when one exceeds the
    /// tolerance of the precision in use (f32 on the CPU: 1e-5).
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

    /// GPU head dispatch: sequential, streams (one stream per head) or fused (one launch
    /// for all heads of a layer). Results are bit-identical across modes. Ignored on the
    /// CPU.
    #[arg(long, value_name = "MODE", default_value = "sequential")]
    mode: Mode,

    /// Arithmetic precision: f32, tf32 or bf16. The CPU reference supports only f32;
    /// tf32 and bf16 are GPU-only: the linear layers and attention's two products run on
    /// tensor cores (f32 accumulation), the softmax and LayerNorm stay f32; --check holds
    /// them to 2e-3 and 2e-2.
    #[arg(long, value_name = "P", default_value = "f32")]
    precision: Precision,

    /// GPU: capture the whole forward pass in a CUDA graph once (per batch size) and
    /// replay it; inputs are uploaded into the engine's buffers before each replay. With
    /// --check, the intermediates come from an eager run and search_feat and hs from a
    /// replay. Ignored on the CPU.
    #[arg(long)]
    graph: bool,

    /// GPU: after the timed runs, time one eager forward pass with CUDA events and write
    /// it as a Chrome-trace JSON (open in ui.perfetto.dev or chrome://tracing): one span
    /// per stage and per head kernel, one track per stream. Also prints how much the head
    /// kernels overlapped.
    #[arg(long, value_name = "FILE", conflicts_with = "check")]
    trace: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("attnrt-infer: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> attnrt::Result<ExitCode> {
    if args.batch == Some(0) {
        return Err(attnrt::Error::invalid("--batch", "must be at least 1"));
    }
    // Model.
    let (weights, model_desc) = match (&args.model, &args.check) {
        (Some(p), _) => (Weights::load(p)?, p.display().to_string()),
        (None, Some(g)) => {
            let p = weights_for_golden(g).ok_or_else(|| {
                attnrt::Error::invalid(
                    format!("--check {}", g.display()),
                    "cannot name its weights file (expected NAME.golden.safetensors); pass --model",
                )
            })?;
            (Weights::load(&p)?, p.display().to_string())
        }
        (None, None) => (
            synthetic::default_model(),
            format!("built-in synthetic (seed {DEFAULT_SEED})"),
        ),
    };
    let weights = Arc::new(weights);
    let cfg = weights.config.clone();

    // Engine.
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
        return check(&args, golden, &cfg, &model_desc, backend.as_mut());
    }

    // Inputs.
    let inputs = match &args.input {
        Some(p) => {
            let inputs = Inputs::load(p, &cfg)?;
            if let Some(b) = args.batch
                && b != inputs.batch
            {
                return Err(attnrt::Error::invalid(
                    "--batch",
                    format!("{b} disagrees with --input's batch {}", inputs.batch),
                ));
            }
            inputs
        }
        None => synthetic::random_inputs(
            &cfg,
            args.batch.unwrap_or(1),
            args.seed,
            if args.pad {
                Padding::Borders
            } else {
                Padding::None
            },
            weights.query_embed.is_none(),
        ),
    };

    let warmup = args.warmup.unwrap_or(2);
    let iters = args.iters.unwrap_or(10);
    let mut last = None;
    for _ in 0..warmup {
        last = Some(backend.run(&inputs, false)?);
    }
    let mut lat_ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        let out = backend.run(&inputs, false)?;
        lat_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        last = Some(out);
    }
    if let Some(p) = &args.output {
        let out = match last {
            Some(o) => o,
            None => backend.run(&inputs, false)?,
        };
        out.save(p)?;
    }
    let overlap = match &args.trace {
        Some(p) => Some(write_trace(backend.as_mut(), &inputs, p)?),
        None => None,
    };

    let stats = Stats::new(&lat_ms, inputs.batch, flops(&cfg, inputs.batch));
    if args.json {
        let mut j = json!({
            "model": model_desc,
            "config": config_json(&cfg),
            "device": backend.device(),
            "engine": backend.describe(),
            "precision": backend.precision().to_string(),
            "mode": args.mode.to_string(),
            "graph": args.graph,
            "batch": inputs.batch,
            "tokens": cfg.l_all(),
            "warmup": warmup,
            "iters": iters,
        });
        if let Some(s) = &stats {
            j["latency_ms"] = json!({"p50": s.p50, "p90": s.p90, "p99": s.p99, "mean": s.mean, "min": s.min, "max": s.max});
            j["fps"] = json!(s.fps);
            j["gflops"] = json!(s.gflops);
        }
        j["flops_per_pass"] = json!(flops(&cfg, inputs.batch));
        if let (Some(p), Some(o)) = (&args.trace, &overlap) {
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
    } else {
        println!("model:   {model_desc}: {}", config_line(&cfg));
        println!("engine:  {} on {}", backend.describe(), backend.device());
        println!(
            "run:     batch {}, {} tokens, warmup {warmup}, iters {iters}",
            inputs.batch,
            cfg.l_all()
        );
        match &stats {
            Some(s) => {
                println!(
                    "latency: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  (mean {:.3}, min {:.3}, max {:.3})",
                    s.p50, s.p90, s.p99, s.mean, s.min, s.max
                );
                println!("fps:     {:.2} frames/s (batch / mean latency)", s.fps);
                println!(
                    "compute: {:.1} GFLOP/s ({:.3} GFLOP per pass / mean latency; matrix products only)",
                    s.gflops,
                    flops(&cfg, inputs.batch) / 1e9
                );
            }
            None => println!("latency: no timed runs (--iters 0)"),
        }
        if let Some(p) = &args.output {
            println!("output:  search_feat, hs -> {}", p.display());
        }
        if let (Some(p), Some(o)) = (&args.trace, &overlap) {
            println!("trace:   one eager pass -> {}", p.display());
            println!("heads:   {}", overlap_line(o));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Times one pass as spans, writes them to `path` as a Chrome trace, and returns how much
/// the per-head attention spans overlapped.
fn write_trace(
    backend: &mut dyn Backend,
    inputs: &Inputs,
    path: &PathBuf,
) -> attnrt::Result<Overlap> {
    let spans = backend.trace(inputs)?;
    let text = chrome_trace(&spans).to_string();
    std::fs::write(path, text).map_err(|e| {
        attnrt::Error::invalid(format!("--trace {}", path.display()), e.to_string())
    })?;
    Ok(head_overlap(&spans))
}

/// The head-overlap figure: how long head kernels ran in total against the time any ran.
fn overlap_line(o: &Overlap) -> String {
    if o.max_concurrent == 0 {
        return "no per-head spans (fused mode: one launch per layer runs every head)".into();
    }
    format!(
        "head kernels busy {:.3} ms within {:.3} ms: concurrency {:.2}, up to {} at once",
        o.busy_ms,
        o.union_ms,
        o.concurrency(),
        o.max_concurrent
    )
}

fn check(
    args: &Args,
    golden: &PathBuf,
    cfg: &Config,
    model_desc: &str,
    backend: &mut dyn Backend,
) -> attnrt::Result<ExitCode> {
    let file = TensorFile::open(golden)?;
    let inputs = Inputs::from_file(&file, cfg)?;
    let tol = backend.tolerance();
    for _ in 0..args.warmup.unwrap_or(0) {
        backend.run(&inputs, false)?;
    }
    let t0 = Instant::now();
    let mut out = backend.run(&inputs, true)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    if args.graph {
        // Intermediates need an eager run; the final outputs come from a graph replay.
        let replayed = backend.run(&inputs, false)?;
        out.search_feat = replayed.search_feat;
        out.hs = replayed.hs;
    }
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut failed = 0usize;
    let mut worst = 0.0f64;
    for name in file.names() {
        if !name.starts_with(EXPECTED_PREFIX) {
            continue;
        }
        let Some(ours) = out.get(&name) else {
            skipped.push(name);
            continue;
        };
        let want = file.f32(&name)?;
        let err = if ours.shape != want.shape {
            f64::INFINITY
        } else {
            relative_error(&ours.data, &want.data).unwrap_or(f64::INFINITY)
        };
        let ok = err <= tol;
        failed += usize::from(!ok);
        worst = worst.max(err);
        rows.push((name, ours.shape.clone(), want.shape.clone(), err, ok));
    }
    if rows.is_empty() {
        return Err(attnrt::Error::invalid(
            golden.display().to_string(),
            "holds no expected.* tensor this engine produces",
        ));
    }
    if let Some(p) = &args.output {
        out.save(p)?;
    }
    if args.json {
        let tensors: Vec<_> = rows
            .iter()
            .map(|(n, s, _, e, ok)| {
                json!({"name": n, "shape": s, "rel_err": if e.is_finite() { json!(e) } else { json!(null) }, "ok": ok})
            })
            .collect();
        println!(
            "{}",
            json!({
                "golden": golden.display().to_string(),
                "model": model_desc,
                "device": backend.device(),
                "engine": backend.describe(),
                "precision": backend.precision().to_string(),
                "tolerance": tol,
                "tensors": tensors,
                "skipped": skipped,
                "max_rel_err": worst,
                "failed": failed,
                "passed": failed == 0,
                "run_ms": ms,
            })
        );
    } else {
        println!("check:   {} against {model_desc}", golden.display());
        println!(
            "engine:  {} on {}, tolerance {tol:.0e} (relative error ||ours - expected||_F / ||expected||_F)",
            backend.describe(),
            backend.device()
        );
        for (n, s, ws, e, ok) in &rows {
            let verdict = if *ok { "ok" } else { "FAIL" };
            if s != ws {
                println!("{n:<40} shape {s:?}, expected {ws:?}  FAIL");
            } else {
                println!("{n:<40} rel err {e:.3e}  {verdict}");
            }
        }
        for n in &skipped {
            println!("{n:<40} skipped (not produced by this engine)");
        }
        println!(
            "{}: {} tensors, {failed} over tolerance, max rel err {worst:.3e}",
            if failed == 0 { "PASS" } else { "FAIL" },
            rows.len()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
    min: f64,
    max: f64,
    fps: f64,
    /// `flops` per pass over the mean latency, in GFLOP/s.
    gflops: f64,
}

impl Stats {
    fn new(lat_ms: &[f64], batch: usize, flops: f64) -> Option<Stats> {
        if lat_ms.is_empty() {
            return None;
        }
        let mut v = lat_ms.to_vec();
        v.sort_by(f64::total_cmp);
        // Nearest-rank percentile.
        let pct = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        Some(Stats {
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            mean,
            min: v[0],
            max: v[v.len() - 1],
            fps: batch as f64 * 1e3 / mean,
            gflops: flops / (mean * 1e6),
        })
    }
}

fn config_line(c: &Config) -> String {
    format!(
        "c={}, {} heads (windows {:?}), ff={}, {}+{} layers, S={}, T={}",
        c.d_model,
        c.nhead,
        c.window_sizes,
        c.dim_feedforward,
        c.enc_layers,
        c.dec_layers,
        c.search_size,
        c.template_size
    )
}

fn config_json(c: &Config) -> serde_json::Value {
    json!({
        "d_model": c.d_model,
        "nhead": c.nhead,
        "dim_feedforward": c.dim_feedforward,
        "enc_layers": c.enc_layers,
        "dec_layers": c.dec_layers,
        "search_size": c.search_size,
        "template_size": c.template_size,
        "window_sizes": c.window_sizes,
    })
}
