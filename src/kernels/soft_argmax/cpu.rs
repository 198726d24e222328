//! The soft-argmax's CPU reference (`kernels/soft_argmax.cu`), f64 after the scores.

/// The expected cell of `scores` (`cells` a map, `side` cells a row) under its softmax, each
/// cell at `(stride col, stride row)` (no half-cell offset): `(x, y)`.
pub fn soft_argmax(scores: &[f32], side: usize, stride: f64) -> (f64, f64) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = scores.iter().map(|&s| (s as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    let (mut x, mut y) = (0.0, 0.0);
    for (i, p) in e.iter().enumerate() {
        x += p * stride * (i % side) as f64;
        y += p * stride * (i / side) as f64;
    }
    (x / sum, y / sum)
}
