//! `kernels/max_pool.cu` against `max_pool::cpu`: outputs and argmax indices identical (the
//! maximum is one of the inputs, in f32 and in bf16), the backward within f32 rounding (bf16:
//! one rounding of the output).

use attnrt::gpu::{self, testing::gpu_or_skip};
use attnrt::kernels::max_pool::MaxPoolKernels;
use attnrt::kernels::max_pool::cpu::{max_pool, max_pool_backward};
use attnrt::kernels::pool::Pool2d;
use half::bf16;

use crate::{assert_close, down, poisoned, random, rng, up};

/// (batch, channels, h, w, kernel, stride, pad): the stems of ResNet/DenseNet/ShuffleNet
/// (k3 s2 p1) and AlexNet (k3 s2 p0) on odd sizes, disjoint windows, k = 1, a channel count
/// that is not a multiple of a warp.
const SHAPES: [(usize, usize, usize, usize, usize, usize, usize); 5] = [
    (2, 24, 17, 19, 3, 2, 1),
    (3, 64, 15, 15, 3, 2, 0),
    (1, 7, 8, 6, 2, 2, 0),
    (2, 5, 9, 9, 3, 1, 1),
    (1, 3, 5, 4, 1, 2, 0),
];

#[test]
fn max_pool_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("max_pool_matches_the_cpu_reference") else {
        return;
    };
    let s = gpu.stream();
    let kernels = MaxPoolKernels::load(&gpu).unwrap();
    let mut rng = rng(41);
    for (n, c, h, w, k, stride, pad) in SHAPES {
        let pool = Pool2d {
            batch: n,
            channels: c,
            height: h,
            width: w,
            kernel: k,
            stride,
            pad,
        };
        // Negative inputs: zero padding would win every border window.
        let x: Vec<f32> = random(&mut rng, pool.input_len())
            .iter()
            .map(|v| v - 1.5)
            .collect();
        let (want_y, want_idx) = max_pool(&pool, &x).unwrap();
        let m = pool.output_len();
        let mut y = poisoned(&gpu, m);
        let mut idx = s.alloc_zeros::<i32>(m).unwrap();
        kernels
            .forward(s, &pool, &up(&gpu, &x), &mut y, &mut idx)
            .unwrap();
        assert_eq!(down(&gpu, &y), want_y, "{pool} f32 output");
        assert_eq!(
            gpu::download(s, &idx).unwrap(),
            want_idx,
            "{pool} f32 indices"
        );

        let dy = random(&mut rng, m);
        let mut dx = poisoned(&gpu, pool.input_len());
        kernels
            .backward(s, &pool, &up(&gpu, &dy), &idx, &mut dx)
            .unwrap();
        let want_dx = max_pool_backward(&pool, &want_idx, &dy).unwrap();
        assert_close(&format!("{pool} backward"), &down(&gpu, &dx), &want_dx);

        // bf16: the same windows over the rounded inputs.
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let xr: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
        let (want_y, want_idx) = max_pool(&pool, &xr).unwrap();
        let mut yb = s.alloc_zeros::<bf16>(m).unwrap();
        gpu::poison_nan(s, &mut yb).unwrap();
        let xb = gpu::upload(s, &xb).unwrap();
        kernels.forward(s, &pool, &xb, &mut yb, &mut idx).unwrap();
        let got: Vec<f32> = gpu::download(s, &yb)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        assert_eq!(got, want_y, "{pool} bf16 output");
        assert_eq!(
            gpu::download(s, &idx).unwrap(),
            want_idx,
            "{pool} bf16 indices"
        );

        // bf16 backward: f32 sums of the rounded gradients, rounded once.
        let dyb = crate::typed::random::<bf16>(&mut rng, m);
        let mut dxb = crate::typed::poisoned::<bf16>(&gpu, pool.input_len());
        let gdy = crate::typed::upload::<bf16>(&gpu, &dyb);
        kernels.backward(s, &pool, &gdy, &idx, &mut dxb).unwrap();
        let want_dx = max_pool_backward(&pool, &want_idx, &dyb).unwrap();
        crate::assert_within(
            &format!("{pool} bf16 backward"),
            &crate::typed::download(&gpu, &dxb),
            &want_dx,
            4e-3,
        );
    }
}

#[test]
fn max_pool_refuses_bad_shapes_and_short_buffers() {
    let Some(gpu) = gpu_or_skip("max_pool_refuses_bad_shapes_and_short_buffers") else {
        return;
    };
    let s = gpu.stream();
    let kernels = MaxPoolKernels::load(&gpu).unwrap();
    let pool = Pool2d {
        batch: 1,
        channels: 4,
        height: 6,
        width: 6,
        kernel: 3,
        stride: 2,
        pad: 1,
    };
    let x = up(&gpu, &vec![0.0; pool.input_len() - 1]);
    let mut y = poisoned(&gpu, pool.output_len());
    let mut idx = s.alloc_zeros::<i32>(pool.output_len()).unwrap();
    let e = kernels.forward(s, &pool, &x, &mut y, &mut idx).unwrap_err();
    assert!(e.to_string().contains("x has"), "{e}");
    let bad = Pool2d { pad: 2, ..pool };
    let x = up(&gpu, &vec![0.0; pool.input_len()]);
    let e = kernels.forward(s, &bad, &x, &mut y, &mut idx).unwrap_err();
    assert!(e.to_string().contains("padding 2"), "{e}");
}
