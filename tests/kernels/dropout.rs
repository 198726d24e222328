//! `kernels/dropout.cu` against `dropout::cpu`: the same mask bit for bit (any position, any
//! seed), so the f32 results are identical and bf16 ones are the reference's rounded once.

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::kernels::conv2d::Element;
use attnrt::kernels::dropout::DropoutKernels;
use attnrt::kernels::dropout::cpu::dropout;
use half::bf16;

use crate::to_bits;
use crate::typed::{download, random, rounded, upload};

#[test]
fn dropout_draws_the_cpu_mask_bit_for_bit() {
    let Some(gpu) = gpu_or_skip("dropout_draws_the_cpu_mask_bit_for_bit") else {
        return;
    };
    let s = gpu.stream();
    let kernels = DropoutKernels::load(&gpu).unwrap();
    let mut rng = crate::rng(47);
    for (n, p, seed) in [(10_005, 0.5, 7u64), (333, 0.3, u64::MAX - 5), (64, 0.0, 1)] {
        let x = random::<bf16>(&mut rng, n);
        let mut want = x.clone();
        dropout(&mut want, p, seed);
        let mut g = upload::<f32>(&gpu, &x);
        kernels.run(s, &mut g, n, p, seed).unwrap();
        assert_eq!(
            to_bits(&download(&gpu, &g)),
            to_bits(&want),
            "f32 n={n} p={p}"
        );
        let mut g = upload::<bf16>(&gpu, &x);
        kernels.run(s, &mut g, n, p, seed).unwrap();
        let want = rounded::<bf16>(&want);
        assert_eq!(
            to_bits(&download(&gpu, &g)),
            to_bits(&want),
            "{} n={n} p={p}",
            bf16::NAME
        );
    }
}
