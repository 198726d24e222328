//! `kernels/elementwise.cu` against `elementwise::cpu`: single f32 operations, so exactly.

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::kernels::elementwise::ElementwiseKernels;
use attnrt::kernels::elementwise::cpu::{add, add_periodic, relu_backward};

use crate::{down, random, rng, to_bits, up};

#[test]
fn elementwise_ops_match_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("elementwise_ops_match_the_cpu_reference") else {
        return;
    };
    let s = gpu.stream();
    let kernels = ElementwiseKernels::load(&gpu).unwrap();
    let mut rng = rng(37);
    let (n, period) = (10_005, 115);
    let (y, x, pos) = (
        random(&mut rng, n),
        random(&mut rng, n),
        random(&mut rng, period),
    );

    let mut want = y.clone();
    add(&mut want, &x);
    let mut dy = up(&gpu, &y);
    kernels.add(s, &mut dy, &up(&gpu, &x), n).unwrap();
    assert_eq!(to_bits(&down(&gpu, &dy)), to_bits(&want), "add");

    let mut want = y.clone();
    add_periodic(&mut want, &pos);
    let mut dy = up(&gpu, &y);
    kernels
        .add_periodic(s, &mut dy, &up(&gpu, &pos), n, period)
        .unwrap();
    assert_eq!(to_bits(&down(&gpu, &dy)), to_bits(&want), "add_periodic");

    // x as the ReLU's output: about half its values are not positive.
    let mut want = y.clone();
    relu_backward(&mut want, &x);
    let mut dy = up(&gpu, &y);
    kernels.relu_backward(s, &mut dy, &up(&gpu, &x), n).unwrap();
    assert_eq!(to_bits(&down(&gpu, &dy)), to_bits(&want), "relu_backward");
}
