//! Softmax's CPU reference (`kernels/softmax.cu`): rows of `cols` values, f64 sums.

/// Softmax of each row of `s`, in place.
pub fn softmax(s: &mut [f32], cols: usize) {
    for row in s.chunks_mut(cols) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
        for v in row.iter_mut() {
            *v = (f64::from(*v - max).exp() / sum) as f32;
        }
    }
}

/// The backward in place: `dp = scale * p * (dp - sum_k p_k dp_k)` per row.
pub fn softmax_backward(p: &[f32], dp: &mut [f32], cols: usize, scale: f32) {
    for (pr, dr) in p.chunks(cols).zip(dp.chunks_mut(cols)) {
        let inner: f64 = pr
            .iter()
            .zip(dr.iter())
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        for (d, &pv) in dr.iter_mut().zip(pr) {
            *d = (f64::from(scale) * f64::from(pv) * (f64::from(*d) - inner)) as f32;
        }
    }
}
