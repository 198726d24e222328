//! `kernels/soft_argmax.cu` against `soft_argmax::cpu`: both sum in f64 (in other orders),
//! so the corners agree to about 1e-12 of the crop; bf16 scores are widened exactly.

use attnrt::gpu::{self, testing::gpu_or_skip};
use attnrt::kernels::soft_argmax::SoftArgmaxKernels;
use attnrt::kernels::soft_argmax::cpu::soft_argmax;
use half::bf16;

use crate::{random, rng, up};

#[test]
fn soft_argmax_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("soft_argmax_matches_the_cpu_reference") else {
        return;
    };
    let s = gpu.stream();
    let kernels = SoftArgmaxKernels::load(&gpu).unwrap();
    let mut rng = rng(39);
    // The tracker's 24 x 24 maps, a peaked pair, and maps smaller than a block.
    for (maps, side, scale) in [(2, 24, 3.0f32), (2, 24, 40.0), (3, 5, 1.0)] {
        let scores: Vec<f32> = random(&mut rng, maps * side * side)
            .iter()
            .map(|v| v * scale)
            .collect();
        let check = |got: &[f64], scores: &[f32], what: &str| {
            for m in 0..maps {
                let cells = &scores[m * side * side..(m + 1) * side * side];
                let (x, y) = soft_argmax(cells, side, 16.0);
                for (g, w) in [(got[2 * m], x), (got[2 * m + 1], y)] {
                    assert!(
                        (g - w).abs() <= 1e-9 * (16 * side) as f64,
                        "{what} {maps}x{side} map {m}: {g} vs {w}"
                    );
                }
            }
        };
        let mut out = gpu::upload(s, &vec![f64::NAN; 2 * maps]).unwrap();
        kernels
            .run(s, &up(&gpu, &scores), maps, side, 16.0, &mut out)
            .unwrap();
        check(&gpu::download(s, &out).unwrap(), &scores, "f32");
        let b: Vec<bf16> = scores.iter().map(|&v| bf16::from_f32(v)).collect();
        let widened: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
        let mut out = gpu::upload(s, &vec![f64::NAN; 2 * maps]).unwrap();
        kernels
            .run(s, &gpu::upload(s, &b).unwrap(), maps, side, 16.0, &mut out)
            .unwrap();
        check(&gpu::download(s, &out).unwrap(), &widened, "bf16");
    }
}
