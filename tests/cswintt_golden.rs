//! The CPU reference against both shared golden files: every `expected.*` tensor (per
//! head, per layer and final) to relative error <= 1e-5, where relative error is
//! `||ours - expected||_F / ||expected||_F`.

use std::sync::Arc;

use attnrt::base::TensorFile;
use attnrt::cswintt::cpu::CpuReference;
use attnrt::cswintt::{CPU_F32_TOLERANCE, Inputs, check};
use attnrt::model::Weights;
use attnrt::model::golden::golden_pair;

fn check(name: &str) {
    let (wpath, gpath) = golden_pair(name)
        .unwrap_or_else(|e| panic!("golden files are required for the CPU tests: {e}"));
    let weights = Arc::new(Weights::load(&wpath).expect("weights load"));
    let golden = TensorFile::open(&gpath).expect("golden file");
    let inputs = Inputs::from_file(&golden, &weights.config).expect("inputs");
    let cpu = CpuReference::new(weights).unwrap();
    let out = cpu.forward(&inputs, true).unwrap();
    let c = check::compare(&golden, &out, CPU_F32_TOLERANCE).unwrap();
    for t in &c.tensors {
        eprintln!("{name}: {:<36} rel err {:.3e}", t.name, t.rel_err);
    }
    eprintln!("{name}: max rel err {:.3e}", c.max_rel_err());
    assert_eq!(
        (c.tensors.len(), &c.skipped),
        (15, &vec![]),
        "{name}: expected.* tensors the CPU reference produced, and those it did not"
    );
    assert!(c.passed(), "{name}: over 1e-5: {:?}", c.failures());
}

#[test]
fn golden_tiny_s1() {
    check("tiny_s1");
}

#[test]
fn golden_tiny_pad_s2() {
    check("tiny_pad_s2");
}
