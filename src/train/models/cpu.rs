//! The CPU implementation of the models' forward and backward passes, composed of the ops' CPU
//! references (`crate::kernels::<op>::cpu`, accumulating in f64). It is the reference the GPU
//! passes are tested against, and a backend of its own, so the trainer, checkpoints and resume
//! run and are tested on machines without a GPU. In bf16 it
//! emulates the GPU's GEMMs: their operands are rounded to bf16 ([`Precision::operand`]),
//! everything else stays f32.

use crate::base::Precision;
use crate::kernels::bias_grad::cpu::bias_grad;
use crate::kernels::elementwise::cpu::relu_backward;
use crate::kernels::linear::cpu::{linear, linear_backward};
use crate::kernels::softmax_cross_entropy::cpu::{Loss, softmax_cross_entropy};
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

impl From<Loss> for ShardStats {
    fn from(l: Loss) -> ShardStats {
        ShardStats {
            loss: l.loss,
            correct: l.correct,
        }
    }
}

/// What a dense model's (MLP, ViT) pass over one non-empty shard reads: [`forward_backward`]'s
/// arguments but the model and the gradient.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DenseShard<'a> {
    pub precision: Precision,
    pub params: &'a [f32],
    pub x: &'a [f32],
    pub labels: &'a [u32],
    pub scale: f32,
}

/// Forward and backward over one shard: `x` is `n x features` row-major, `labels` has `n`
/// entries. Writes the gradient of `scale * sum(cross_entropy)` into `grads` (overwriting it;
/// all zeros for an empty shard). `precision` is that of the linear layers' GEMMs.
pub fn forward_backward(
    model: &ModelSpec,
    precision: Precision,
    params: &[f32],
    x: &[f32],
    labels: &[u32],
    scale: f32,
    grads: &mut [f32],
) -> ShardStats {
    let shard = DenseShard {
        precision,
        params,
        x,
        labels,
        scale,
    };
    match model {
        // The engines run the CNNs through their graph ([`super::cnn::cpu`]), which also
        // gives the batch statistics; here only the loss is wanted.
        ModelSpec::Cnn(c) => {
            let graph = super::cnn::graph(*c);
            match super::cnn::cpu::forward_backward(
                &graph, precision, params, x, labels, scale, 0, grads,
            ) {
                Ok(pass) => pass.stats,
                Err(_) => ShardStats {
                    loss: f64::NAN,
                    correct: 0,
                },
            }
        }
        // No loss and no gradient: the dense passes need a sample.
        _ if labels.is_empty() => {
            grads.fill(0.0);
            ShardStats::default()
        }
        ModelSpec::Mlp { dims } => mlp(dims, &shard, grads),
        ModelSpec::Vit(c) => crate::train::models::vit::forward_backward(c, &shard, grads),
    }
}

fn mlp(dims: &[usize], s: &DenseShard, grads: &mut [f32]) -> ShardStats {
    grads.fill(0.0);
    let (precision, params, n) = (s.precision, s.params, s.labels.len());
    // Offsets of each layer's weight and bias, in the layout's order.
    let mut offsets = Vec::new();
    let mut at = 0;
    for w in dims.windows(2) {
        offsets.push((at, at + w[0] * w[1]));
        at += w[0] * w[1] + w[1];
    }
    let layers = dims.len() - 1;

    // Forward: acts[l] is layer l's input (post-ReLU), acts[layers] the logits.
    let mut acts: Vec<Vec<f32>> = vec![s.x.to_vec()];
    for l in 0..layers {
        let (din, dout) = (dims[l], dims[l + 1]);
        let (wo, bo) = offsets[l];
        let w = precision.operand(&params[wo..wo + din * dout]);
        let b = &params[bo..bo + dout];
        let mut out = linear(&precision.operand(&acts[l]), &w, b, (n, dout, din));
        if l + 1 < layers {
            out.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        acts.push(out);
    }

    let classes = dims[layers];
    let (loss, mut dy) = softmax_cross_entropy(&acts[layers], s.labels, classes, s.scale);

    // Backward.
    for l in (0..layers).rev() {
        let (din, dout) = (dims[l], dims[l + 1]);
        let (wo, bo) = offsets[l];
        // The GEMMs read rounded operands; the bias gradient and ReLU's mask the f32 values.
        let (input, dy_op) = (precision.operand(&acts[l]), precision.operand(&dy));
        let w = precision.operand(&params[wo..wo + din * dout]);
        let (gw, dx) = linear_backward(&input, &w, &dy_op, (n, dout, din), l > 0);
        grads[wo..bo].copy_from_slice(&gw);
        grads[bo..bo + dout].copy_from_slice(&bias_grad(&dy, dout));
        if let Some(mut dx) = dx {
            relu_backward(&mut dx, &acts[l]);
            dy = dx;
        }
    }
    ShardStats::from(loss)
}
