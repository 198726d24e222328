//! GELU's CPU reference (`kernels/gelu.cu`), the tanh approximation, in f64.

const GELU_K: f64 = 0.797_884_560_802_865_4; // sqrt(2/pi)

/// `gelu(x) = 0.5 x (1 + tanh(K (x + 0.044715 x^3)))` of every value.
pub fn gelu(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| {
            let x = f64::from(v);
            (0.5 * x * (1.0 + (GELU_K * (x + 0.044715 * x * x * x)).tanh())) as f32
        })
        .collect()
}

/// The gradient through GELU: `dy * gelu'(x)` of every value.
pub fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(dy)
        .map(|(&v, &g)| {
            let x = f64::from(v);
            let t = (GELU_K * (x + 0.044715 * x * x * x)).tanh();
            let grad =
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * 0.044715 * x * x);
            (f64::from(g) * grad) as f32
        })
        .collect()
}
