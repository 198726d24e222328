//! The optimizers' CPU reference (`kernels/optimizer.cu`), operation for operation in f32 as
//! the kernels compute, so the CPU and GPU trainers take the same steps.

use super::{AdamW, Sgd};

/// One SGD step over `params` with velocity `v`.
pub fn sgd(params: &mut [f32], grads: &[f32], v: &mut [f32], s: Sgd) {
    for i in 0..params.len() {
        let g = grads[i] + s.weight_decay * params[i];
        v[i] = s.momentum * v[i] + g;
        params[i] -= s.lr * v[i];
    }
}

/// One AdamW step over `params` with moments `m` and `v`.
pub fn adamw(params: &mut [f32], grads: &[f32], (m, v): (&mut [f32], &mut [f32]), s: AdamW) {
    for i in 0..params.len() {
        let g = grads[i];
        m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * g;
        v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * g * g;
        let update = (m[i] / s.c1) / ((v[i] / s.c2).sqrt() + s.eps);
        params[i] -= s.lr * (s.weight_decay * params[i] + update);
    }
}
