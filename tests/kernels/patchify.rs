//! `kernels/patchify.cu` against `patchify::cpu`: a permutation, so exactly.

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::kernels::patchify::cpu::patchify;
use attnrt::kernels::patchify::{Patches, PatchifyKernels};

use crate::{down, poisoned, random, rng, to_bits, up};

#[test]
fn patchify_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("patchify_matches_the_cpu_reference") else {
        return;
    };
    let kernels = PatchifyKernels::load(&gpu).unwrap();
    let mut rng = rng(35);
    for patch in [2, 4, 8] {
        let images = Patches {
            n: 3,
            channels: 3,
            side: 32,
            patch,
        };
        let x = random(&mut rng, images.values());
        let mut out = poisoned(&gpu, images.values());
        kernels
            .run(gpu.stream(), &up(&gpu, &x), &mut out, images)
            .unwrap();
        assert_eq!(
            to_bits(&down(&gpu, &out)),
            to_bits(&patchify(&x, images)),
            "patch {patch}"
        );
    }
}
