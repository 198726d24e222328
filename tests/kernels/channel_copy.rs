//! `kernels/channel_copy.cu` against `channel_copy::cpu`: every copy the CNNs make (concat
//! into a channel range, a channel split, the shuffle and its inverse, the flatten, a filter's
//! layout change, conv2d's channel-major copies), on both kernels (element-wise, tiled),
//! written and accumulated, between every pair of f32 and bf16. Copies are exact, a conversion
//! to bf16 and an accumulation round once (to nearest even), so the results are compared bit
//! for bit.

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::kernels::channel_copy::cpu::channel_copy;
use attnrt::kernels::channel_copy::{ChannelCopyKernels, Copy2d};
use attnrt::kernels::conv2d::Element;
use half::bf16;

use crate::to_bits;
use crate::typed::{download, random, rounded, upload};

#[test]
fn channel_copy_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("channel_copy_matches_the_cpu_reference") else {
        return;
    };
    let kernels = ChannelCopyKernels::load(&gpu).unwrap();
    let mut rng = crate::rng(53);
    let copies = [
        Copy2d::put(2 * 7 * 9, 96, 64, 32),
        Copy2d::take(5 * 3, 116, 58, 58),
        Copy2d::transpose(3 * 3, 2, 58),
        Copy2d::transpose(3 * 3, 58, 2),
        Copy2d::transpose(2, 6 * 6, 13),
        // A 3x3 filter bank (out 5, in 7) to KRSC and back, and a bias as one row.
        Copy2d::transpose(5, 7, 9),
        Copy2d::transpose(5, 9, 7),
        Copy2d::take(1, 37, 0, 37),
        // Tiled transposes (both sides 16 or more): conv2d's NHWC to NCHW and back with
        // partial tiles, whole tiles, a KRSC bank of 5x5 filters to KCRS, more rows than a
        // grid's y (65,535), and one with offsets and padded rows.
        Copy2d::transpose(2, 9 * 11, 40),
        Copy2d::transpose(2, 40, 9 * 11),
        Copy2d::transpose(3, 32, 64),
        Copy2d::transpose(6, 25, 16),
        Copy2d::transpose(66_000, 16, 17),
        Copy2d {
            rows: 3,
            x_stride: 50 * 20 + 7,
            x_off: 5,
            y_stride: 50 * 20 + 3,
            y_off: 2,
            a: 50,
            b: 20,
        },
    ];
    for copy in copies {
        for accumulate in [false, true] {
            one::<f32, f32>(&gpu, &kernels, &copy, accumulate, &mut rng);
            one::<f32, bf16>(&gpu, &kernels, &copy, accumulate, &mut rng);
            one::<bf16, f32>(&gpu, &kernels, &copy, accumulate, &mut rng);
            one::<bf16, bf16>(&gpu, &kernels, &copy, accumulate, &mut rng);
        }
    }
}

/// One copy from `X` to `Y` against the reference (in f32, rounded once to `Y`).
fn one<X: Element, Y: Element>(
    gpu: &attnrt::gpu::Gpu,
    kernels: &ChannelCopyKernels,
    copy: &Copy2d,
    accumulate: bool,
    rng: &mut rand_chacha::ChaCha8Rng,
) {
    let x = random::<X>(rng, copy.x_len());
    let y0 = random::<Y>(rng, copy.y_len());
    let mut want = y0.clone();
    channel_copy(copy, &x, &mut want, accumulate);
    let mut y = upload::<Y>(gpu, &y0);
    kernels
        .run(
            gpu.stream(),
            copy,
            &upload::<X>(gpu, &x),
            &mut y,
            accumulate,
        )
        .unwrap();
    assert_eq!(
        to_bits(&download(gpu, &y)),
        to_bits(&rounded::<Y>(&want)),
        "{copy:?} accumulate={accumulate} {} to {}",
        X::NAME,
        Y::NAME
    );
}
