//! Softmax cross-entropy's CPU reference (`kernels/softmax_cross_entropy.cu`), f64 sums.

/// What the loss measured over its rows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Loss {
    /// `scale * sum of the rows' cross-entropies`.
    pub loss: f64,
    /// Rows whose first largest logit is the label's.
    pub correct: u64,
}

/// Softmax cross-entropy over rows of `classes` logits: the scaled loss sum and the correct
/// count (the first largest logit wins ties, as in the kernel), and `dlogits =
/// scale * (softmax - onehot)`.
pub fn softmax_cross_entropy(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    scale: f32,
) -> (Loss, Vec<f32>) {
    let mut dy = vec![0.0f32; logits.len()];
    let mut stats = Loss::default();
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
