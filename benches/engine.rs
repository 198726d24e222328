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
//! row (part, mode, precision, launch, p50/p10/p90 ms, GFLOP/s) as JSON, for
//! `scripts/perf_table.py`.
//!
//! Run: `cargo bench --bench engine -- [--reps N] [--warmup N] [--precision P] [--trace-dir DIR]
//! [--json PATH]`
//! (a plain program, not criterion: p50 of event-timed passes is the figure we report).

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

struct Options {
    reps: usize,
    warmup: usize,
    trace_dir: Option<PathBuf>,
    json: Option<PathBuf>,
    precisions: Vec<Precision>,
}

fn options() -> Options {
    let mut o = Options {
        reps: 300,
        warmup: 30,
        trace_dir: None,
        json: None,
        precisions: vec![Precision::F32],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--reps" => o.reps = value().parse().expect("--reps N"),
            "--warmup" => o.warmup = value().parse().expect("--warmup N"),
            "--trace-dir" => o.trace_dir = Some(PathBuf::from(value())),
            "--json" => o.json = Some(PathBuf::from(value())),
            "--precision" => {
                o.precisions = match value().as_str() {
                    "all" => vec![Precision::F32, Precision::Tf32, Precision::Bf16],
                    p => vec![p.parse().expect("--precision f32|tf32|bf16|all")],
                }
            }
            _ => {} // cargo bench passes `--bench`
        }
    }
    o
}

/// Times `pass` `reps` times with events on the main stream, in milliseconds.
fn time(gpu: &Gpu, o: &Options, mut pass: impl FnMut() -> attnrt::Result<()>) -> LatencyStats {
    let s = gpu.stream();
    for _ in 0..o.warmup {
        pass().unwrap();
    }
    gpu.sync().unwrap();
    let ms: Vec<f64> = (0..o.reps)
        .map(|_| time_ms(s, &mut pass).unwrap())
        .collect();
    LatencyStats::new(&ms).expect("--reps is at least 1")
}

fn main() {
    let o = options();
    let Some(gpu) = gpu_or_skip("engine bench") else {
        return;
    };
    let weights = Arc::new(synthetic_weights(&Config::released(), 2022));
    let inputs = random_inputs(&weights.config, 1, 1, Padding::None, true);
    let rows: Vec<_> = o
        .precisions
        .iter()
        .flat_map(|&precision| bench_precision(&gpu, &o, &weights, &inputs, precision))
        .collect();
    if let Some(path) = &o.json {
        let report = serde_json::json!({
            "device": gpu.describe(),
            "batch": 1,
            "reps": o.reps,
            "warmup": o.warmup,
            "rows": rows,
        });
        std::fs::write(path, format!("{report:#}\n")).unwrap();
    }
}

fn bench_precision(
    gpu: &Arc<Gpu>,
    o: &Options,
    weights: &Arc<attnrt::model::Weights>,
    inputs: &attnrt::cswintt::Inputs,
    precision: Precision,
) -> Vec<serde_json::Value> {
    println!(
        "{}; released size, batch 1, {precision} linear layers; p50 (p10-p90) over {} passes \
         after {} warm-up",
        gpu.describe(),
        o.reps,
        o.warmup
    );
    println!(
        "{:<12} {:<12} {:<8} {:>24} {:>10}",
        "part", "mode", "launch", "ms", "GFLOP/s"
    );
    let mut p50 = Vec::new();
    let mut rows = Vec::new();
    for mode in [Mode::Sequential, Mode::Streams, Mode::Fused] {
        let mut e =
            GpuEngine::with_precision(gpu.clone(), weights.clone(), mode, precision).unwrap();
        e.load_inputs(inputs).unwrap();
        for part in [Part::Encoder, Part::Transformer] {
            // GFLOP/s of the matrix products (`cswintt::encoder_flops`, `cswintt::flops`).
            let part_flops = match part {
                Part::Encoder => encoder_flops(&weights.config, 1),
                Part::Transformer => flops(&weights.config, 1),
            };
            let eager = time(gpu, o, || e.enqueue(part, None));
            let graph = Graph::capture(gpu.stream(), || e.enqueue(part, None)).unwrap();
            let replay = time(gpu, o, || graph.replay());
            for (launch, ms) in [("eager", &eager), ("graph", &replay)] {
                let rate = part_flops / (ms.p50 * 1e6);
                println!(
                    "{:<12} {:<12} {:<8} {:>8.3} ({:.3}-{:.3}) {:>10}",
                    format!("{part:?}").to_lowercase(),
                    mode.to_string(),
                    launch,
                    ms.p50,
                    ms.p10,
                    ms.p90,
                    format!("{rate:.0}")
                );
                p50.push(((part, mode, launch), ms.p50));
                rows.push(serde_json::json!({
                    "part": format!("{part:?}").to_lowercase(),
                    "mode": mode.to_string(),
                    "precision": precision.to_string(),
                    "launch": launch,
                    "p50_ms": ms.p50,
                    "p10_ms": ms.p10,
                    "p90_ms": ms.p90,
                    "gflops": rate,
                }));
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
    for part in [Part::Encoder, Part::Transformer] {
        for launch in ["eager", "graph"] {
            let get = |mode| {
                p50.iter()
                    .find(|(k, _)| *k == (part, mode, launch))
                    .map_or(f64::NAN, |(_, v)| *v)
            };
            let seq = get(Mode::Sequential);
            for mode in [Mode::Streams, Mode::Fused] {
                println!(
                    "{part:?} {launch} {precision}: {mode} vs sequential p50 {:+.1}%",
                    (get(mode) - seq) / seq * 100.0
                );
            }
        }
    }
    rows
}
