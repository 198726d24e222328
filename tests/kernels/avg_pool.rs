//! `kernels/avg_pool.cu` against `avg_pool::cpu`: DenseNet's transitions (k2 s2 on odd
//! sizes), a padded window counting its padding, global pooling, AlexNet's adaptive 6x6 and
//! windows that overlap or repeat (5 -> 3, 1 -> 6), forward and backward, f32 (1e-5) and bf16
//! (4e-3: one rounding of the output).

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::kernels::avg_pool::cpu::{Windows, avg_pool, avg_pool_backward};
use attnrt::kernels::avg_pool::{AvgPoolKernels, AvgWindows};
use attnrt::kernels::conv2d::Element;
use attnrt::kernels::pool::Pool2d;
use half::bf16;

use crate::assert_within;
use crate::typed::{download, poisoned, random, upload};

fn cases() -> Vec<(AvgWindows, Windows)> {
    let fixed = |batch: usize, [height, width, channels]: [usize; 3], kernel, stride, pad| {
        let p = Pool2d::new(batch, [height, width, channels], kernel, stride, pad);
        (AvgWindows::Fixed(p), Windows::fixed(&p).unwrap())
    };
    let adaptive = |input: [usize; 4], out: [usize; 2]| {
        (
            AvgWindows::Adaptive { input, out },
            Windows::adaptive(input, out).unwrap(),
        )
    };
    vec![
        fixed(2, [9, 7, 40], 2, 2, 0),
        fixed(1, [8, 8, 33], 2, 2, 0),
        fixed(2, [7, 6, 5], 3, 2, 1),
        adaptive([3, 7, 7, 64], [1, 1]),
        adaptive([2, 13, 13, 17], [6, 6]),
        adaptive([1, 5, 1, 3], [3, 6]),
    ]
}

#[test]
fn avg_pool_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("avg_pool_matches_the_cpu_reference") else {
        return;
    };
    let kernels = AvgPoolKernels::load(&gpu).unwrap();
    let mut rng = crate::rng(43);
    for (gw, cw) in cases() {
        for bf in [false, true] {
            let run = |rng: &mut _| {
                if bf {
                    one::<bf16>(&gpu, &kernels, &gw, &cw, rng, 4e-3)
                } else {
                    one::<f32>(&gpu, &kernels, &gw, &cw, rng, 1e-5)
                }
            };
            run(&mut rng);
        }
    }
}

fn one<T: Element>(
    gpu: &attnrt::gpu::Gpu,
    kernels: &AvgPoolKernels,
    gw: &AvgWindows,
    cw: &Windows,
    rng: &mut rand_chacha::ChaCha8Rng,
    tol: f64,
) {
    let s = gpu.stream();
    let x = random::<T>(rng, gw.input_len());
    let mut y = poisoned::<T>(gpu, gw.output_len());
    kernels
        .forward(s, gw, &upload::<T>(gpu, &x), &mut y)
        .unwrap();
    let what = format!("{gw:?} {}", T::NAME);
    assert_within(
        &format!("{what} forward"),
        &download(gpu, &y),
        &avg_pool(cw, &x).unwrap(),
        tol,
    );
    let dy = random::<T>(rng, gw.output_len());
    let mut dx = poisoned::<T>(gpu, gw.input_len());
    kernels
        .backward(s, gw, &upload::<T>(gpu, &dy), &mut dx)
        .unwrap();
    let want = avg_pool_backward(cw, &dy).unwrap();
    assert_within(&format!("{what} backward"), &download(gpu, &dx), &want, tol);
}
