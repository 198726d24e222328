//! `kernels/optimizer.cu` against `optimizer::cpu` (through `Optimizer::step_cpu`): the same
//! f32 operations, so within the rounding of the kernel's fused multiply-adds (1e-6).

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::kernels::optimizer::OptimizerKernels;
use attnrt::train::Optimizer;
use attnrt::train::optim::Step;

use crate::{assert_within, down, random, rng, up};

#[test]
fn optimizer_steps_match_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("optimizer_steps_match_the_cpu_reference") else {
        return;
    };
    let s = gpu.stream();
    let kernels = OptimizerKernels::load(&gpu).unwrap();
    let n = 1003;
    let mut rng = rng(1);
    for opt in [Optimizer::sgd(0.05), Optimizer::adamw(0.01)] {
        let (mut p, g) = (random(&mut rng, n), random(&mut rng, n));
        let mut state: Vec<Vec<f32>> = (0..opt.state_slots())
            .map(|_| random(&mut rng, n))
            .collect();
        // AdamW's second moment is a running mean of squares: a negative one would take the
        // square root of a negative number on both sides.
        if let Optimizer::AdamW { .. } = opt {
            state[1].iter_mut().for_each(|v| *v = v.abs());
        }
        let mut dp = up(&gpu, &p);
        let dg = up(&gpu, &g);
        let mut ds: Vec<_> = state.iter().map(|v| up(&gpu, v)).collect();
        let t = 3;
        match opt.at_step(t) {
            Step::Sgd(step) => kernels.sgd(s, &mut dp, &dg, &mut ds[0], step).unwrap(),
            Step::AdamW(step) => {
                let (m, v) = ds.split_at_mut(1);
                kernels
                    .adamw(s, &mut dp, &dg, (&mut m[0], &mut v[0]), step)
                    .unwrap()
            }
        }
        opt.step_cpu(t, &mut p, &g, &mut state);
        assert_within(&format!("{opt}: p"), &down(&gpu, &dp), &p, 1e-6);
        for (i, (d, h)) in ds.iter().zip(&state).enumerate() {
            assert_within(&format!("{opt}: state {i}"), &down(&gpu, d), h, 1e-6);
        }
    }
}
