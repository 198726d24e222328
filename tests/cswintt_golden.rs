//! The CPU reference against both shared golden files: every `expected.*` tensor (per
//! head, per layer and final) to relative error <= 1e-5, where relative error is
//! `||ours - expected||_F / ||expected||_F`.

use std::sync::Arc;

use attnrt::cswintt::cpu::CpuReference;
use attnrt::cswintt::{CPU_F32_TOLERANCE, EXPECTED_PREFIX, Inputs};
use attnrt::model::golden::golden_pair;
use attnrt::model::{TensorFile, Weights, relative_error};

fn check(name: &str) {
    let (wpath, gpath) = golden_pair(name)
        .unwrap_or_else(|e| panic!("golden files are required for the CPU tests: {e}"));
    let weights = Arc::new(Weights::load(&wpath).expect("weights load"));
    let golden = TensorFile::open(&gpath).expect("golden file");
    let inputs = Inputs::from_file(&golden, &weights.config).expect("inputs");
    let cpu = CpuReference::new(weights).unwrap();
    let out = cpu.forward(&inputs, true).unwrap();
    let expected: Vec<String> = golden
        .names()
        .into_iter()
        .filter(|n| n.starts_with(EXPECTED_PREFIX))
        .collect();
    assert_eq!(
        expected.len(),
        15,
        "{name}: expected.* tensors in the golden file"
    );
    let mut worst = 0.0f64;
    let mut failures = Vec::new();
    for n in &expected {
        let want = golden.f32(n).unwrap();
        let ours = out
            .get(n)
            .unwrap_or_else(|| panic!("{name}: the CPU reference does not produce {n}"));
        assert_eq!(ours.shape, want.shape, "{name}: {n} shape");
        let err = relative_error(&ours.data, &want.data).unwrap();
        eprintln!("{name}: {n:<36} rel err {err:.3e}");
        worst = worst.max(err);
        if err > CPU_F32_TOLERANCE {
            failures.push(format!("{n}: {err:.3e}"));
        }
    }
    eprintln!("{name}: max rel err {worst:.3e}");
    assert!(failures.is_empty(), "{name}: over 1e-5: {failures:?}");
}

#[test]
fn golden_tiny_s1() {
    check("tiny_s1");
}

#[test]
fn golden_tiny_pad_s2() {
    check("tiny_pad_s2");
}
