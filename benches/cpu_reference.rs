//! The CPU reference's forward pass: the released-size synthetic model (704 tokens,
//! c=256, 6+6 layers) at batch 1, and the golden files' tiny model.
//!
//! `cargo bench --bench cpu_reference`

use std::sync::Arc;

use attnrt::cswintt::cpu::CpuReference;
use attnrt::model::config::Config;
use attnrt::model::synthetic::{DEFAULT_SEED, Padding, random_inputs, synthetic_weights};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_reference");
    g.sample_size(10);
    for (name, cfg) in [
        ("released_b1", Config::released()),
        ("tiny_b1", Config::tiny()),
    ] {
        let w = Arc::new(synthetic_weights(&cfg, DEFAULT_SEED));
        let cpu = CpuReference::new(w).expect("valid synthetic model");
        let inputs = random_inputs(&cfg, 1, 0, Padding::None, false);
        g.bench_function(name, |b| {
            b.iter(|| cpu.forward(&inputs, false).expect("forward"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
