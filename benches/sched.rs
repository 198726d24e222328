//! Scheduler benches: one manager round (`thesis`, and `minmax` with a cost model), whole
//! simulations (the 4-GPU thesis example and the 64-GPU, 500-job scale workload), and the
//! lower bound of the scale workload.
//!
//!     cargo bench --bench sched

use std::hint::black_box;
use std::time::Duration;

use attnrt::multijob::JobFile;
use attnrt::sched::bound::file_bound;
use attnrt::sched::cost::{JobModel, RoundModel};
use attnrt::sched::jobs::{JobSim, SimulationConfig};
use attnrt::sched::policy::{JobObservation, Manager, PeriodInputs, PolicyKind, ThesisParams};
use attnrt::sched::workload::{SyntheticSpec, THESIS_MODELS, synthetic};
use attnrt::sched::{DistributionRatio, SimOptions, simulate};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Random inputs: `m` GPUs, `n` jobs each on two neighbouring GPUs.
fn inputs(m: usize, n: usize) -> PeriodInputs {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let util = (0..m).map(|_| rng.random_range(0.0..100.0)).collect();
    let jobs = (0..n)
        .map(|_| {
            let g = rng.random_range(0..m);
            let mut units = vec![0u8; m];
            units[g] += 5;
            units[(g + 1) % m] += 5;
            JobObservation {
                sd: rng.random_range(1.0..4.0),
                dr: DistributionRatio::new(units).unwrap(),
            }
        })
        .collect();
    PeriodInputs::new(util, jobs).unwrap()
}

/// A cost model for `n` jobs of the thesis' models on `m` GPUs, each part-way through 200 to
/// 2000 iterations and slowed down 1 to 4 times so far.
fn model(m: usize, n: usize) -> RoundModel {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    RoundModel {
        machine: SimulationConfig::with_gpus(m),
        jobs: (0..n)
            .map(|_| {
                let c = THESIS_MODELS[rng.random_range(0..THESIS_MODELS.len())];
                let x = (c.batch_size as f64 * c.sample_ms + c.iter_overhead_ms) / 1000.0;
                let total = rng.random_range(200..2000u64);
                let done = rng.random_range(0..total);
                JobModel {
                    batch_size: c.batch_size,
                    costs: JobSim {
                        sample_ms: c.sample_ms,
                        iter_overhead_ms: c.iter_overhead_ms,
                        grad_mb: c.grad_mb,
                    },
                    elapsed_s: done as f64 * x * rng.random_range(1.0..4.0),
                    done_iters: done,
                    total_iters: total,
                    exclusive_iter_s: x,
                }
            })
            .collect(),
    }
}

fn round(c: &mut Criterion) {
    let mut group = c.benchmark_group("manager_round");
    for (m, n) in [(4, 5), (64, 40), (64, 500)] {
        let inputs = inputs(m, n);
        let mut mgr = Manager::new(m, PolicyKind::Thesis.build(ThesisParams::default())).unwrap();
        group.bench_function(format!("thesis_{m}gpu_{n}jobs"), |b| {
            b.iter(|| mgr.evaluate(black_box(&inputs)).unwrap())
        });
        // From the same random placements: the round moves most jobs.
        let inputs = inputs.with_model(model(m, n)).unwrap();
        let mut mgr = Manager::new(m, PolicyKind::Minmax.build(ThesisParams::default())).unwrap();
        group.bench_function(format!("minmax_{m}gpu_{n}jobs"), |b| {
            b.iter(|| mgr.evaluate(black_box(&inputs)).unwrap())
        });
    }
    group.finish();
}

fn simulation(c: &mut Criterion) {
    let example =
        JobFile::load(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/thesis-4gpu.toml").as_ref())
            .unwrap()
            .sched;
    let mut group = c.benchmark_group("simulate");
    for policy in [PolicyKind::Static, PolicyKind::Thesis] {
        let options = SimOptions {
            policy: Some(policy),
            ..SimOptions::default()
        };
        group.bench_function(format!("thesis-4gpu_{policy}"), |b| {
            b.iter(|| simulate(black_box(&example), "example", &options).unwrap())
        });
    }
    group.finish();

    let scale = synthetic(&SyntheticSpec::scale_64x500()).unwrap().file;
    let mut group = c.benchmark_group("simulate_scale");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(2));
    for policy in PolicyKind::ALL {
        let options = SimOptions {
            policy: Some(policy),
            ..SimOptions::default()
        };
        group.bench_function(format!("64gpu_500jobs_{policy}"), |b| {
            b.iter(|| simulate(black_box(&scale), "scale", &options).unwrap())
        });
    }
    group.bench_function("64gpu_500jobs_bound", |b| {
        b.iter(|| file_bound(black_box(&scale), "scale").unwrap())
    });
    group.finish();
}

criterion_group!(benches, round, simulation);
criterion_main!(benches);
