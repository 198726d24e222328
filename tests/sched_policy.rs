//! Property tests of the scheduling core: over random utilisations, Slow-Downs, current
//! distribution ratios and job counts.

use attnrt::sched::dr::{DR_UNITS, DistributionRatio, largest_remainder};
use attnrt::sched::policy::{
    Action, Admission, JobObservation, Manager, PeriodInputs, Policy, PolicyKind, ThesisParams,
    ThesisPolicy,
};
use proptest::prelude::*;

/// A valid DR over `m` GPUs: each of the 10 units lands on a random GPU.
fn dr_strategy(m: usize) -> impl Strategy<Value = DistributionRatio> {
    prop::collection::vec(0..m, DR_UNITS as usize).prop_map(move |placement| {
        let mut units = vec![0u8; m];
        for g in placement {
            units[g] += 1;
        }
        DistributionRatio::new(units).unwrap()
    })
}

/// Utilisation is often quantised on real GPUs (NVML reports integers): mix integers in so
/// that ties are exercised.
fn util_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![(0u8..=100).prop_map(f64::from), 0.0..=100.0f64]
}

fn sd_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![(1u8..=4).prop_map(f64::from), 0.0..6.0f64]
}

/// `(inputs, params)` over `m` GPUs and `n` jobs, as drawn by `sizes`.
fn inputs_with(
    sizes: impl Strategy<Value = (usize, usize)>,
) -> impl Strategy<Value = (PeriodInputs, ThesisParams)> {
    sizes
        .prop_flat_map(|(m, n)| {
            (
                prop::collection::vec(util_strategy(), m),
                prop::collection::vec((sd_strategy(), dr_strategy(m)), n),
                0.0..2.0f64,
                0.0..60.0f64,
            )
        })
        .prop_map(|(util, jobs, sd_th, util_th)| {
            let jobs = jobs
                .into_iter()
                .map(|(sd, dr)| JobObservation { sd, dr })
                .collect();
            (
                PeriodInputs::new(util, jobs).unwrap(),
                ThesisParams::new(sd_th, util_th).unwrap(),
            )
        })
}

/// 1..=12 GPUs, 0..=30 jobs.
fn inputs_strategy() -> impl Strategy<Value = (PeriodInputs, ThesisParams)> {
    inputs_with((1usize..=12, 0usize..=30))
}

/// At least as many jobs as GPUs (Algorithm 1's second branch).
fn crowded_inputs() -> impl Strategy<Value = (PeriodInputs, ThesisParams)> {
    inputs_with((1usize..=12).prop_flat_map(|m| (Just(m), m..=m + 20)))
}

/// Fewer jobs than GPUs (Algorithm 1's first branch).
fn sparse_inputs() -> impl Strategy<Value = (PeriodInputs, ThesisParams)> {
    inputs_with((1usize..=16).prop_flat_map(|m| (Just(m), 0..m)))
}

fn assert_valid(dr: &DistributionRatio, m: usize) {
    assert_eq!(dr.gpus(), m);
    assert!(dr.units().iter().all(|&u| u <= DR_UNITS));
    assert_eq!(
        dr.units().iter().map(|&u| u32::from(u)).sum::<u32>(),
        u32::from(DR_UNITS)
    );
}

/// The job the thesis policy may move: largest SD, lowest index among ties.
fn max_job(inputs: &PeriodInputs) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, j) in inputs.jobs().iter().enumerate() {
        if best.is_none_or(|b| j.sd > inputs.jobs()[b].sd) {
            best = Some(i);
        }
    }
    best
}

proptest! {
    #[test]
    fn every_policy_returns_valid_drs((inputs, params) in inputs_strategy()) {
        let m = inputs.gpus();
        // `minmax` predicts from a cost model these inputs lack (its own test gives one).
        for kind in PolicyKind::ALL.into_iter().filter(|&k| k != PolicyKind::Minmax) {
            let mut mgr = Manager::new(m, kind.build(params)).unwrap();
            let decisions = mgr.evaluate(&inputs).unwrap();
            prop_assert_eq!(decisions.len(), inputs.jobs().len());
            for d in &decisions {
                assert_valid(&d.dr, m);
            }
            for k in 0..3 {
                let dr = mgr
                    .admit(&Admission { job_index: k, initial_dr: None })
                    .unwrap();
                assert_valid(&dr, m);
            }
        }
    }

    #[test]
    fn thesis_moves_only_the_most_slowed_down_job((inputs, params) in crowded_inputs()) {
        prop_assert!(inputs.jobs().len() >= inputs.gpus());
        let decisions = ThesisPolicy::new(params).evaluate(&inputs).unwrap();
        let top = max_job(&inputs).unwrap();
        for (i, (d, job)) in decisions.iter().zip(inputs.jobs()).enumerate() {
            if i != top || job.sd < params.sd_threshold {
                prop_assert_eq!(&d.dr, &job.dr, "job {} moved", i);
                prop_assert_eq!(d.action, Action::Keep);
            }
        }
        let changed = decisions
            .iter()
            .zip(inputs.jobs())
            .filter(|(d, j)| d.dr != j.dr)
            .count();
        prop_assert!(changed <= 1);
    }

    #[test]
    fn fewer_jobs_than_gpus_get_a_gpu_each((inputs, params) in sparse_inputs()) {
        let m = inputs.gpus();
        let n = inputs.jobs().len();
        prop_assert!(n < m);
        let decisions = ThesisPolicy::new(params).evaluate(&inputs).unwrap();
        let mut taken = vec![false; m];
        for d in &decisions {
            prop_assert_eq!(d.dr.used_count(), 1);
            let g = d.dr.used_gpus().next().unwrap();
            prop_assert!(!taken[g], "GPU {} given twice", g);
            taken[g] = true;
        }
        // The GPUs handed out are the least utilised ones.
        let util = inputs.util();
        let max_taken = (0..m).filter(|&g| taken[g]).map(|g| util[g]).fold(f64::MIN, f64::max);
        for g in (0..m).filter(|&g| !taken[g]) {
            prop_assert!(util[g] >= max_taken || n == 0);
        }
    }

    #[test]
    fn batch_split_is_exact(dr in (1usize..=16).prop_flat_map(dr_strategy), batch in 0u64..5000) {
        let shards = dr.split_batch(batch);
        prop_assert_eq!(shards.len(), dr.gpus());
        prop_assert_eq!(shards.iter().sum::<u64>(), batch);
        for (g, &s) in shards.iter().enumerate() {
            let exact = batch as f64 * dr.fraction(g);
            prop_assert!((s as f64 - exact).abs() < 1.0 + 1e-9);
            if dr.get(g) == 0 {
                prop_assert_eq!(s, 0);
            }
        }
    }

    #[test]
    fn largest_remainder_sums_exactly(w in prop::collection::vec(0.0..100.0f64, 1..20)) {
        let total: f64 = w.iter().sum();
        prop_assume!(total > 0.0);
        let quotas: Vec<f64> = w.iter().map(|x| x / total * 10.0).collect();
        let parts = largest_remainder(&quotas, 10);
        prop_assert_eq!(parts.iter().sum::<u64>(), 10);
        for (p, q) in parts.iter().zip(&quotas) {
            prop_assert!((*p as f64 - q).abs() < 1.0 + 1e-9);
        }
        assert_valid(&DistributionRatio::from_weights(&w).unwrap(), w.len());
    }
}
