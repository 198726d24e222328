//! `kernels/mean_tokens.cu` against `mean_tokens::cpu`.

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::kernels::mean_tokens::MeanTokensKernels;
use attnrt::kernels::mean_tokens::cpu::{mean_tokens, mean_tokens_backward};

use crate::{assert_close, down, poisoned, random, rng, up};

#[test]
fn mean_tokens_forward_and_backward_match_the_cpu_reference() {
    let test = "mean_tokens_forward_and_backward_match_the_cpu_reference";
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    let s = gpu.stream();
    let kernels = MeanTokensKernels::load(&gpu).unwrap();
    let mut rng = rng(34);
    let shape = (3, 49, 37);
    let (n, t, d) = shape;
    let (x, g) = (random(&mut rng, n * t * d), random(&mut rng, n * d));
    let mut out = poisoned(&gpu, n * d);
    kernels.forward(s, &up(&gpu, &x), &mut out, shape).unwrap();
    assert_close("mean", &down(&gpu, &out), &mean_tokens(&x, shape));
    let mut dx = poisoned(&gpu, n * t * d);
    kernels.backward(s, &up(&gpu, &g), &mut dx, shape).unwrap();
    assert_close(
        "mean backward",
        &down(&gpu, &dx),
        &mean_tokens_backward(&g, shape),
    );
}
