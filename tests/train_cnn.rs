//! The torchvision CNNs on the CPU: one training step against the shared train-step golden
//! file (PyTorch in f64), and `attnrt-train --check` / `--describe`.

use std::path::PathBuf;

use attnrt::train::models::cnn::golden;

fn golden_file(name: &str) -> PathBuf {
    attnrt::model::golden::golden_dir()
        .expect("the golden directory")
        .join("train")
        .join(name)
}

#[test]
fn one_shufflenet_step_matches_pytorch_in_f64() {
    let report = golden::check(&golden_file("shufflenet_s1.golden.safetensors")).unwrap();
    for f in &report.families {
        println!("{}: {:.3e} (tolerance {:.1e}) {}", f.name, f.error, f.tolerance, f.what);
    }
    assert_eq!(report.families.len(), 5);
    assert!(report.passed(), "{report:?}");
}
