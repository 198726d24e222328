//! `kernels/cast.cu` against the host's rounding (`Precision::operand`'s, `half::bf16`).

use attnrt::gpu::{self, testing::gpu_or_skip};
use attnrt::kernels::cast::CastKernels;

use crate::{random, rng};

/// The bf16 cast rounds exactly as the host (`half::bf16::from_f32`, which the CPU emulation,
/// `Precision::operand`, uses): ties to even, NaN, infinities, signed zeros, subnormals, the
/// largest values, and random ones, from every alignment (the four-wide and the one-wide
/// paths).
#[test]
fn cast_bf16_rounds_exactly_as_the_host() {
    let Some(gpu) = gpu_or_skip("cast_bf16_rounds_exactly_as_the_host") else {
        return;
    };
    let s = gpu.stream();
    let kernels = CastKernels::load(&gpu).unwrap();
    let mut rng = rng(11);
    let mut v = vec![
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -(1.0 + 1.0 / 256.0),
        f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        f32::from_bits(1),
        f32::from_bits(0x0000_8000),
        f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
    ];
    v.extend(random(&mut rng, 1003).iter().map(|x| x * 1e3));
    let x = gpu::upload(s, &v).unwrap();
    for at in 0..4 {
        let n = v.len() - at;
        let mut y = s.alloc_zeros::<half::bf16>(n).unwrap();
        gpu::poison_nan(s, &mut y).unwrap();
        kernels.bf16(s, &x.slice(at..), &mut y, n).unwrap();
        let got = gpu::download(s, &y).unwrap();
        for (i, (g, h)) in got.iter().zip(&v[at..]).enumerate() {
            let want = half::bf16::from_f32(*h);
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "offset {at} [{i}]: {h:e} -> {g} vs {want}"
            );
        }
    }
}

/// bf16 -> f32 is exact: the host's `half::bf16::to_f32`, bit for bit.
#[test]
fn cast_f32_widens_exactly() {
    let Some(gpu) = gpu_or_skip("cast_f32_widens_exactly") else {
        return;
    };
    let s = gpu.stream();
    let kernels = CastKernels::load(&gpu).unwrap();
    let mut rng = rng(12);
    let v: Vec<half::bf16> = random(&mut rng, 1001)
        .iter()
        .map(|&x| half::bf16::from_f32(x * 1e3))
        .chain([half::bf16::NAN, half::bf16::INFINITY, half::bf16::NEG_ZERO])
        .collect();
    let x = gpu::upload(s, &v).unwrap();
    let mut y = crate::poisoned(&gpu, v.len());
    kernels.f32(s, &x, &mut y, v.len()).unwrap();
    let got = crate::down(&gpu, &y);
    for (g, h) in got.iter().zip(&v) {
        assert_eq!(g.to_bits(), h.to_f32().to_bits(), "{h}");
    }
}
