//! Criterion benches of the GPU engine at the released size (c=256, 8 heads, ff=2048, 6+6
//! layers, 704 tokens), batch 1, no padding: the encoder alone and the whole transformer, for
//! every head dispatch mode (`sequential`, `streams`, `fused`), precision of the linear layers
//! (`f32`, `tf32`, `bf16`) and launch (`eager`, or replaying a CUDA `graph` of the same
//! launches). Bench ids: `{encoder|transformer}/{mode}/{precision}/{eager|graph}`.
//!
//! Timing: `iter_custom` with CUDA events, each pass between its own pair of events and waited
//! for before the next: per-pass latency on the GPU's clock, as `benches/engine.rs` and
//! `scripts/torch_reference.py` measure it (inputs already on the device). Throughput is the
//! matrix products' FLOPs per pass (`cswintt::encoder_flops`, `cswintt::flops`), so criterion's
//! "elem/s" reads as FLOP/s.
//!
//! Without a usable GPU or compiled kernels it prints one line saying why and exits 0
//! (with `ATTNRT_REQUIRE_GPU=1` it fails instead).
//!
//! Run: `cargo bench --bench encoder [-- FILTER] [--warm-up-time S] [--measurement-time S]`.

#[allow(dead_code)] // each bench uses part of it
mod common;

use std::sync::Arc;
use std::time::Duration;

use attnrt::cswintt::gpu::{GpuEngine, Part};
use attnrt::cswintt::{Inputs, Mode, Precision, encoder_flops, flops};
use attnrt::gpu::testing::gpu_or_skip;
use attnrt::gpu::{Gpu, Graph, time_ms};
use attnrt::model::Weights;
use attnrt::model::synthetic::{Padding, random_inputs};
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, measurement::WallTime};

const MODES: [Mode; 3] = [Mode::Sequential, Mode::Streams, Mode::Fused];
const PRECISIONS: [Precision; 3] = [Precision::F32, Precision::Tf32, Precision::Bf16];

fn main() {
    let Some(gpu) = gpu_or_skip("encoder bench") else {
        return;
    };
    let weights = Arc::new(common::released_weights());
    let inputs = random_inputs(&weights.config, 1, 1, Padding::None, true);
    let mut c = common::criterion();
    for part in [Part::Encoder, Part::Transformer] {
        bench_part(&mut c, &gpu, &weights, &inputs, part);
    }
    c.final_summary();
}

/// One group per part: every mode x precision x launch.
fn bench_part(
    c: &mut Criterion,
    gpu: &Arc<Gpu>,
    weights: &Arc<Weights>,
    inputs: &Inputs,
    part: Part,
) {
    let (name, ops) = match part {
        Part::Encoder => ("encoder", encoder_flops(&weights.config, 1)),
        Part::Transformer => ("transformer", flops(&weights.config, 1)),
    };
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(ops as u64));
    for mode in MODES {
        for precision in PRECISIONS {
            let mut engine =
                GpuEngine::with_precision(gpu.clone(), weights.clone(), mode, precision)
                    .expect("building the engine");
            engine.load_inputs(inputs).expect("uploading the inputs");
            let id = |launch| BenchmarkId::new(format!("{mode}/{precision}"), launch);
            bench_passes(&mut group, id("eager"), gpu, || engine.enqueue(part, None));
            let graph = Graph::capture(gpu.stream(), || engine.enqueue(part, None))
                .expect("capturing the pass in a CUDA graph");
            bench_passes(&mut group, id("graph"), gpu, || graph.replay());
        }
    }
    group.finish();
}

/// Benches `pass` (work queued on the main stream) as `id`, timing each pass with CUDA events.
fn bench_passes(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    gpu: &Gpu,
    mut pass: impl FnMut() -> attnrt::Result<()>,
) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let ms: f64 = (0..iters)
                .map(|_| time_ms(gpu.stream(), &mut pass).expect("a timed pass"))
                .sum();
            Duration::from_secs_f64(ms / 1e3)
        })
    });
}
