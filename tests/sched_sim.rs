//! The simulator on the shipped example and on random small workloads.

use attnrt::multijob;
use attnrt::sched::jobs::{JobFile, JobSim, JobSpec, ManagerConfig, SimulationConfig};
use attnrt::sched::workload::{SyntheticSpec, synthetic};
use attnrt::sched::{PolicyKind, SimOptions, simulate};
use proptest::prelude::*;

mod common;

fn example() -> String {
    common::repo_file("examples/thesis-4gpu.toml")
        .to_string_lossy()
        .into_owned()
}

fn run(file: &JobFile, policy: PolicyKind) -> attnrt::sched::SimOutcome {
    let options = SimOptions {
        policy: Some(policy),
        trace: true,
        ..SimOptions::default()
    };
    simulate(file, "test", &options).unwrap()
}

#[test]
fn thesis_lowers_the_maximum_slowdown_on_the_example() {
    let file = multijob::JobFile::load(example().as_ref()).unwrap().sched;
    assert_eq!(file.simulation.as_ref().unwrap().gpus, 4);
    assert_eq!(file.jobs.len(), 5);
    let st = run(&file, PolicyKind::Static).report;
    let th = run(&file, PolicyKind::Thesis).report;
    assert!(
        th.max_slowdown < 0.8 * st.max_slowdown,
        "thesis {} vs static {}",
        th.max_slowdown,
        st.max_slowdown
    );
    assert!(th.mean_gpu_util > st.mean_gpu_util);
    // Minutes of simulated time.
    assert!(
        st.makespan_s > 120.0 && st.makespan_s < 1800.0,
        "{}",
        st.makespan_s
    );
    for p in PolicyKind::ALL {
        let r = run(&file, p).report;
        assert_eq!(r.policy, p.name());
        assert_eq!(r.jobs.len(), 5);
        assert!(r.jain_index > 0.2 && r.jain_index <= 1.0 + 1e-12);
    }
}

#[test]
fn scale_workload_runs() {
    // A quarter of the 64-GPU, 500-job scale run, to keep debug test time low; the full one
    // is timed by `benches/sched.rs` and `examples/scale-64gpu.toml`.
    let spec = SyntheticSpec {
        jobs: 60,
        ..SyntheticSpec::scale_64x500()
    };
    let file = synthetic(&spec).unwrap().file;
    let a = run(&file, PolicyKind::Thesis);
    assert_eq!(a.report.jobs.len(), 60);
    assert_eq!(a.report.gpus, 64);
    let b = run(&file, PolicyKind::Thesis);
    assert_eq!(a.report, b.report);
}

#[test]
fn scale_example_matches_its_generator() {
    let path = common::repo_file("examples/scale-64gpu.toml");
    let file = multijob::JobFile::load(path.as_ref()).unwrap();
    let generated = synthetic(&SyntheticSpec::scale_64x500()).unwrap();
    assert_eq!(file, multijob::JobFile::from_workload(generated));
    assert_eq!(file.sched.jobs.len(), 500);
    assert_eq!(file.sched.simulation.unwrap().gpus, 64);
}

/// Every job file under examples/ loads: the scheduler's and the trainer's keys both.
#[test]
fn every_example_job_file_loads() {
    let dir = common::repo_file("examples");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let file = multijob::JobFile::load(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(file.train.len(), file.sched.jobs.len());
            loaded += 1;
        }
    }
    assert!(loaded >= 8, "{loaded} job files under {}", dir.display());
}

fn small_workload() -> impl Strategy<Value = JobFile> {
    (1usize..=5, 1usize..=6).prop_flat_map(|(m, n)| {
        let job = (
            1u64..=64,
            1u64..=40,
            0.0..20.0f64,
            0.0..3.0f64,
            0.0..10.0f64,
            0.0..200.0f64,
            prop::option::of(prop::collection::vec(0..m, 10)),
        );
        (
            Just(m),
            prop::collection::vec(job, n),
            prop::sample::select(PolicyKind::ALL.to_vec()),
            0.5..10.0f64,
            0.5..1.2f64,
        )
            .prop_map(|(m, jobs, policy, period, eff)| {
                let jobs = jobs
                    .into_iter()
                    .enumerate()
                    .map(
                        |(k, (batch, iters, arrival, sample, overhead, grad, dr))| JobSpec {
                            name: format!("j{k}"),
                            batch_size: batch,
                            iterations: iters,
                            arrival_s: arrival,
                            initial_dr: dr.map(|placement| {
                                let mut u = vec![0i64; m];
                                for g in placement {
                                    u[g] += 1;
                                }
                                u
                            }),
                            sim: Some(JobSim {
                                sample_ms: sample,
                                iter_overhead_ms: overhead + 0.01,
                                grad_mb: grad,
                            }),
                        },
                    )
                    .collect();
                let mut sim = SimulationConfig::with_gpus(m);
                sim.colocation_efficiency = eff;
                JobFile {
                    manager: ManagerConfig {
                        policy,
                        period_s: period,
                        ..ManagerConfig::default()
                    },
                    simulation: Some(sim),
                    jobs,
                }
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_workloads_finish_deterministically(file in small_workload()) {
        let options = SimOptions { trace: true, ..SimOptions::default() };
        let a = simulate(&file, "random", &options).unwrap();
        let b = simulate(&file, "random", &options).unwrap();
        prop_assert_eq!(&a.report, &b.report);
        prop_assert_eq!(&a.trace, &b.trace);
        let total: u64 = file.jobs.iter().map(|j| j.iterations).sum();
        prop_assert_eq!(a.stats.iterations, total);
        for (j, spec) in a.report.jobs.iter().zip(&file.jobs) {
            prop_assert!(j.completion_s.is_finite() && j.completion_s > 0.0);
            prop_assert!(j.slowdown.is_finite() && j.slowdown > 0.0);
            let first = spec.arrival_s;
            prop_assert!(j.completion_s <= a.report.makespan_s + (first - 0.0).abs() + 1e-6);
        }
        prop_assert!(a.report.mean_gpu_util >= 0.0 && a.report.mean_gpu_util <= 100.0 + 1e-9);
        for series in &a.trace.gpu_util {
            for &(_, u) in series {
                prop_assert!((0.0..=100.0).contains(&u));
            }
        }
    }
}

/// A two-job file on two GPUs whose job `b` has `key = value` (`sim.` keys in its
/// `[job.sim]`), through the whole job-file parser.
fn two_jobs_with(key: &str, value: &str) -> std::result::Result<JobFile, String> {
    let mut job = vec![("batch_size", "8"), ("iterations", "20")];
    let mut sim = vec![("sample_ms", "1.0")];
    match key.strip_prefix("sim.") {
        Some(k) => {
            sim.retain(|(s, _)| *s != k);
            sim.push((k, value));
        }
        None => {
            job.retain(|(s, _)| *s != key);
            job.push((key, value));
        }
    }
    let lines = |kv: &[(&str, &str)]| -> String {
        kv.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
    };
    let text = format!(
        "[manager]\npolicy = \"thesis\"\n[simulation]\ngpus = 2\n\
         [[job]]\nname = \"a\"\nmodel = \"mlp\"\ndataset = \"synthetic\"\nbatch_size = 8\n\
         iterations = 20\n[job.sim]\nsample_ms = 1.0\n\
         [[job]]\nname = \"b\"\nmodel = \"mlp\"\ndataset = \"synthetic\"\n{}[job.sim]\n{}",
        lines(&job),
        lines(&sim)
    );
    multijob::JobFile::parse(&text, "jobs.toml")
        .map(|f| f.sched)
        .map_err(|e| e.to_string())
}

/// The fuzzer's six hangs: `1e308` in `arrival_s` or `iter_overhead_ms` is refused at once,
/// naming the file, the job and the key; so is every other number far out of range.
#[test]
fn simulator_hang_huge_times_are_refused_naming_the_key() {
    for (key, value, named) in [
        ("arrival_s", "1e308", "job 'b': arrival_s"),
        ("arrival_s", "1e9", "job 'b': arrival_s"),
        (
            "sim.iter_overhead_ms",
            "1e308",
            "job 'b': sim.iter_overhead_ms",
        ),
        ("sim.sample_ms", "1e308", "job 'b': sim.sample_ms"),
        ("sim.grad_mb", "1e308", "job 'b': sim.grad_mb"),
        ("batch_size", "1000000000000", "job 'b': batch_size"),
    ] {
        let started = std::time::Instant::now();
        let e = two_jobs_with(key, value).unwrap_err();
        assert!(
            e.starts_with("jobs.toml: ") && e.contains(named),
            "{key}: {e}"
        );
        assert!(started.elapsed().as_secs_f64() < 0.5);
    }
    // Each value within its bounds, but an iteration of 12 days.
    let mut f = two_jobs_with("batch_size", "1048576").unwrap();
    f.jobs[1].sim.as_mut().unwrap().sample_ms = 1000.0;
    let e = f.validate("jobs.toml").unwrap_err().to_string();
    assert!(
        e.starts_with("jobs.toml: job 'b': sim") && e.contains("a day"),
        "{e}"
    );
    let text =
        |table: &str| format!("{table}\n[[job]]\nname = \"a\"\nbatch_size = 1\niterations = 1\n");
    for (table, named) in [
        ("[manager]\nperiod_s = 1e-300", "[manager] period_s"),
        ("[manager]\nperiod_s = 1e308", "[manager] period_s"),
        ("[simulation]\ngpus = 1000000000000", "[simulation] gpus"),
        (
            "[simulation]\ngpus = 2\ncolocation_efficiency = 1e-300",
            "colocation_efficiency",
        ),
        (
            "[simulation]\ngpus = 2\nallreduce_gbps = 1e-300",
            "allreduce_gbps",
        ),
        (
            "[simulation]\ngpus = 2\nreconfigure_ms = 1e308",
            "reconfigure_ms",
        ),
        (
            "[simulation]\ngpus = 2\nallreduce_latency_ms = 1e308",
            "allreduce_latency_ms",
        ),
    ] {
        let e = JobFile::parse(&text(table), "jobs.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("jobs.toml: ") && e.contains(named),
            "{table}: {e}"
        );
    }
}

/// The simulator skips the idle time before an arrival: a job arriving at the largest time
/// allowed finishes in a handful of rounds, as it would arriving at 0.
#[test]
fn simulator_hang_idle_time_is_skipped() {
    let late = two_jobs_with("arrival_s", "1e8").unwrap();
    let started = std::time::Instant::now();
    let out = run(&late, PolicyKind::Thesis);
    assert!(started.elapsed().as_secs_f64() < 0.5);
    assert!(out.stats.rounds < 100, "{:?}", out.stats);
    // Alone on the machine when it arrives: it runs at its exclusive speed (to the 15 ns an
    // f64 second resolves at 1e8 s).
    let b = &out.report.jobs[1];
    assert!((b.slowdown - 1.0).abs() < 1e-6, "{b:?}");
}

/// Files within every bound but so long for their period that the rounds alone would take
/// minutes, or with more iterations than the simulator runs, are refused before they start.
#[test]
fn simulator_hang_long_runs_are_refused_before_they_start() {
    let mut f = two_jobs_with("arrival_s", "0.0").unwrap();
    f.jobs[1].iterations = 1_000_000_000;
    let e = simulate(&f, "jobs.toml", &SimOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("jobs.toml: iterations"), "{e}");
    f.jobs[1].iterations = 100_000;
    f.jobs[1].sim.as_mut().unwrap().iter_overhead_ms = 3.6e6;
    let started = std::time::Instant::now();
    let e = simulate(&f, "jobs.toml", &SimOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("jobs.toml: [manager] period_s"), "{e}");
    assert!(started.elapsed().as_secs_f64() < 0.5);
    let e = simulate(
        &f,
        "jobs.toml",
        &SimOptions {
            period_s: Some(0.0),
            ..SimOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("period_s"), "{e}");
}
