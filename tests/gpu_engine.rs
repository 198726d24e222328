//! The GPU engine, in both dispatch modes, against the golden files (every `expected.*`
//! tensor) and against the CPU reference at the released size on fresh random inputs.
//! Activations are poisoned (NaN) before every run, so an unwritten element fails. Both
//! modes must agree bit for bit. Skips without a GPU; `ATTNRT_REQUIRE_GPU=1` makes a
//! missing GPU fail.

use std::sync::Arc;

use attnrt::cswintt::cpu::CpuReference;
use attnrt::cswintt::gpu::trace::head_overlap;
use attnrt::cswintt::gpu::{GPU_F32_TOLERANCE, GpuEngine, Part};
use attnrt::cswintt::{EXPECTED_PREFIX, Inputs, Mode, Outputs};
use attnrt::gpu::{EventTimer, Gpu, testing::gpu_or_skip};
use attnrt::model::golden::golden_pair;
use attnrt::model::synthetic::{Padding, random_inputs, synthetic_weights};
use attnrt::model::{Config, TensorFile, Weights, relative_error};

const MODES: [Mode; 2] = [Mode::Sequential, Mode::Streams];

fn engine(gpu: &Arc<Gpu>, weights: &Arc<Weights>, mode: Mode) -> GpuEngine {
    let mut e = GpuEngine::new(gpu.clone(), weights.clone(), mode).unwrap();
    e.set_poison(true);
    e
}

fn bits(o: &Outputs) -> Vec<u32> {
    let mut v: Vec<u32> = o.search_feat.data.iter().map(|x| x.to_bits()).collect();
    v.extend(o.hs.data.iter().map(|x| x.to_bits()));
    v
}

fn check_golden(name: &str) {
    let Some(gpu) = gpu_or_skip(name) else {
        return;
    };
    let (wpath, gpath) = golden_pair(name).unwrap();
    let weights = Arc::new(Weights::load(&wpath).unwrap());
    let golden = TensorFile::open(&gpath).unwrap();
    let inputs = Inputs::from_file(&golden, &weights.config).unwrap();
    let expected: Vec<String> = golden
        .names()
        .into_iter()
        .filter(|n| n.starts_with(EXPECTED_PREFIX))
        .collect();
    assert_eq!(expected.len(), 15, "{name}: expected.* tensors");
    let mut results = Vec::new();
    for mode in MODES {
        let mut e = engine(&gpu, &weights, mode);
        let out = e.run(&inputs, true).unwrap();
        let mut worst = 0.0f64;
        let mut failures = Vec::new();
        for n in &expected {
            let want = golden.f32(n).unwrap();
            let ours = out
                .get(n)
                .unwrap_or_else(|| panic!("{name} {mode}: the engine does not produce {n}"));
            assert_eq!(ours.shape, want.shape, "{name} {mode}: {n} shape");
            let err = relative_error(&ours.data, &want.data).unwrap();
            worst = worst.max(err);
            if err > GPU_F32_TOLERANCE {
                failures.push(format!("{n}: {err:.3e}"));
            }
        }
        println!(
            "{name} {mode}: max relative error over {} tensors {worst:.3e}",
            expected.len()
        );
        assert!(
            failures.is_empty(),
            "{name} {mode}: over 1e-5: {failures:?}"
        );
        results.push(out);
    }
    assert_eq!(
        bits(&results[0]),
        bits(&results[1]),
        "{name}: sequential and streams differ"
    );
    for n in &expected {
        let (a, b) = (results[0].get(n).unwrap(), results[1].get(n).unwrap());
        assert!(
            a.data
                .iter()
                .zip(&b.data)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}: {n} differs between modes"
        );
    }
}

#[test]
fn golden_tiny_s1_both_modes() {
    check_golden("tiny_s1");
}

#[test]
fn golden_tiny_pad_s2_both_modes() {
    check_golden("tiny_pad_s2");
}

/// The released size on fresh random inputs: both modes against one CPU reference run.
fn check_released(test: &str, batch: usize, padding: Padding, seed: u64) {
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    let weights = Arc::new(synthetic_weights(&Config::released(), 100 + seed));
    let inputs = random_inputs(&weights.config, batch, seed, padding, true);
    let want = CpuReference::new(weights.clone())
        .unwrap()
        .forward(&inputs, false)
        .unwrap();
    let mut results = Vec::new();
    for mode in MODES {
        let mut e = engine(&gpu, &weights, mode);
        // Twice, so the second run reuses (poisoned) activations.
        e.run(&inputs, false).unwrap();
        let out = e.run(&inputs, false).unwrap();
        for (what, ours, theirs) in [
            ("search_feat", &out.search_feat, &want.search_feat),
            ("hs", &out.hs, &want.hs),
        ] {
            assert_eq!(ours.shape, theirs.shape, "{test} {mode}: {what} shape");
            let err = relative_error(&ours.data, &theirs.data).unwrap();
            println!("{test} {mode}: {what} relative error vs CPU {err:.3e}");
            assert!(err <= GPU_F32_TOLERANCE, "{test} {mode}: {what} {err:.3e}");
        }
        results.push(out);
    }
    assert_eq!(bits(&results[0]), bits(&results[1]), "{test}: modes differ");
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

/// The timeline evidence: in `streams` mode head kernels overlap; in `sequential` they
/// never do.
#[test]
fn streams_mode_runs_heads_concurrently() {
    let Some(gpu) = gpu_or_skip("streams_mode_runs_heads_concurrently") else {
        return;
    };
    let weights = Arc::new(synthetic_weights(&Config::released(), 11));
    let inputs = random_inputs(&weights.config, 1, 5, Padding::None, true);
    for mode in MODES {
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
