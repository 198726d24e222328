//! Job files (`multijob::JobFile`: the scheduling part and every job's training keys), and
//! the simulator files among them: every file that loads is also simulated, as `--simulate`
//! would, when it is small enough for a fuzz case.

use attnrt::multijob::JobFile;
use attnrt::multijob::simfile::calibrated_file;
use attnrt::sched::jobs::limits::MAX_BATCH_SIZE;
use attnrt::sched::sim::size;
use attnrt::sched::{SimOptions, simulate};
use attnrt::train::data::{Dataset, ImageShape};
use attnrt::train::models::{MAX_PARAMETERS, ModelSpec};
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

/// A job's `model` and `dataset` values, as a session opens them.
const TRAIN_VALUES: &[&str] = &[
    "mlp",
    "mlp:512,256",
    "mlp:64",
    "vit-tiny",
    "vit-small-win",
    "vit:4,192,6,3,768",
    "vit:8,64,2,4,128,win",
    "synthetic",
    "synthetic:100",
    "synthetic:50000",
];

proptest! {
    #![proptest_config(config())]

    /// What a job's `model` and `dataset` values open: a model no larger than the bound
    /// (its parameters are counted, not allocated), a dataset of the length it names.
    #[test]
    fn model_and_dataset_values(text in damaged_text(TRAIN_VALUES, 4)) {
        bounded("model and dataset values", move || {
            if let Ok(model) = ModelSpec::parse(&text, ImageShape::CIFAR, 10, "jobs.toml: model") {
                assert!(model.layout().total <= MAX_PARAMETERS);
            }
            // Directories are read only for cifar10:DIR and mnist:DIR; keep to the synthetic
            // set, whose samples are drawn, not read.
            if text.starts_with("synthetic") {
                let _ = Dataset::open(&text, 1, "jobs.toml: dataset").map(|d| d.len());
            }
        });
    }
}

/// A `model` value asking for 10^18 parameters (or sizes past 2^20) is refused naming the
/// job's key; it was an allocation of exabytes when the job opened (an abort).
#[test]
fn model_claiming_terabytes_of_parameters_is_refused() {
    for spec in [
        "mlp:1000000000,1000000000",
        "mlp:1048576,1048576,1048576",
        "vit:4,1048576,1048576,1,1",
        "vit:4,2048,4096,2,8192",
    ] {
        let e = ModelSpec::parse(spec, ImageShape::CIFAR, 10, "jobs.toml: job 'a': model")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("jobs.toml: job 'a': model: '") && e.contains(spec),
            "{e}"
        );
    }
    assert!(ModelSpec::parse("vit-small", ImageShape::CIFAR, 10, "m").is_ok());
}

/// `synthetic:N` past 2^26 samples is refused naming the job's key: each epoch's order is a
/// permutation of N (4 bytes a sample), and N was cut to 32 bits (5e9 samples became
/// 705 032 704, 10^12 a 14 GB permutation).
#[test]
fn synthetic_dataset_of_billions_of_samples_is_refused() {
    for spec in [
        "synthetic:5000000000",
        "synthetic:1000000000000",
        "synthetic:67108865",
    ] {
        let Err(e) = Dataset::open(spec, 1, "jobs.toml: job 'a': dataset") else {
            panic!("{spec} opened");
        };
        let e = e.to_string();
        assert!(
            e.starts_with("jobs.toml: job 'a': dataset: '") && e.contains("67108864"),
            "{e}"
        );
    }
    assert_eq!(
        Dataset::open("synthetic:67108864", 1, "d").unwrap().len(),
        1 << 26
    );
}

/// Nesting 200 000 deep (arrays, inline tables) is a parse error naming the file, not a
/// stack overflow: the TOML parser limits its depth.
#[test]
fn deeply_nested_job_files_are_errors() {
    let n = 200_000;
    for text in [
        format!("x = {}{}", "[".repeat(n), "]".repeat(n)),
        format!("x = {}1{}", "{a=".repeat(n), "}".repeat(n)),
    ] {
        let e = JobFile::parse(&text, "deep.toml").unwrap_err().to_string();
        assert!(e.starts_with("deep.toml"), "{}", &e[..100.min(e.len())]);
    }
}
