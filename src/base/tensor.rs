//! The host tensor every layer shares (model weights, golden files, engine outputs, training
//! checkpoints): a shape and row-major `f32` data, and the one error measure they are compared by.

/// A row-major `f32` tensor on the host. `data.len()` is always the product of `shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from a shape and data. Returns `None` when the lengths disagree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Tensor> {
        (shape.iter().product::<usize>() == data.len()).then_some(Tensor { shape, data })
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// `[2, 3]` for reports.
    pub fn shape_string(&self) -> String {
        shape_string(&self.shape)
    }
}

/// Formats a shape as `[a, b, c]`.
pub fn shape_string(shape: &[usize]) -> String {
    format!("{shape:?}")
}

/// Relative error `||ours - expected||_F / ||expected||_F`, accumulated in f64.
///
/// This is the error measure used everywhere in attnrt (tests, `attnrt-infer --check`):
/// the Frobenius norm of the difference over the Frobenius norm of the expected tensor.
/// When `expected` is all zeros the absolute norm of the difference is returned. Any
/// non-finite value in `ours` gives `f64::INFINITY` (never NaN, so comparisons fail
/// cleanly). Returns `None` when the lengths differ.
pub fn relative_error(ours: &[f32], expected: &[f32]) -> Option<f64> {
    if ours.len() != expected.len() {
        return None;
    }
    let mut diff = 0.0f64;
    let mut norm = 0.0f64;
    for (&a, &b) in ours.iter().zip(expected) {
        if !a.is_finite() {
            return Some(f64::INFINITY);
        }
        let d = a as f64 - b as f64;
        diff += d * d;
        norm += b as f64 * b as f64;
    }
    let diff = diff.sqrt();
    Some(if norm > 0.0 { diff / norm.sqrt() } else { diff })
}
