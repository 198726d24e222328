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
