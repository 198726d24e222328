//! The element-wise ops' CPU reference (`kernels/elementwise.cu`), in place as the kernels.

/// `y[i] += x[i]`.
pub fn add(y: &mut [f32], x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

/// `y[i] += pos[i % pos.len()]`.
pub fn add_periodic(y: &mut [f32], pos: &[f32]) {
    for chunk in y.chunks_mut(pos.len()) {
        add(chunk, pos);
    }
}

/// `dx[i] = 0` where the ReLU's output `y[i]` is not positive.
pub fn relu_backward(dx: &mut [f32], y: &[f32]) {
    dx.iter_mut()
        .zip(y)
        .filter(|(_, y)| y.is_nan() || **y <= 0.0)
        .for_each(|(d, _)| *d = 0.0);
}

/// `max(a[i] + b[i], 0)`.
pub fn add_relu(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| (x + y).max(0.0)).collect()
}

/// `y[r] = x[r] * dot(x[r], v)` for each row `x[r]` of `v.len()` values (the dot in f64).
pub fn scale_by_dot(x: &[f32], v: &[f32]) -> Vec<f32> {
    x.chunks_exact(v.len())
        .flat_map(|row| {
            let d: f64 = row.iter().zip(v).map(|(&a, &b)| a as f64 * b as f64).sum();
            row.iter().map(move |&a| (a as f64 * d) as f32)
        })
        .collect()
}
