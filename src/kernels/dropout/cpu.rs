//! The CPU reference of `dropout`: value `i` is kept when the counter-based hash of
//! `(seed, i)` falls at or above `p`, so a mask depends only on the seed and the position (any
//! thread order, any device draws the same one). The masks differ from PyTorch's, which draws
//! from its own generator.

/// Whether value `i` survives: SplitMix64 of `seed` and `i`, as a uniform in [0, 1).
pub fn keep(seed: u64, i: usize, p: f32) -> bool {
    let mut z = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) >= p
}

/// `x` with the values of dropped positions zeroed and the rest scaled by `1 / (1 - p)`, in
/// place. The backward pass is the same call on the gradient (same seed and `p`).
pub fn dropout(x: &mut [f32], p: f32, seed: u64) {
    if p <= 0.0 {
        return;
    }
    let scale = 1.0 / (1.0 - p);
    for (i, v) in x.iter_mut().enumerate() {
        *v = if keep(seed, i, p) { *v * scale } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_seeded_and_drop_about_p() {
        let mut a = vec![1.0f32; 10_000];
        dropout(&mut a, 0.5, 7);
        let kept = a.iter().filter(|&&v| v != 0.0).count();
        assert!((4_700..5_300).contains(&kept), "{kept}");
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        let mut b = vec![1.0f32; 10_000];
        dropout(&mut b, 0.5, 7);
        assert_eq!(a, b);
        let mut c = vec![1.0f32; 10_000];
        dropout(&mut c, 0.5, 8);
        assert_ne!(a, c);
        let mut d = vec![3.0f32; 4];
        dropout(&mut d, 0.0, 1);
        assert_eq!(d, vec![3.0; 4]);
    }
}
