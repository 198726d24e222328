//! `attnrt-infer` on the GPU: `--device cuda --check GOLDEN` passes on both golden files in
//! every dispatch mode, eager and with `--graph`, and with `--precision tf32|bf16`; the default model runs in `streams` and
//! `fused` mode and reports GFLOP/s; `--trace FILE` writes a Chrome trace with every head. The binary is taken
//! from `ATTNRT_BIN_DIR` when set (staged binaries on the device machine), else cargo's.
//! Skips without a GPU; `ATTNRT_REQUIRE_GPU=1` makes a missing GPU fail.

use std::process::Command;

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::model::golden::{GOLDEN_NAMES, golden_pair};

mod common;

fn infer() -> Command {
    Command::new(common::bin(
        "attnrt-infer",
        env!("CARGO_BIN_EXE_attnrt-infer"),
    ))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("attnrt-infer runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

const MODES: [&str; 3] = ["sequential", "streams", "fused"];

#[test]
fn check_passes_on_every_golden_file_in_every_mode() {
    if gpu_or_skip("check_passes_on_every_golden_file_in_every_mode").is_none() {
        return;
    }
    for name in GOLDEN_NAMES {
        let (_, golden) = golden_pair(name).unwrap();
        for mode in MODES {
            for graph in [false, true] {
                let mut cmd = infer();
                cmd.args(["--device", "cuda", "--mode", mode, "--check"])
                    .arg(&golden);
                if graph {
                    cmd.arg("--graph");
                }
                let text = run_ok(&mut cmd);
                assert!(text.contains("PASS"), "{text}");
                println!("{name} {mode} graph {graph}:\n{text}");
            }
        }
    }
}

/// `--precision P --check GOLDEN` on every golden file, eager and with `--graph` (fused).
fn check_passes_in(test: &str, precision: &str) {
    if gpu_or_skip(test).is_none() {
        return;
    }
    for name in GOLDEN_NAMES {
        let (_, golden) = golden_pair(name).unwrap();
        for (mode, graph) in [("sequential", false), ("fused", true)] {
            let mut cmd = infer();
            cmd.args(["--device", "cuda", "--precision", precision, "--mode", mode])
                .arg("--check")
                .arg(&golden);
            if graph {
                cmd.arg("--graph");
            }
            let text = run_ok(&mut cmd);
            assert!(text.contains("PASS"), "{text}");
            println!("{name} {precision} {mode} graph {graph}:\n{text}");
        }
    }
}

#[test]
fn check_passes_on_every_golden_file_tf32() {
    check_passes_in("check_passes_on_every_golden_file_tf32", "tf32");
}

#[test]
fn check_passes_on_every_golden_file_bf16() {
    check_passes_in("check_passes_on_every_golden_file_bf16", "bf16");
}

#[test]
fn default_model_runs_fused_with_graph_and_reports_gflops() {
    if gpu_or_skip("default_model_runs_fused_with_graph_and_reports_gflops").is_none() {
        return;
    }
    let text = run_ok(infer().args([
        "--device", "cuda", "--mode", "fused", "--graph", "--iters", "5",
    ]));
    assert!(text.contains("heads fused, CUDA graph"), "{text}");
    assert!(text.contains("GFLOP/s"), "{text}");
    println!("{text}");
}

/// `--trace FILE`: valid JSON, one complete event per head per encoder layer (per fused
/// launch in `fused` mode), and the head-overlap line.
#[test]
fn trace_writes_chrome_json_with_every_head() {
    if gpu_or_skip("trace_writes_chrome_json_with_every_head").is_none() {
        return;
    }
    let (layers, heads) = (6, 8); // the default (released-size) model
    let dir = std::env::temp_dir().join(format!("attnrt-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for mode in MODES {
        let path = dir.join(format!("{mode}.json"));
        let text = run_ok(
            infer()
                .args([
                    "--device", "cuda", "--mode", mode, "--iters", "1", "--trace",
                ])
                .arg(&path),
        );
        assert!(text.contains("heads:"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let names: Vec<&str> = json["traceEvents"]
            .as_array()
            .expect("traceEvents")
            .iter()
            .map(|e| {
                assert_eq!(e["ph"], "X");
                assert!(e["dur"].as_f64().unwrap() >= 0.0);
                e["name"].as_str().unwrap()
            })
            .collect();
        for i in 0..layers {
            let want: Vec<String> = match mode {
                "fused" => vec![format!("encoder {i}/attention/heads 0-{} fused", heads - 1)],
                _ => (0..heads)
                    .map(|h| format!("encoder {i}/attention/head {h}"))
                    .collect(),
            };
            for w in want {
                assert!(names.contains(&w.as_str()), "{mode}: no span {w}");
            }
        }
        println!("{mode}: {} spans\n{text}", names.len());
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn default_model_runs_in_streams_mode() {
    if gpu_or_skip("default_model_runs_in_streams_mode").is_none() {
        return;
    }
    let text = run_ok(infer().args(["--device", "cuda", "--mode", "streams", "--iters", "3"]));
    assert!(text.contains("cuda:0"), "{text}");
    println!("{text}");
}
