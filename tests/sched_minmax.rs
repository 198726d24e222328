//! The lower bound, `minmax` and the workload suite: no policy beats the bound on random
//! workloads; `minmax` answers valid DRs, deterministically, and its simulated decisions
//! replay; on a few suite workloads it is the fairest policy.

use attnrt::sched::DistributionRatio;
use attnrt::sched::cost::{JobModel, RoundModel};
use attnrt::sched::decisions::replay;
use attnrt::sched::dr::DR_UNITS;
use attnrt::sched::jobs::{JobFile, JobSim, JobSpec, ManagerConfig, SimulationConfig};
use attnrt::sched::policy::{Action, JobObservation, Manager, PeriodInputs, PolicyKind};
use attnrt::sched::suite::{DEFAULT_SEED, DEFAULT_WORKLOADS, TIE, generate, run};
use attnrt::sched::{SimOptions, ThesisParams, simulate};
use proptest::prelude::*;

/// A DR over `m` GPUs from where each of its 10 units lands.
fn dr_of(m: usize, placement: &[usize]) -> Vec<i64> {
    let mut units = vec![0i64; m];
    for &g in placement {
        units[g % m] += 1;
    }
    units
}

/// Small workloads: 1 to 6 GPUs, 1 to 7 jobs with costs over three orders of magnitude,
/// batches from 1 (fewer samples than DR units), a stall on DR changes, co-location
/// efficiency from 0.5 to 2.5; half the jobs arrive in groups (at 0, 10 or 20 s), which the
/// bound's no-pausing argument is about.
fn workload() -> impl Strategy<Value = JobFile> {
    (1usize..=6, 1usize..=7).prop_flat_map(|(m, n)| {
        let job = (
            1u64..=128,
            1u64..=60,
            prop_oneof![0.0..30.0f64, (0u8..3).prop_map(|k| f64::from(k) * 10.0)],
            -2.0..1.0f64,
            0.0..20.0f64,
            0.0..300.0f64,
            prop::option::of(prop::collection::vec(0..m, DR_UNITS as usize)),
        );
        (
            Just(m),
            prop::collection::vec(job, n),
            0.5..2.5f64,
            prop_oneof![Just(0.0), 0.0..300.0f64],
            0.5..6.0f64,
        )
            .prop_map(|(m, jobs, eff, reconfigure_ms, period_s)| {
                let jobs = jobs
                    .into_iter()
                    .enumerate()
                    .map(
                        |(k, (batch, iters, arrival, log_sample, overhead, grad, dr))| JobSpec {
                            name: format!("j{k}"),
                            batch_size: batch,
                            iterations: iters,
                            arrival_s: arrival,
                            initial_dr: dr.map(|p| dr_of(m, &p)),
                            sim: Some(JobSim {
                                sample_ms: 10f64.powf(log_sample),
                                iter_overhead_ms: overhead,
                                grad_mb: grad,
                            }),
                        },
                    )
                    .collect();
                let mut sim = SimulationConfig::with_gpus(m);
                sim.colocation_efficiency = eff;
                sim.reconfigure_ms = reconfigure_ms;
                JobFile {
                    manager: ManagerConfig {
                        period_s,
                        ..ManagerConfig::default()
                    },
                    simulation: Some(sim),
                    jobs,
                }
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn no_policy_beats_the_bound(file in workload()) {
        for policy in PolicyKind::ALL {
            let options = SimOptions { policy: Some(policy), ..SimOptions::default() };
            let r = simulate(&file, "random", &options).unwrap().report;
            let bound = r.max_slowdown_bound.unwrap();
            prop_assert!(bound > 0.0 && bound.is_finite(), "{policy}: bound {bound}");
            prop_assert!(
                r.max_slowdown >= bound * (1.0 - 1e-9),
                "{policy} reached {} below the bound {bound}",
                r.max_slowdown
            );
        }
    }

    #[test]
    fn minmax_simulations_are_deterministic_and_replay(file in workload()) {
        let options = SimOptions {
            policy: Some(PolicyKind::Minmax),
            decisions: true,
            trace: true,
            ..SimOptions::default()
        };
        let a = simulate(&file, "random", &options).unwrap();
        let b = simulate(&file, "random", &options).unwrap();
        prop_assert_eq!(&a.report, &b.report);
        prop_assert_eq!(&a.trace, &b.trace);
        let log = a.decisions.unwrap();
        prop_assert_eq!(replay(&log).unwrap(), None);
        // The log carries what the policy predicted from.
        let text = log.to_json();
        prop_assert!(file.jobs.is_empty() || text.contains("\"model\""));
    }
}

/// 48 cases in CI; `SCHED_CASES=3000` for the long run.
fn cases() -> u32 {
    std::env::var("SCHED_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

/// A round of `n` jobs on `m` GPUs: random DRs, costs and progress.
fn round() -> impl Strategy<Value = PeriodInputs> {
    (1usize..=12, 0usize..=30).prop_flat_map(|(m, n)| {
        let job = (
            prop::collection::vec(0..m, DR_UNITS as usize),
            1u64..=256,
            -2.0..1.5f64,
            0.0..30.0f64,
            0.0..400.0f64,
            1u64..=2000,
            0.0..1.0f64,
            0.5..5.0f64,
        );
        (
            Just(m),
            prop::collection::vec(job, n),
            0.5..1.5f64,
            prop_oneof![Just(0.0), 0.0..500.0f64],
        )
            .prop_map(|(m, jobs, eff, reconfigure_ms)| {
                let mut machine = SimulationConfig::with_gpus(m);
                machine.colocation_efficiency = eff;
                machine.reconfigure_ms = reconfigure_ms;
                let mut observations = Vec::new();
                let mut models = Vec::new();
                for (placement, batch, log_sample, overhead, grad, total, done, slowed) in jobs {
                    let units: Vec<u8> = dr_of(m, &placement).iter().map(|&u| u as u8).collect();
                    let costs = JobSim {
                        sample_ms: 10f64.powf(log_sample),
                        iter_overhead_ms: overhead,
                        grad_mb: grad,
                    };
                    let x = (batch as f64 * costs.sample_ms + costs.iter_overhead_ms) / 1000.0;
                    let done = ((total as f64) * done) as u64;
                    observations.push(JobObservation {
                        sd: slowed,
                        dr: DistributionRatio::new(units).unwrap(),
                    });
                    models.push(JobModel {
                        batch_size: batch,
                        costs,
                        elapsed_s: done as f64 * x * slowed,
                        done_iters: done,
                        total_iters: total,
                        exclusive_iter_s: x,
                    });
                }
                PeriodInputs::new(vec![50.0; m], observations)
                    .unwrap()
                    .with_model(RoundModel {
                        machine,
                        jobs: models,
                    })
                    .unwrap()
            })
    })
}

proptest! {
    #[test]
    fn minmax_answers_valid_drs_deterministically(inputs in round()) {
        let m = inputs.gpus();
        let decide = || {
            Manager::new(m, PolicyKind::Minmax.build(ThesisParams::default()))
                .unwrap()
                .evaluate(&inputs)
                .unwrap()
        };
        let d = decide();
        prop_assert_eq!(&d, &decide());
        prop_assert_eq!(d.len(), inputs.jobs().len());
        for (decision, obs) in d.iter().zip(inputs.jobs()) {
            prop_assert_eq!(decision.dr.gpus(), m);
            let sum: u32 = decision.dr.units().iter().map(|&u| u32::from(u)).sum();
            prop_assert_eq!(sum, u32::from(DR_UNITS));
            prop_assert_eq!(decision.action == Action::Keep, decision.dr == obs.dr);
        }
    }
}

#[test]
fn minmax_is_the_fairest_on_a_few_suite_workloads() {
    // The whole suite is `cargo run --release --example suite`; three of its smaller
    // workloads keep this test short.
    let mut workloads = generate(DEFAULT_SEED, DEFAULT_WORKLOADS).unwrap();
    workloads.sort_by_key(|w| w.workload.file.jobs.len());
    workloads.truncate(3);
    let rows = run(&workloads, &PolicyKind::ALL).unwrap();
    let minmax = PolicyKind::ALL
        .iter()
        .position(|&p| p == PolicyKind::Minmax)
        .unwrap();
    for row in &rows {
        let best = row
            .reports
            .iter()
            .map(|r| r.max_slowdown)
            .fold(f64::INFINITY, f64::min);
        for r in &row.reports {
            // A job that meets the bound exactly (alone on one GPU) can land a rounding
            // error below it.
            assert!(
                r.max_slowdown >= row.bound * (1.0 - 1e-9),
                "{}: {r:?}",
                row.workload
            );
        }
        assert!(
            row.reports[minmax].max_slowdown <= best + TIE,
            "{}: minmax {} against {best}",
            row.workload,
            row.reports[minmax].max_slowdown
        );
    }
}

#[test]
fn minmax_clears_gpus_for_the_job_that_limits_the_largest_slowdown() {
    // The suite's w15: a short job arriving last on 12 GPUs meets the bound (its own fastest
    // split) only alone on ten of them, crowding the three others for its 11 s; sharing six
    // of them, as the prediction of a fixed placement prefers, it reached 1.32 times it.
    let workloads = generate(DEFAULT_SEED, DEFAULT_WORKLOADS).unwrap();
    let w15 = workloads
        .iter()
        .find(|w| w.name.starts_with("w15-"))
        .unwrap();
    let rows = run(std::slice::from_ref(w15), &[PolicyKind::Minmax]).unwrap();
    let (row, max) = (&rows[0], rows[0].reports[0].max_slowdown);
    assert!(
        max <= 1.05 * row.bound,
        "{}: {max} against {}",
        row.workload,
        row.bound
    );
}
