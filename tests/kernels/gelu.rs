//! `kernels/gelu.cu` against `gelu::cpu`.

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::kernels::gelu::GeluKernels;
use attnrt::kernels::gelu::cpu::{gelu, gelu_backward};

use crate::{assert_close, down, poisoned, random, rng, up};

#[test]
fn gelu_forward_and_backward_match_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("gelu_forward_and_backward_match_the_cpu_reference") else {
        return;
    };
    let s = gpu.stream();
    let kernels = GeluKernels::load(&gpu).unwrap();
    let mut rng = rng(31);
    let n = 10_007;
    // Inputs over [-4, 4): both tails and the curved middle.
    let x: Vec<f32> = random(&mut rng, n).iter().map(|v| 4.0 * v).collect();
    let dy = random(&mut rng, n);
    let dx = up(&gpu, &x);
    let mut y = poisoned(&gpu, n);
    kernels.forward(s, &dx, &mut y, n).unwrap();
    assert_close("gelu", &down(&gpu, &y), &gelu(&x));
    let mut d = up(&gpu, &dy);
    kernels.backward(s, &dx, &mut d, n).unwrap();
    assert_close("gelu backward", &down(&gpu, &d), &gelu_backward(&x, &dy));
}
