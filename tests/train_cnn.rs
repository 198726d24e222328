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
        println!(
            "{}: {:.3e} (tolerance {:.1e}) {}",
            f.name, f.error, f.tolerance, f.what
        );
    }
    assert_eq!(report.families.len(), 5);
    assert!(report.passed(), "{report:?}");
}

mod common;

use std::process::Command;

fn train() -> Command {
    Command::new(common::bin(
        "attnrt-train",
        env!("CARGO_BIN_EXE_attnrt-train"),
    ))
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("running attnrt-train");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_prints_one_line_per_family_and_refuses_the_gpu_for_now() {
    let golden = golden_file("shufflenet_s1.golden.safetensors");
    let (code, text) = run(train().arg("--check").arg(&golden).args(["--gpus", "cpu"]));
    assert_eq!(code, 0, "{text}");
    for family in ["logits", "loss", "grad_norm", "grad", "buffer"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(family) && l.contains(" ok ")),
            "{family}: {text}"
        );
    }
    let (code, text) = run(train().arg("--check").arg(&golden).args(["--gpus", "0"]));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("the CNN GPU path is not built yet"), "{text}");
}

/// A golden file with one tensor renamed (same length, so the header stays valid) and one
/// that is not a golden file: errors name the file and the tensor or field.
#[test]
fn bad_golden_files_are_errors_naming_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(golden_file("shufflenet_s1.golden.safetensors")).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let text = String::from_utf8(bytes[8..8 + header].to_vec()).unwrap();
    let renamed = text.replace("\"weights.fc.bias\"", "\"weights.fc.biaz\"");
    assert_ne!(renamed, text);
    let mut out = bytes[..8].to_vec();
    out.extend(renamed.as_bytes());
    out.extend(&bytes[8 + header..]);
    let bad = dir.path().join("renamed.safetensors");
    std::fs::write(&bad, out).unwrap();
    let e = golden::check(&bad).unwrap_err().to_string();
    assert!(
        e.contains("renamed.safetensors") && e.contains("weights.fc.bias"),
        "{e}"
    );

    let (code, text) = run(train().arg("--check").arg(&bad));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("weights.fc.bias"), "{text}");

    let other = golden_file("../tiny_s1.golden.safetensors");
    let e = golden::check(&other).unwrap_err().to_string();
    assert!(
        e.contains("tiny_s1.golden.safetensors: metadata 'format'"),
        "{e}"
    );
}

#[test]
fn describe_prints_layers_parameters_and_flops() {
    let (code, text) =
        run(train().args(["--describe", "resnet50", "--classes", "10", "--size", "32"]));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("layer4.2.conv3") && text.contains("parameters: 23528522"),
        "{text}"
    );
    assert!(text.contains("FLOPs per sample: "), "{text}");
    let (code, text) = run(train().args(["--describe", "alexnet", "--size", "62"]));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("62x62") && text.contains("63x63 or more"),
        "{text}"
    );
    let (code, text) = run(train().args(["--describe", "vgg16"]));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("'vgg16' is not one of resnet50"), "{text}");
}
