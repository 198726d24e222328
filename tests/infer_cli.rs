//! `attnrt-infer` end to end, through the built binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use attnrt::base::safetensors::{OutTensor, write_file};
use attnrt::base::{Tensor, TensorFile, relative_error};
use attnrt::model::golden::golden_pair;

fn bin() -> Command {
    Command::new(common::bin(
        "attnrt-infer",
        env!("CARGO_BIN_EXE_attnrt-infer"),
    ))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("attnrt-infer runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn golden(name: &str) -> (PathBuf, PathBuf) {
    golden_pair(name).unwrap_or_else(|e| panic!("golden files are required: {e}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn check_passes_on_both_golden_files() {
    for name in ["tiny_s1", "tiny_pad_s2"] {
        let (_, g) = golden(name);
        let o = run(&["--check", s(&g), "--device", "cpu"]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{name}: {out}\n{err}");
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("expected.")).collect();
        assert_eq!(lines.len(), 15, "{out}");
        assert!(
            lines
                .iter()
                .all(|l| l.contains("rel err") && l.ends_with("ok")),
            "{out}"
        );
        assert!(out.contains("PASS"), "{out}");
    }
}

#[test]
fn check_json_and_auto_notice() {
    let (_, g) = golden("tiny_pad_s2");
    // Default device (auto): no GPU engine here, so a one-line notice and the CPU.
    let o = run(&["--check", s(&g), "--json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(j["passed"], true);
    assert!(j["max_rel_err"].as_f64().unwrap() <= j["tolerance"].as_f64().unwrap());
    if j["device"] == "cpu" {
        assert_eq!(j["tensors"].as_array().unwrap().len(), 15);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("running on the CPU"), "{err}");
    }
}

#[test]
fn check_fails_when_a_tensor_is_off() {
    // A copy of tiny_s1's golden file with expected.hs perturbed by 1%.
    let (w, g) = golden("tiny_s1");
    let dir = tempfile::tempdir().unwrap();
    let f = TensorFile::open(&g).unwrap();
    let mut floats: Vec<(String, Tensor)> = Vec::new();
    let mut masks: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for n in f.names() {
        if n.ends_with(".mask") {
            let shape = f.shape(&n).unwrap().to_vec();
            masks.push((n.clone(), shape.clone(), f.mask(&n, &shape).unwrap()));
        } else {
            let mut t = f.f32(&n).unwrap();
            if n == "expected.hs" {
                t.data.iter_mut().for_each(|x| *x *= 1.01);
            }
            floats.push((n, t));
        }
    }
    let mut tensors: Vec<(&str, OutTensor)> =
        floats.iter().map(|(n, t)| (n.as_str(), t.into())).collect();
    tensors.extend(
        masks
            .iter()
            .map(|(n, shape, data)| (n.as_str(), OutTensor::U8 { shape, data })),
    );
    let g2 = dir.path().join("bad.golden.safetensors");
    write_file(&g2, &tensors, &f.metadata()).unwrap();
    std::fs::copy(&w, dir.path().join("bad.weights.safetensors")).unwrap();
    let o = run(&["--check", s(&g2), "--device", "cpu"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    let hs = out.lines().find(|l| l.starts_with("expected.hs ")).unwrap();
    assert!(hs.ends_with("FAIL"), "{hs}");
    assert!(out.contains("FAIL: 15 tensors, 1 over tolerance"), "{out}");
}

#[test]
fn input_and_output_files() {
    let (w, g) = golden("tiny_pad_s2");
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.safetensors");
    let o = run(&[
        "--model",
        s(&w),
        "--input",
        s(&g),
        "--output",
        s(&out_path),
        "--device",
        "cpu",
        "--iters",
        "2",
        "--warmup",
        "0",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("batch 2"), "{out}");
    let got = TensorFile::open(&out_path).unwrap();
    let want = TensorFile::open(&g).unwrap();
    assert_eq!(got.names(), ["hs", "search_feat"]);
    for n in ["hs", "search_feat"] {
        let a = got.f32(n).unwrap();
        let b = want.f32(&format!("expected.{n}")).unwrap();
        assert_eq!(a.shape, b.shape);
        assert!(relative_error(&a.data, &b.data).unwrap() <= 1e-5, "{n}");
    }
}

#[test]
fn golden_weights_with_random_inputs_json() {
    // The golden weights hold no query_embed: random inputs bring one.
    let (w, _) = golden("tiny_s1");
    let o = run(&[
        "--model",
        s(&w),
        "--device",
        "cpu",
        "--batch",
        "3",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--json",
        "--pad",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["batch"], 3);
    assert_eq!(j["iters"], 3);
    assert_eq!(j["config"]["d_model"], 64);
    for p in ["p50", "p90", "p99"] {
        assert!(j["latency_ms"][p].as_f64().unwrap() > 0.0);
    }
    assert!(j["fps"].as_f64().unwrap() > 0.0);
    // --mode is accepted (and ignored) on the CPU.
    let o = run(&[
        "--model",
        s(&w),
        "--device",
        "cpu",
        "--iters",
        "1",
        "--mode",
        "fused",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "the released-size model takes ~40 s unoptimised; run `cargo test --release`"
)]
fn no_arguments_runs_the_default_model() {
    let o = run(&[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("built-in synthetic"), "{out}");
    assert!(out.contains("c=256, 8 heads"), "{out}");
    assert!(out.contains("warmup 2, iters 10"), "{out}");
    assert!(out.contains("latency: p50"), "{out}");
    assert!(out.contains("fps:"), "{out}");
}

fn expect_error(args: &[&str], code: i32, needle: &str) {
    let o = run(args);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {out}\n{err}");
    assert!(
        err.contains(needle),
        "{args:?}: stderr lacks '{needle}': {err}"
    );
}

#[test]
fn bad_flags_and_files() {
    let (w, g) = golden("tiny_s1");
    let (w, g) = (s(&w), s(&g));
    // Parse errors (clap): exit 2.
    expect_error(
        &["--device", "gpu7"],
        2,
        "not one of auto, cpu, cuda, cuda:N",
    );
    expect_error(
        &["--mode", "warp"],
        2,
        "not one of sequential, streams, fused",
    );
    expect_error(&["--precision", "fp8"], 2, "not one of f32, tf32, bf16");
    expect_error(&["--batch", "many"], 2, "invalid value");
    expect_error(&["--frobnicate"], 2, "unexpected argument");
    expect_error(&["--check", g, "--input", g], 2, "cannot be used with");
    // Library errors: exit 2 with a message naming the flag or file.
    expect_error(
        &["--model", w, "--batch", "0", "--device", "cpu"],
        2,
        "--batch",
    );
    expect_error(
        &["--model", w, "--device", "cpu", "--precision", "bf16"],
        2,
        "bf16 is GPU-only",
    );
    // An ordinal no machine has, so this holds with and without a GPU.
    expect_error(&["--model", w, "--device", "cuda:4096"], 2, "no usable GPU");
    expect_error(
        &["--model", "/no/such/model.safetensors"],
        2,
        "/no/such/model.safetensors",
    );
    expect_error(
        &["--model", g, "--device", "cpu"],
        2,
        "transformer.post_norm.weight",
    );
    expect_error(
        &[
            "--model",
            w,
            "--input",
            "/no/such/in.safetensors",
            "--device",
            "cpu",
        ],
        2,
        "/no/such/in.safetensors",
    );
    expect_error(
        &[
            "--model", w, "--input", g, "--batch", "2", "--device", "cpu",
        ],
        2,
        "--batch",
    );
    // A golden file that does not exist.
    expect_error(
        &[
            "--model",
            w,
            "--check",
            "/no/such/x.golden.safetensors",
            "--device",
            "cpu",
        ],
        2,
        "/no/such/x.golden.safetensors",
    );
}

#[test]
fn help_explains_each_flag() {
    let o = run(&["--help"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    for flag in [
        "--model",
        "--device",
        "--batch",
        "--input",
        "--output",
        "--check",
        "--iters",
        "--warmup",
        "--json",
        "--mode",
        "--precision",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn check_passes_with_every_cpu_kernel() {
    // The portable and AVX2 paths (AVX-512 is the default where the CPU has it).
    let (_, g) = golden("tiny_pad_s2");
    for simd in ["portable", "avx2"] {
        let o = bin()
            .args(["--check", s(&g), "--device", "cpu"])
            .env("ATTNRT_CPU_SIMD", simd)
            .output()
            .unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "{simd}: {out}\n{err}");
        assert!(out.contains("PASS"), "{simd}: {out}");
    }
}
