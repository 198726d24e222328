//! `kernels/softmax_cross_entropy.cu` against `softmax_cross_entropy::cpu`.

use attnrt::gpu::{self, testing::gpu_or_skip};
use attnrt::kernels::softmax_cross_entropy::SoftmaxCrossEntropyKernels;
use attnrt::kernels::softmax_cross_entropy::cpu::softmax_cross_entropy;
use rand::Rng;

use crate::{assert_close, down, poisoned, random, rng, up};

#[test]
fn softmax_cross_entropy_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("softmax_cross_entropy_matches_the_cpu_reference") else {
        return;
    };
    let s = gpu.stream();
    let kernels = SoftmaxCrossEntropyKernels::load(&gpu).unwrap();
    let mut rng = rng(33);
    let (rows, classes, scale) = (37, 45, 0.125);
    let logits: Vec<f32> = random(&mut rng, rows * classes)
        .iter()
        .map(|v| 3.0 * v)
        .collect();
    let labels: Vec<u32> = (0..rows)
        .map(|_| rng.random_range(0..classes as u32))
        .collect();
    let (want, want_d) = softmax_cross_entropy(&logits, &labels, classes, scale);
    let dl = up(&gpu, &logits);
    let dlabels = gpu::upload(s, &labels).unwrap();
    let mut dd = poisoned(&gpu, rows * classes);
    let mut stats = up(&gpu, &[0.0, 0.0]);
    kernels
        .run(
            s,
            &dl,
            &dlabels,
            &mut dd,
            &mut stats,
            (rows, classes),
            scale,
        )
        .unwrap();
    assert_close("dlogits", &down(&gpu, &dd), &want_d);
    let stats = down(&gpu, &stats);
    let loss = f64::from(stats[0]);
    assert!(
        (loss - want.loss).abs() <= 1e-5 * want.loss.abs(),
        "loss {loss} vs {}",
        want.loss
    );
    assert_eq!(stats[1] as u64, want.correct);
}
