//! The CPU implementation of the models' forward and backward passes. It is the reference the
//! GPU kernels are tested against (accumulating in f64), and a backend of its own, so the
//! trainer, checkpoints and resume run and are tested on machines without a GPU. In bf16 it
//! emulates the GPU's GEMMs: their operands are rounded to bf16 ([`Precision::operand`]),
//! everything else stays f32.

use rayon::prelude::*;

use crate::base::Precision;
use crate::train::models::ModelSpec;

/// What one shard's forward pass measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShardStats {
    /// Sum over the shard's samples of `scale * cross_entropy`; summed over the shards of a
    /// batch with `scale = 1/B` it is the batch's mean loss.
    pub loss: f64,
    /// Samples whose largest logit is the label's.
    pub correct: u64,
}

impl std::ops::AddAssign for ShardStats {
    fn add_assign(&mut self, o: ShardStats) {
        self.loss += o.loss;
        self.correct += o.correct;
    }
}

/// Forward and backward over one shard: `x` is `n x features` row-major, `labels` has `n`
/// entries. Writes the gradient of `scale * sum(cross_entropy)` into `grads` (overwriting it;
/// all zeros for an empty shard).
/// Softmax cross-entropy over rows of `classes` logits: the scaled loss sum, the correct
/// count (the first largest logit wins ties, as in the kernel), and `dlogits =
/// scale * (softmax - onehot)`.
pub fn softmax_xent(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    scale: f32,
) -> (ShardStats, Vec<f32>) {
    let mut dy = vec![0.0f32; logits.len()];
    let mut stats = ShardStats::default();
    for (r, (z, d)) in logits
        .chunks(classes)
        .zip(dy.chunks_mut(classes))
        .enumerate()
    {
        let label = labels[r] as usize;
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = z.iter().map(|&v| f64::from(v - max).exp()).sum();
        stats.loss += f64::from(scale) * (sum.ln() - f64::from(z[label] - max));
        let argmax = z
            .iter()
            .enumerate()
            .fold(0, |best, (i, &v)| if v > z[best] { i } else { best });
        stats.correct += u64::from(argmax == label);
        for (c, g) in d.iter_mut().enumerate() {
            let p = f64::from(z[c] - max).exp() / sum;
            *g = (f64::from(scale) * (p - f64::from(u8::from(c == label)))) as f32;
        }
    }
    (stats, dy)
}

/// `precision` is that of the linear layers' GEMMs.
pub fn forward_backward(
    model: &ModelSpec,
    precision: Precision,
    params: &[f32],
    x: &[f32],
    labels: &[u32],
    scale: f32,
    grads: &mut [f32],
) -> ShardStats {
    match model {
        ModelSpec::Mlp { dims } => mlp(dims, precision, params, x, labels, scale, grads),
        ModelSpec::Vit(c) => crate::train::models::vit::forward_backward(
            c, precision, params, x, labels, scale, grads,
        ),
    }
}

fn mlp(
    dims: &[usize],
    precision: Precision,
    params: &[f32],
    x: &[f32],
    labels: &[u32],
    scale: f32,
    grads: &mut [f32],
) -> ShardStats {
    grads.fill(0.0);
    let n = labels.len();
    if n == 0 {
        return ShardStats::default();
    }
    // Offsets of each layer's weight and bias, in the layout's order.
    let mut offsets = Vec::new();
    let mut at = 0;
    for w in dims.windows(2) {
        offsets.push((at, at + w[0] * w[1]));
        at += w[0] * w[1] + w[1];
    }
    let layers = dims.len() - 1;

    // Forward: acts[l] is layer l's input (post-ReLU), acts[layers] the logits.
    let mut acts: Vec<Vec<f32>> = vec![x.to_vec()];
    for l in 0..layers {
        let (din, dout) = (dims[l], dims[l + 1]);
        let (wo, bo) = offsets[l];
        let w = precision.operand(&params[wo..wo + din * dout]);
        let b = &params[bo..bo + dout];
        let relu = l + 1 < layers;
        let input = precision.operand(&acts[l]);
        let mut out = vec![0.0f32; n * dout];
        out.par_chunks_mut(dout).enumerate().for_each(|(r, row)| {
            let xr = &input[r * din..(r + 1) * din];
            for (o, y) in row.iter_mut().enumerate() {
                let wr = &w[o * din..(o + 1) * din];
                let s: f64 = xr
                    .iter()
                    .zip(wr)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let v = (s + f64::from(b[o])) as f32;
                *y = if relu { v.max(0.0) } else { v };
            }
        });
        acts.push(out);
    }

    let classes = dims[layers];
    let (stats, mut dy) = softmax_xent(&acts[layers], labels, classes, scale);

    // Backward.
    for l in (0..layers).rev() {
        let (din, dout) = (dims[l], dims[l + 1]);
        let (wo, bo) = offsets[l];
        // The GEMMs read rounded operands; the bias gradient and ReLU's mask the f32 values.
        let (input, dy_op) = (precision.operand(&acts[l]), precision.operand(&dy));
        let (gw, gb) = grads[wo..bo + dout].split_at_mut(din * dout);
        // Row-wise accumulation in f64 keeps the memory access contiguous.
        gw.par_chunks_mut(din).enumerate().for_each(|(o, row)| {
            let mut acc = vec![0.0f64; din];
            for r in 0..n {
                let d = f64::from(dy_op[r * dout + o]);
                if d != 0.0 {
                    let xr = &input[r * din..(r + 1) * din];
                    acc.iter_mut()
                        .zip(xr)
                        .for_each(|(a, x)| *a += d * f64::from(*x));
                }
            }
            row.iter_mut().zip(&acc).for_each(|(g, a)| *g = *a as f32);
        });
        for (o, g) in gb.iter_mut().enumerate() {
            *g = (0..n).map(|r| f64::from(dy[r * dout + o])).sum::<f64>() as f32;
        }
        if l > 0 {
            let w = precision.operand(&params[wo..wo + din * dout]);
            let relu_out = &acts[l];
            let mut dx = vec![0.0f32; n * din];
            dx.par_chunks_mut(din).enumerate().for_each(|(r, row)| {
                let mut acc = vec![0.0f64; din];
                for o in 0..dout {
                    let d = f64::from(dy_op[r * dout + o]);
                    let wr = &w[o * din..(o + 1) * din];
                    acc.iter_mut()
                        .zip(wr)
                        .for_each(|(a, w)| *a += d * f64::from(*w));
                }
                // ReLU's gradient: zero where its output was zero.
                for (i, g) in row.iter_mut().enumerate() {
                    if relu_out[r * din + i] > 0.0 {
                        *g = acc[i] as f32;
                    }
                }
            });
            dy = dx;
        }
    }
    stats
}
