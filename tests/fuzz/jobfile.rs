//! Job files (`multijob::JobFile`: the scheduling part and every job's training keys), and
//! the simulator files among them: every file that loads is also simulated, as `--simulate`
//! would, when it is small enough for a fuzz case.

use attnrt::multijob::JobFile;
use attnrt::multijob::simfile::calibrated_file;
use attnrt::sched::jobs::limits::MAX_BATCH_SIZE;
use attnrt::sched::sim::size;
use attnrt::sched::{SimOptions, simulate};
use attnrt::train::run::calibrate::Calibration;
use proptest::prelude::*;

use crate::harness::{bounded, config, damaged_text};

/// Every example job file, and a small one with every key.
fn seeds() -> Vec<String> {
    let dir = crate::common::repo_file("examples");
    let mut seeds = vec![SMALL.to_string()];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // The 500-job example is a seed of its own kind, but mutating 300 kB per case
        // would make it most of this target's time: its first jobs stand for it.
        if path.extension().is_some_and(|e| e == "toml") {
            seeds.push(text.chars().take(6000).collect());
        }
    }
    seeds
}

const SMALL: &str = r#"
[manager]
policy = "thesis"
period_s = 2.0
sd_threshold = 1.1
util_threshold = 20.0
[simulation]
gpus = 2
colocation_efficiency = 0.9
allreduce_gbps = 10.0
allreduce_latency_ms = 0.5
reconfigure_ms = 5.0
[[job]]
name = "a"
model = "mlp"
dataset = "synthetic"
batch_size = 32
iterations = 40
arrival_s = 0.0
initial_dr = [5, 5]
optimizer = "adamw"
lr = 1e-3
precision = "bf16"
[job.sim]
sample_ms = 0.5
iter_overhead_ms = 3.0
grad_mb = 12.0
[[job]]
name = "b-1.x"
model = "vit-tiny"
dataset = "synthetic:100"
batch_size = 8
iterations = 30
arrival_s = 3.5
[job.sim]
sample_ms = 2.0
"#;

/// The most a fuzz case simulates; bigger files are parsed and checked only (the simulator's
/// own bounds are tested in `tests/sched_sim.rs`).
const CASE_ITERATIONS: u64 = 20_000;
const CASE_ROUNDS: f64 = 20_000.0;

fn exercise(text: &str) {
    let Ok(file) = JobFile::parse(text, "fuzz.toml") else {
        return;
    };
    // What the program writes back (`--write-sim`) loads again, unchanged.
    let text = file.to_toml().unwrap();
    let again = JobFile::parse(&text, "again.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again, file);
    let Some(machine) = &file.sched.simulation else {
        return;
    };
    let s = size(&file.sched, machine, file.sched.manager.period_s);
    if s.iterations <= CASE_ITERATIONS && s.rounds <= CASE_ROUNDS {
        let options = SimOptions {
            trace: true,
            decisions: true,
            ..SimOptions::default()
        };
        let _ = simulate(&file.sched, "fuzz.toml", &options);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn job_files(text in damaged_text(&seeds().iter().map(String::as_str).collect::<Vec<_>>(), 4)) {
        bounded("job file", move || exercise(&text));
    }
}

/// Measurements of a job alone: any times from 10 us to 10 minutes, any gradient size.
fn calibration() -> impl Strategy<Value = Calibration> {
    (
        1e-5..600.0f64,
        0.0..1.0f64,
        prop::option::of(1e-5..600.0f64),
        0.0..1e6f64,
        1..=MAX_BATCH_SIZE as usize,
    )
        .prop_map(|(full_s, half, split_s, grad_mb, batch_size)| Calibration {
            full_s,
            half_s: full_s * half,
            split_s,
            grad_mb,
            batch_size,
        })
}

proptest! {
    #![proptest_config(config())]

    /// The file `--write-sim` writes from a run's measurements loads again, whatever was
    /// measured: fitted costs stay within the bounds a job file may hold.
    #[test]
    fn written_simulator_files_load_back(
        calibrations in prop::collection::vec(prop::option::of(calibration()), 2),
        gpus in 1usize..=8,
    ) {
        let file = JobFile::parse(SMALL, "jobs.toml").unwrap();
        let out = calibrated_file(&file, gpus, &calibrations);
        let text = out.to_toml().unwrap();
        let back = JobFile::parse(&text, "sim.toml");
        prop_assert!(back.is_ok(), "{}\n{text}", back.unwrap_err());
    }
}
