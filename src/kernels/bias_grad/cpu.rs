//! The bias gradient's CPU reference (`kernels/bias_grad.cu`).

/// `db[c] = sum_r dy[r, c]` over `dy` `(rows, cols)`, rows in order, in f64.
pub fn bias_grad(dy: &[f32], cols: usize) -> Vec<f32> {
    let rows = dy.len() / cols.max(1);
    (0..cols)
        .map(|c| (0..rows).map(|r| f64::from(dy[r * cols + c])).sum::<f64>() as f32)
        .collect()
}
