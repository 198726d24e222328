//! The multi-job soak test: 20 jobs on the CPU rehearsal of a four-device machine
//! (`--gpus cpu:4`) for a little over two minutes (arrivals spread over the first 114 s), with
//! faults injected into a seeded random choice of them (`ATTNRT_FAULT`): processes killed,
//! hangs, NaN losses and out-of-memory errors at random steps. Every job that was not hit
//! must finish with its report and its final checkpoint; every hit job must be reported
//! failed with what hit it, at the step before it; the manager must end by itself.
//!
//! CPU only: what it checks (the manager and the job processes) is the same on GPUs, and the
//! GPU multi-job paths have their own tests.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use attnrt::multijob::supervisor::job_checkpoint_dir;
use attnrt::sched::report::Report;
use attnrt::train::{checkpoint, fault};
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

const JOBS: usize = 20;
/// Seconds between arrivals: the last job arrives 114 s in.
const ARRIVAL_GAP_S: f64 = 6.0;

fn binary() -> PathBuf {
    common::bin("attnrt-train", env!("CARGO_BIN_EXE_attnrt-train"))
}

/// What each fault kind must leave in the report's error.
fn says(kind: &str) -> &'static str {
    match kind {
        "kill" => "SIGKILL",
        "hang" => "hung: no step for",
        "nan" => "the loss is NaN",
        "oom" => "out of GPU memory",
        _ => unreachable!(),
    }
}

#[test]
fn twenty_jobs_with_kills_hangs_and_nan_losses() {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("[manager]\npolicy = \"thesis\"\nperiod_s = 0.5\n\n");
    let mut iterations = Vec::new();
    for k in 0..JOBS {
        // A few seconds of work alone (about 3 ms a step here).
        let n: u64 = rng.random_range(800..1600);
        iterations.push(n);
        text += &format!(
            "[[job]]\nname = \"j{k:02}\"\nmodel = \"mlp:32\"\ndataset = \"synthetic:2000\"\n\
             batch_size = 32\niterations = {n}\narrival_s = {}\n\
             [job.sim]\nsample_ms = 0.1\n\n",
            k as f64 * ARRIVAL_GAP_S
        );
    }
    let jobs = dir.path().join("jobs.toml");
    std::fs::write(&jobs, text).unwrap();

    // Eight of the twenty are hit, two by each kind, each at a random step of its first half.
    let mut order: Vec<usize> = (0..JOBS).collect();
    order.shuffle(&mut rng);
    let kinds = ["kill", "hang", "nan", "oom"];
    let hit: BTreeMap<usize, (&str, u64)> = order[..8]
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, (kinds[i % 4], rng.random_range(5..iterations[k] / 2))))
        .collect();
    let faults: Vec<String> = hit
        .iter()
        .map(|(k, (kind, step))| format!("j{k:02}={kind}@{step}"))
        .collect();

    let (ckpt, rep) = (dir.path().join("ckpt"), dir.path().join("r.json"));
    let started = Instant::now();
    let out = Command::new(binary())
        .arg("--jobs")
        .arg(&jobs)
        .args(["--gpus", "cpu:4", "--no-calibrate", "--hang-periods", "20"])
        .args(["--checkpoint-every", "200", "--checkpoint-dir"])
        .arg(&ckpt)
        .arg("--report")
        .arg(&rep)
        .env(fault::ENV, faults.join(","))
        .output()
        .unwrap();
    let wall = started.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    println!(
        "soak: {JOBS} jobs, faults {}, {:.1} s",
        faults.join(","),
        wall.as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(wall.as_secs_f64() >= 120.0, "{wall:?}");
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();

    let finished: Vec<&str> = r.jobs.iter().map(|j| j.name.as_str()).collect();
    let expected: Vec<String> = (0..JOBS)
        .filter(|k| !hit.contains_key(k))
        .map(|k| format!("j{k:02}"))
        .collect();
    assert_eq!(finished, expected, "{log}");
    for (job, k) in r
        .jobs
        .iter()
        .zip((0..JOBS).filter(|k| !hit.contains_key(k)))
    {
        assert!(
            job.slowdown.is_finite() && job.slowdown > 0.0 && job.completion_s > 0.0,
            "{job:?}"
        );
        let latest = checkpoint::load_latest(&job_checkpoint_dir(&ckpt, &job.name))
            .unwrap()
            .unwrap();
        assert_eq!(latest.meta.step, iterations[k], "{}", job.name);
    }
    assert_eq!(r.failed.len(), hit.len(), "{:?}", r.failed);
    for (k, (kind, step)) in &hit {
        let name = format!("j{k:02}");
        let f = r.failed.iter().find(|f| f.name == name).unwrap();
        assert!(f.error.contains(says(kind)), "{kind}@{step}: {f:?}");
        // The manager heard of every step before the one that was hit, and no later one.
        assert_eq!(f.step, step - 1, "{kind}@{step}: {f:?}");
    }
}
