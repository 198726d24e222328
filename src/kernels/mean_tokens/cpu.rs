//! The token mean's CPU reference (`kernels/mean_tokens.cu`): `x` `(n * t, d)`, `out`
//! `(n, d)`.

/// `out[img, c] = mean over the image's t tokens of x[img * t + tok, c]` (an f64 sum).
pub fn mean_tokens(x: &[f32], (n, t, d): (usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0f32; n * d];
    for s in 0..n {
        for i in 0..d {
            let v: f64 = (0..t).map(|j| f64::from(x[(s * t + j) * d + i])).sum();
            out[s * d + i] = (v / t as f64) as f32;
        }
    }
    out
}

/// The backward: `dx[img * t + tok, c] = dout[img, c] / t`.
pub fn mean_tokens_backward(dout: &[f32], (n, t, d): (usize, usize, usize)) -> Vec<f32> {
    let mut dx = vec![0.0f32; n * t * d];
    for (row, v) in dx.chunks_mut(d).enumerate() {
        let s = row / t;
        v.iter_mut()
            .zip(&dout[s * d..(s + 1) * d])
            .for_each(|(a, g)| *a = g / t as f32);
    }
    dx
}
