//! `kernels/softmax.cu` against `softmax::cpu`.

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::kernels::softmax::SoftmaxKernels;
use attnrt::kernels::softmax::cpu::{softmax, softmax_backward};

use crate::{assert_close, down, random, rng, up};

#[test]
fn softmax_forward_and_backward_match_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("softmax_forward_and_backward_match_the_cpu_reference") else {
        return;
    };
    let s = gpu.stream();
    let kernels = SoftmaxKernels::load(&gpu).unwrap();
    let mut rng = rng(32);
    // 37 rows (idle warps in the last block), 70 columns (not a multiple of 32).
    let (rows, cols, scale) = (37, 70, 0.25);
    let x: Vec<f32> = random(&mut rng, rows * cols)
        .iter()
        .map(|v| 4.0 * v)
        .collect();
    let mut p = x.clone();
    softmax(&mut p, cols);
    let mut dp = up(&gpu, &x);
    kernels.forward(s, &mut dp, (rows, cols)).unwrap();
    assert_close("softmax", &down(&gpu, &dp), &p);

    let g = random(&mut rng, rows * cols);
    let mut want = g.clone();
    softmax_backward(&p, &mut want, cols, scale);
    let (dprob, mut dg) = (up(&gpu, &p), up(&gpu, &g));
    kernels
        .backward(s, &dprob, &mut dg, (rows, cols), scale)
        .unwrap();
    assert_close("softmax backward", &down(&gpu, &dg), &want);
}
