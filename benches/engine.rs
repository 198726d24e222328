//! GPU engine latency at the released size (c=256, 8 heads, ff=2048, 6+6 layers, S=24,
//! T=8), batch 1: the encoder alone and the whole transformer, in `sequential`, `streams` and
//! `fused` modes, each launched eagerly and replayed from a CUDA graph. Times come from CUDA events
//! around each pass (inputs already on the device); the table gives p50 (p10-p90) over
//! `--reps` passes after `--warmup` passes, nearest-rank percentiles ([`LatencyStats`]). With `--trace-dir DIR` it also writes one
//! Chrome-trace timeline per mode (`DIR/transformer_{mode}.json`, per-stage and per-head spans)
//! and prints how much the head kernels overlap.
//!
//! `--precision f32|tf32|bf16` (default f32) picks the arithmetic of the linear layers and of
//! attention's products (tf32 and bf16: tensor cores); `--precision all` times the three in turn. `--json PATH` also writes every
//! row (part, mode, precision, launch, batch, p50/p10/p90 ms, GFLOP/s, frames/s, fraction of
//! peak) as JSON, for `scripts/perf_table.py` and `scripts/ncu_roofline.py`.
//!
//! `--batch 1,8,32` times each batch size in turn (frames/s = batch / p50), and each row gives
//! the fraction of the card's peak its matrix products reach: the dense tensor-core peak of
//! its precision, the FMA peak for f32 ([`peak_tflops`]). `--modes`, `--parts` and `--launch`
//! narrow what is timed; `--profile` brackets the timed passes (not the set-up or warm-up)
//! with the profiler's start and stop, for `ncu --profile-from-start off`
//! (`scripts/ncu-transformer.sh`).
//!
//! Run: `cargo bench --bench engine -- [--reps N] [--warmup N] [--precision P] [--batch B,..]
//! [--modes M,..] [--parts encoder,transformer] [--launch eager|graph|all] [--profile]
//! [--trace-dir DIR] [--json PATH]`
//! (a plain program, not criterion: p50 of event-timed passes is the figure we report).

#[allow(dead_code)] // each bench uses part of it
mod common;

use std::path::PathBuf;
use std::sync::Arc;

use attnrt::base::LatencyStats;
use attnrt::cswintt::gpu::trace::{chrome_trace, head_overlap};
use attnrt::cswintt::gpu::{GpuEngine, Part};
use attnrt::cswintt::{Mode, Precision, encoder_flops, flops};
use attnrt::gpu::testing::gpu_or_skip;
use attnrt::gpu::{EventTimer, Gpu, Graph, time_ms};
use attnrt::model::Config;
use attnrt::model::synthetic::{Padding, random_inputs, synthetic_weights};
use common::flags::Flags;

struct Options {
    reps: usize,
    warmup: usize,
    trace_dir: Option<PathBuf>,
    json: Option<PathBuf>,
    precisions: Vec<Precision>,
    batches: Vec<usize>,
    modes: Vec<Mode>,
    parts: Vec<Part>,
    launches: Vec<&'static str>,
    profile: bool,
}

fn options() -> Options {
    let mut o = Options {
        reps: 300,
        warmup: 30,
        trace_dir: None,
        json: None,
        precisions: vec![Precision::F32],
        batches: vec![1],
        modes: vec![Mode::Sequential, Mode::Streams, Mode::Fused],
        parts: vec![Part::Encoder, Part::Transformer],
        launches: vec!["eager", "graph"],
        profile: false,
    };
    let mut flags = Flags::new("engine");
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--reps" => o.reps = flags.value("--reps N"),
            "--warmup" => o.warmup = flags.value("--warmup N"),
            "--trace-dir" => o.trace_dir = Some(PathBuf::from(flags.word("--trace-dir DIR"))),
            "--json" => o.json = Some(PathBuf::from(flags.word("--json FILE"))),
            "--precision" => {
                let text = "--precision f32|tf32|bf16|all";
                o.precisions = match flags.word(text).as_str() {
                    "all" => vec![Precision::F32, Precision::Tf32, Precision::Bf16],
                    p => vec![p.parse().unwrap_or_else(|_| flags.usage(text))],
                }
            }
            "--batch" => {
                let text = "--batch N[,N..] (positive sizes)";
                o.batches = flags.list_with(text, |v| v.parse().ok().filter(|&n| n > 0))
            }
            "--modes" => o.modes = flags.list("--modes sequential|streams|fused[,..]"),
            "--parts" => {
                o.parts = flags.list_with("--parts encoder|transformer[,..]", |p| match p {
                    "encoder" => Some(Part::Encoder),
                    "transformer" => Some(Part::Transformer),
                    _ => None,
                })
            }
            "--launch" => {
                let text = "--launch eager|graph|all";
                o.launches = match flags.word(text).as_str() {
                    "all" => vec!["eager", "graph"],
                    "eager" => vec!["eager"],
                    "graph" => vec!["graph"],
                    _ => flags.usage(text),
                }
            }
            "--profile" => o.profile = true,
            _ => {} // cargo bench passes `--bench`
        }
    }
    o
}

/// Dense peak TFLOP/s of the matrix products at `precision` on an H100 SXM or an H200 (the
/// same SMs and clocks): tensor cores for tf32 and bf16, FMAs on the CUDA cores for f32.
fn peak_tflops(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 66.9,
        Precision::Tf32 => 494.7,
        Precision::Bf16 => 989.4,
    }
}

/// Times `pass` `reps` times with events on the main stream, in milliseconds; with
/// `--profile`, only the timed passes run under the profiler.
fn time(gpu: &Gpu, o: &Options, mut pass: impl FnMut() -> attnrt::Result<()>) -> LatencyStats {
    let s = gpu.stream();
    for _ in 0..o.warmup {
        pass().unwrap();
    }
    gpu.sync().unwrap();
    let mut timed =
        || -> attnrt::Result<Vec<f64>> { (0..o.reps).map(|_| time_ms(s, &mut pass)).collect() };
    let ms = if o.profile {
        gpu.profiled(timed)
    } else {
        timed()
    }
    .unwrap();
    LatencyStats::new(&ms).expect("--reps is at least 1")
}

fn main() {
    let o = options();
    let Some(gpu) = gpu_or_skip("engine bench") else {
        return;
    };
    let weights = Arc::new(synthetic_weights(&Config::released(), 2022));
    let rows: Vec<_> = o
        .precisions
        .iter()
        .flat_map(|&precision| bench_precision(&gpu, &o, &weights, precision))
        .collect();
    if let Some(path) = &o.json {
        let mut report = serde_json::json!({
            "device": gpu.describe(),
            "batches": o.batches,
            "reps": o.reps,
            "warmup": o.warmup,
            "rows": rows,
        });
        // One batch keeps the file's older shape (`scripts/perf_table.py` reads `batch`).
        if let [b] = o.batches[..] {
            report["batch"] = b.into();
        }
        std::fs::write(path, format!("{report:#}\n")).unwrap();
    }
}

fn bench_precision(
    gpu: &Arc<Gpu>,
    o: &Options,
    weights: &Arc<attnrt::model::Weights>,
    precision: Precision,
) -> Vec<serde_json::Value> {
    let peak = peak_tflops(precision);
    println!(
        "{}; released size, {precision} linear layers; p50 (p10-p90) over {} passes after {} \
         warm-up; peak {peak} TFLOP/s ({})",
        gpu.describe(),
        o.reps,
        o.warmup,
        if precision == Precision::F32 {
            "FMA"
        } else {
            "dense tensor cores"
        }
    );
    println!(
        "{:<12} {:<12} {:<8} {:>5} {:>24} {:>9} {:>10} {:>7}",
        "part", "mode", "launch", "batch", "ms", "frames/s", "GFLOP/s", "% peak"
    );
    let mut p50 = Vec::new();
    let mut rows = Vec::new();
    for &mode in &o.modes {
        let mut e =
            GpuEngine::with_precision(gpu.clone(), weights.clone(), mode, precision).unwrap();
        for &batch in &o.batches {
            e.load_inputs(&random_inputs(
                &weights.config,
                batch,
                1,
                Padding::None,
                true,
            ))
            .unwrap();
            for &part in &o.parts {
                // GFLOP/s of the matrix products (`cswintt::encoder_flops`, `cswintt::flops`).
                let part_flops = match part {
                    Part::Encoder => encoder_flops(&weights.config, batch),
                    Part::Transformer => flops(&weights.config, batch),
                };
                for &launch in &o.launches {
                    let ms = if launch == "eager" {
                        time(gpu, o, || e.enqueue(part, None))
                    } else {
                        let graph = Graph::capture(gpu.stream(), || e.enqueue(part, None)).unwrap();
                        time(gpu, o, || graph.replay())
                    };
                    let rate = part_flops / (ms.p50 * 1e6);
                    let fps = batch as f64 * 1e3 / ms.p50;
                    let fraction = rate / (peak * 1e3);
                    let part_name = format!("{part:?}").to_lowercase();
                    println!(
                        "{:<12} {:<12} {:<8} {:>5} {:>8.3} ({:.3}-{:.3}) {:>9.0} {:>10.0} {:>6.1}%",
                        part_name,
                        mode.to_string(),
                        launch,
                        batch,
                        ms.p50,
                        ms.p10,
                        ms.p90,
                        fps,
                        rate,
                        fraction * 100.0
                    );
                    p50.push(((part, mode, launch, batch), ms.p50));
                    rows.push(serde_json::json!({
                        "part": part_name,
                        "mode": mode.to_string(),
                        "precision": precision.to_string(),
                        "launch": launch,
                        "batch": batch,
                        "p50_ms": ms.p50,
                        "p10_ms": ms.p10,
                        "p90_ms": ms.p90,
                        "gflops": rate,
                        "frames_per_s": fps,
                        "peak_tflops": peak,
                        "peak_fraction": fraction,
                    }));
                }
            }
        }
        if let Some(dir) = &o.trace_dir {
            let mut timer = EventTimer::start(gpu.stream()).unwrap();
            e.enqueue(Part::Transformer, Some(&mut timer)).unwrap();
            gpu.sync().unwrap();
            let spans = timer.spans().unwrap();
            println!("timeline {mode}: {}", head_overlap(&spans));
            std::fs::create_dir_all(dir).unwrap();
            let path = match precision {
                Precision::F32 => dir.join(format!("transformer_{mode}.json")),
                p => dir.join(format!("transformer_{mode}_{p}.json")),
            };
            std::fs::write(&path, chrome_trace(&spans).to_string()).unwrap();
        }
    }
    for ((part, mode, launch, batch), ms) in &p50 {
        let Some((_, seq)) = p50
            .iter()
            .find(|(k, _)| *k == (*part, Mode::Sequential, *launch, *batch))
        else {
            continue;
        };
        if *mode != Mode::Sequential {
            println!(
                "{part:?} {launch} {precision} batch {batch}: {mode} vs sequential p50 {:+.1}%",
                (ms - seq) / seq * 100.0
            );
        }
    }
    rows
}
