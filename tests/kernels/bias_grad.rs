//! `kernels/bias_grad.cu` against `bias_grad::cpu` (f32 column sums against f64 ones).

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::kernels::bias_grad::BiasGradKernels;
use attnrt::kernels::bias_grad::cpu::bias_grad;

use crate::{assert_close, down, poisoned, random, rng, up};

#[test]
fn bias_grad_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("bias_grad_matches_the_cpu_reference") else {
        return;
    };
    let kernels = BiasGradKernels::load(&gpu).unwrap();
    let mut rng = rng(38);
    let (rows, cols) = (131, 300);
    let dy = random(&mut rng, rows * cols);
    let mut db = poisoned(&gpu, cols);
    kernels
        .run(gpu.stream(), &up(&gpu, &dy), &mut db, rows, cols)
        .unwrap();
    assert_close("bias grad", &down(&gpu, &db), &bias_grad(&dy, cols));
}
