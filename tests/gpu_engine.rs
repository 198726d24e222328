//! The GPU engine, in every dispatch mode (sequential, streams, fused), against the golden
//! files (every `expected.*` tensor) and against the CPU reference at the released size on
//! fresh random inputs. Activations are poisoned (NaN) before every run, so an unwritten
//! element fails. All modes must agree bit for bit, and a CUDA-graph replay must equal the
//! eager run bit for bit. The `*_tf32` / `*_bf16` tests do the same with the linear layers on
//! tensor cores, held to 2e-3 / 2e-2 (golden files, and the CPU at batch 1). Skips without a
//! GPU; `ATTNRT_REQUIRE_GPU=1` makes a missing GPU fail.

use std::sync::Arc;

use attnrt::base::{TensorFile, relative_error};
use attnrt::cswintt::cpu::CpuReference;
use attnrt::cswintt::gpu::trace::head_overlap;
use attnrt::cswintt::gpu::{GPU_F32_TOLERANCE, GpuEngine, Part};
use attnrt::cswintt::{Inputs, Mode, Outputs, Precision, check};
use attnrt::gpu::{EventTimer, Gpu, testing::gpu_or_skip};
use attnrt::model::golden::golden_pair;
use attnrt::model::synthetic::{Padding, random_inputs, synthetic_weights};
use attnrt::model::{Config, Weights};

const MODES: [Mode; 3] = [Mode::Sequential, Mode::Streams, Mode::Fused];

fn engine(gpu: &Arc<Gpu>, weights: &Arc<Weights>, mode: Mode) -> GpuEngine {
    engine_in(gpu, weights, mode, Precision::F32)
}

fn engine_in(
    gpu: &Arc<Gpu>,
    weights: &Arc<Weights>,
    mode: Mode,
    precision: Precision,
) -> GpuEngine {
    let mut e = GpuEngine::with_precision(gpu.clone(), weights.clone(), mode, precision).unwrap();
    assert_eq!(e.precision(), precision);
    e.set_poison(true);
    e
}

/// The relative error each precision is held to (f32: the engine's own 1e-5).
fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => GPU_F32_TOLERANCE,
        p => p.tolerance(),
    }
}

fn bits(o: &Outputs) -> Vec<u32> {
    let mut v: Vec<u32> = o.search_feat.data.iter().map(|x| x.to_bits()).collect();
    v.extend(o.hs.data.iter().map(|x| x.to_bits()));
    v
}

fn check_golden(name: &str) {
    check_golden_in(name, name, Precision::F32);
}

/// Every `expected.*` of golden file `name` in every mode, computing in `precision`; all
/// modes agree bit for bit (they share the GEMMs and differ only in head dispatch).
fn check_golden_in(test: &str, name: &str, precision: Precision) {
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    let tol = tolerance(precision);
    let (wpath, gpath) = golden_pair(name).unwrap();
    let weights = Arc::new(Weights::load(&wpath).unwrap());
    let golden = TensorFile::open(&gpath).unwrap();
    let inputs = Inputs::from_file(&golden, &weights.config).unwrap();
    let mut results = Vec::new();
    for mode in MODES {
        let mut e = engine_in(&gpu, &weights, mode, precision);
        let out = e.run(&inputs, true).unwrap();
        let c = check::compare(&golden, &out, tol).unwrap();
        println!(
            "{name} {mode} {precision}: max relative error over {} tensors {:.3e}",
            c.tensors.len(),
            c.max_rel_err()
        );
        assert_eq!(
            (c.tensors.len(), &c.skipped),
            (15, &vec![]),
            "{name} {mode}: expected.* tensors the engine produced, and those it did not"
        );
        assert!(
            c.passed(),
            "{name} {mode} {precision}: over {tol:e}: {:?}",
            c.failures()
        );
        results.push(out);
    }
    for (mode, other) in MODES.iter().zip(&results).skip(1) {
        assert_eq!(
            bits(&results[0]),
            bits(other),
            "{name}: sequential and {mode} differ"
        );
        for n in results[0].names() {
            let (a, b) = (results[0].get(&n).unwrap(), other.get(&n).unwrap());
            assert!(
                a.data
                    .iter()
                    .zip(&b.data)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: {n} differs between sequential and {mode}"
            );
        }
    }
}

#[test]
fn golden_tiny_s1_all_modes() {
    check_golden("tiny_s1");
}

#[test]
fn golden_tiny_pad_s2_all_modes() {
    check_golden("tiny_pad_s2");
}

#[test]
fn golden_tiny_s1_all_modes_tf32() {
    check_golden_in("golden_tiny_s1_all_modes_tf32", "tiny_s1", Precision::Tf32);
}

#[test]
fn golden_tiny_pad_s2_all_modes_tf32() {
    check_golden_in(
        "golden_tiny_pad_s2_all_modes_tf32",
        "tiny_pad_s2",
        Precision::Tf32,
    );
}

#[test]
fn golden_tiny_s1_all_modes_bf16() {
    check_golden_in("golden_tiny_s1_all_modes_bf16", "tiny_s1", Precision::Bf16);
}

#[test]
fn golden_tiny_pad_s2_all_modes_bf16() {
    check_golden_in(
        "golden_tiny_pad_s2_all_modes_bf16",
        "tiny_pad_s2",
        Precision::Bf16,
    );
}

/// The released size on fresh random inputs: both modes against one CPU reference run.
fn check_released(test: &str, batch: usize, padding: Padding, seed: u64) {
    check_released_in(test, batch, padding, seed, Precision::F32);
}

fn check_released_in(test: &str, batch: usize, padding: Padding, seed: u64, precision: Precision) {
    let cfg = Config::released();
    check_against_cpu(test, &cfg, batch, padding, seed, precision);
}

/// A synthetic model of `cfg` on random inputs, in every mode against the CPU reference; all
/// modes agree bit for bit.
fn check_against_cpu(
    test: &str,
    cfg: &Config,
    batch: usize,
    padding: Padding,
    seed: u64,
    precision: Precision,
) {
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    let tol = tolerance(precision);
    let weights = Arc::new(synthetic_weights(cfg, 100 + seed));
    let inputs = random_inputs(&weights.config, batch, seed, padding, true);
    let want = CpuReference::new(weights.clone())
        .unwrap()
        .forward(&inputs, false)
        .unwrap();
    let mut results = Vec::new();
    for mode in MODES {
        let mut e = engine_in(&gpu, &weights, mode, precision);
        // Twice, so the second run reuses (poisoned) activations.
        e.run(&inputs, false).unwrap();
        let out = e.run(&inputs, false).unwrap();
        for (what, ours, theirs) in [
            ("search_feat", &out.search_feat, &want.search_feat),
            ("hs", &out.hs, &want.hs),
        ] {
            assert_eq!(ours.shape, theirs.shape, "{test} {mode}: {what} shape");
            let err = relative_error(&ours.data, &theirs.data).unwrap();
            println!("{test} {mode} {precision}: {what} relative error vs CPU {err:.3e}");
            assert!(
                err <= tol,
                "{test} {mode} {precision}: {what} {err:.3e} > {tol:e}"
            );
        }
        results.push(out);
    }
    for (mode, other) in MODES.iter().zip(&results).skip(1) {
        assert_eq!(
            bits(&results[0]),
            bits(other),
            "{test}: sequential and {mode} differ"
        );
    }
}

/// Head widths without a specialised kernel (4, an odd 5, 12, 40) run on the GPU in every
/// mode and precision, as on the CPU: the attention pads them to its 16-, 32- or 64-channel
/// variant.
#[test]
fn every_head_width_runs_on_the_gpu() {
    for hd in [4, 5, 12, 40] {
        let cfg = Config {
            d_model: 8 * hd,
            dim_feedforward: 48,
            enc_layers: 1,
            dec_layers: 1,
            search_size: 16,
            ..Config::released()
        };
        for precision in Precision::ALL {
            let test = format!("every_head_width_runs_on_the_gpu (hd {hd}, {precision})");
            check_against_cpu(&test, &cfg, 2, Padding::Borders, hd as u64, precision);
        }
    }
}

#[test]
fn released_size_batch1_unpadded_matches_cpu() {
    check_released(
        "released_size_batch1_unpadded_matches_cpu",
        1,
        Padding::None,
        1,
    );
}

#[test]
fn released_size_batch1_padded_matches_cpu() {
    check_released(
        "released_size_batch1_padded_matches_cpu",
        1,
        Padding::Borders,
        2,
    );
}

#[test]
fn released_size_batch1_unpadded_tf32_matches_cpu() {
    let test = "released_size_batch1_unpadded_tf32_matches_cpu";
    check_released_in(test, 1, Padding::None, 1, Precision::Tf32);
}

#[test]
fn released_size_batch1_padded_tf32_matches_cpu() {
    let test = "released_size_batch1_padded_tf32_matches_cpu";
    check_released_in(test, 1, Padding::Borders, 2, Precision::Tf32);
}

#[test]
fn released_size_batch1_unpadded_bf16_matches_cpu() {
    let test = "released_size_batch1_unpadded_bf16_matches_cpu";
    check_released_in(test, 1, Padding::None, 1, Precision::Bf16);
}

#[test]
fn released_size_batch1_padded_bf16_matches_cpu() {
    let test = "released_size_batch1_padded_bf16_matches_cpu";
    check_released_in(test, 1, Padding::Borders, 2, Precision::Bf16);
}

#[test]
fn released_size_batch4_unpadded_matches_cpu() {
    check_released(
        "released_size_batch4_unpadded_matches_cpu",
        4,
        Padding::None,
        3,
    );
}

#[test]
fn released_size_batch4_padded_matches_cpu() {
    check_released(
        "released_size_batch4_padded_matches_cpu",
        4,
        Padding::Borders,
        4,
    );
}

#[test]
fn batch_size_changes_between_runs() {
    let Some(gpu) = gpu_or_skip("batch_size_changes_between_runs") else {
        return;
    };
    let weights = Arc::new(synthetic_weights(&Config::tiny(), 7));
    let mut e = engine(&gpu, &weights, Mode::Streams);
    let cpu = CpuReference::new(weights.clone()).unwrap();
    for (batch, seed) in [(2, 1), (3, 2), (2, 3)] {
        let inputs = random_inputs(&weights.config, batch, seed, Padding::Borders, false);
        let want = cpu.forward(&inputs, false).unwrap();
        let out = e.run(&inputs, false).unwrap();
        let err = relative_error(&out.hs.data, &want.hs.data).unwrap();
        assert!(err <= GPU_F32_TOLERANCE, "batch {batch}: hs {err:.3e}");
    }
}

/// Graph replay against eager, bit for bit, in every mode: on `inputs[0]` first, then on
/// each further input in turn with the same graph (no re-capture), which proves the replay
/// reads the input buffers rather than values frozen at capture.
fn check_graph_replay(test: &str, weights: &Arc<Weights>, inputs: &[Inputs]) {
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    for mode in MODES {
        let mut eager = engine(&gpu, weights, mode);
        let mut graph = engine(&gpu, weights, mode);
        graph.set_graph(true);
        let mut previous: Option<Vec<u32>> = None;
        for (k, input) in inputs.iter().enumerate() {
            let want = bits(&eager.run(input, false).unwrap());
            let got = bits(&graph.run(input, false).unwrap());
            assert_eq!(got, want, "{test} {mode}: replay {k} differs from eager");
            if let Some(p) = &previous {
                assert_ne!(
                    &got, p,
                    "{test} {mode}: replay {k} repeats the previous outputs"
                );
            }
            previous = Some(got);
        }
        println!("{test} {mode}: {} replays equal eager", inputs.len());
    }
}

#[test]
fn graph_replay_equals_eager_on_golden_inputs() {
    let test = "graph_replay_equals_eager_on_golden_inputs";
    if gpu_or_skip(test).is_none() {
        return;
    }
    for name in ["tiny_s1", "tiny_pad_s2"] {
        let (wpath, gpath) = golden_pair(name).unwrap();
        let weights = Arc::new(Weights::load(&wpath).unwrap());
        let golden = TensorFile::open(&gpath).unwrap();
        let inputs = Inputs::from_file(&golden, &weights.config).unwrap();
        // The golden inputs, then fresh ones of the same batch through the same graph.
        let fresh = random_inputs(&weights.config, inputs.batch, 9, Padding::Borders, false);
        let fresh = Inputs {
            query_embed: inputs.query_embed.clone(),
            ..fresh
        };
        check_graph_replay(&format!("{test} {name}"), &weights, &[inputs, fresh]);
    }
}

#[test]
fn graph_replay_equals_eager_on_random_inputs() {
    let weights = Arc::new(synthetic_weights(&Config::released(), 21));
    let inputs: Vec<Inputs> = [
        (1, Padding::None),
        (2, Padding::Borders),
        (3, Padding::None),
    ]
    .into_iter()
    .map(|(seed, pad)| random_inputs(&weights.config, 2, seed, pad, true))
    .collect();
    check_graph_replay(
        "graph_replay_equals_eager_on_random_inputs",
        &weights,
        &inputs,
    );
}

/// A new batch size reallocates the activations; the graph must be captured again, not
/// replayed on freed buffers.
#[test]
fn graph_recaptures_when_batch_changes() {
    let Some(gpu) = gpu_or_skip("graph_recaptures_when_batch_changes") else {
        return;
    };
    let weights = Arc::new(synthetic_weights(&Config::tiny(), 7));
    let cpu = CpuReference::new(weights.clone()).unwrap();
    for mode in MODES {
        let mut e = engine(&gpu, &weights, mode);
        e.set_graph(true);
        for (batch, seed) in [(2, 1), (3, 2), (2, 3)] {
            let inputs = random_inputs(&weights.config, batch, seed, Padding::Borders, false);
            let want = cpu.forward(&inputs, false).unwrap();
            let out = e.run(&inputs, false).unwrap();
            let err = relative_error(&out.hs.data, &want.hs.data).unwrap();
            assert!(
                err <= GPU_F32_TOLERANCE,
                "{mode} batch {batch}: hs {err:.3e}"
            );
        }
    }
}

/// `fused` launches every head of a layer at once: one attention span per layer, named
/// after all heads, and no per-head spans.
#[test]
fn fused_mode_launches_all_heads_at_once() {
    let Some(gpu) = gpu_or_skip("fused_mode_launches_all_heads_at_once") else {
        return;
    };
    let weights = Arc::new(synthetic_weights(&Config::released(), 11));
    let cfg = weights.config.clone();
    let inputs = random_inputs(&cfg, 1, 5, Padding::None, true);
    let mut e = engine(&gpu, &weights, Mode::Fused);
    let spans = e.trace(&inputs).unwrap();
    let attention: Vec<&str> = spans
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| n.contains("/attention/"))
        .collect();
    let want: Vec<String> = (0..cfg.enc_layers)
        .map(|i| format!("encoder {i}/attention/heads 0-{} fused", cfg.nhead - 1))
        .collect();
    assert_eq!(attention, want);
    assert_eq!(head_overlap(&spans).max_concurrent, 0);
}

/// The timeline evidence: in `streams` mode head kernels overlap; in `sequential` they
/// never do.
#[test]
fn streams_mode_runs_heads_concurrently() {
    let Some(gpu) = gpu_or_skip("streams_mode_runs_heads_concurrently") else {
        return;
    };
    let weights = Arc::new(synthetic_weights(&Config::released(), 11));
    let inputs = random_inputs(&weights.config, 1, 5, Padding::None, true);
    for mode in [Mode::Sequential, Mode::Streams] {
        let mut e = engine(&gpu, &weights, mode);
        e.run(&inputs, false).unwrap(); // warm-up: module loads, allocations
        e.load_inputs(&inputs).unwrap();
        let mut timer = EventTimer::start(gpu.stream()).unwrap();
        e.enqueue(Part::Encoder, Some(&mut timer)).unwrap();
        gpu.sync().unwrap();
        let spans = timer.spans().unwrap();
        let o = head_overlap(&spans);
        println!(
            "{mode}: head spans busy {:.3} ms over {:.3} ms, concurrency {:.2}, at most {} at once",
            o.busy_ms,
            o.union_ms,
            o.concurrency(),
            o.max_concurrent
        );
        match mode {
            Mode::Sequential => assert_eq!(o.max_concurrent, 1),
            _ => assert!(o.max_concurrent >= 2, "{mode}: no head overlap: {o:?}"),
        }
    }
}
