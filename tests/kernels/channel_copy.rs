//! `kernels/channel_copy.cu` against `channel_copy::cpu`: every copy the CNNs make (concat
//! into a channel range, a channel split, the shuffle and its inverse, the flatten), written
//! and accumulated, f32 and bf16. Copies are exact, and an accumulation is one f32 add
//! (rounded once in bf16), so the results are compared bit for bit.

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
    ];
    for copy in copies {
        for accumulate in [false, true] {
            one::<f32>(&gpu, &kernels, &copy, accumulate, &mut rng);
            one::<bf16>(&gpu, &kernels, &copy, accumulate, &mut rng);
        }
    }
}

fn one<T: Element>(
    gpu: &attnrt::gpu::Gpu,
    kernels: &ChannelCopyKernels,
    copy: &Copy2d,
    accumulate: bool,
    rng: &mut rand_chacha::ChaCha8Rng,
) {
    let x = random::<T>(rng, copy.x_len());
    let y0 = random::<T>(rng, copy.y_len());
    let mut want = y0.clone();
    channel_copy(copy, &x, &mut want, accumulate);
    let mut y = upload::<T>(gpu, &y0);
    kernels
        .run(
            gpu.stream(),
            copy,
            &upload::<T>(gpu, &x),
            &mut y,
            accumulate,
        )
        .unwrap();
    assert_eq!(
        to_bits(&download(gpu, &y)),
        to_bits(&rounded::<T>(&want)),
        "{copy:?} accumulate={accumulate} {}",
        T::NAME
    );
}
