//! `attnrt-infer` on the GPU: `--device cuda --check GOLDEN` passes on both golden files in
//! both dispatch modes, and the default model runs in `streams` mode. The binary is taken
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

#[test]
fn check_passes_on_every_golden_file_in_both_modes() {
    if gpu_or_skip("check_passes_on_every_golden_file_in_both_modes").is_none() {
        return;
    }
    for name in GOLDEN_NAMES {
        let (_, golden) = golden_pair(name).unwrap();
        for mode in ["sequential", "streams"] {
            let text = run_ok(
                infer()
                    .args(["--device", "cuda", "--mode", mode, "--check"])
                    .arg(&golden),
            );
            println!("{name} {mode}:\n{text}");
        }
    }
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
