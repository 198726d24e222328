//! The ViT classifier: its configuration, parameter layout, and forward/backward on the CPU
//! (f32 storage, f64 accumulation), the reference for a GPU version.
//!
//! An image `[C, S, S]` is cut into `(S/P)^2` patches of `C*P*P` values (channel-major within
//! a patch), each embedded by a linear layer, plus a learned position embedding. Then `depth`
//! pre-norm encoder blocks: `h = x + proj(attn(LN1(x)))`, `x' = h + fc2(gelu(fc1(LN2(h))))`,
//! with standard multi-head self-attention over all tokens. A final LayerNorm, the mean over
//! tokens, and a linear head give the logits. GELU is the tanh approximation.

use super::cpu::ShardStats;
use super::data::ImageShape;
use super::model::Layout;

/// A ViT's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VitConfig {
    pub image: ImageShape,
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp: usize,
    pub classes: usize,
}

impl VitConfig {
    pub fn tokens(&self) -> usize {
        (self.image.height / self.patch) * (self.image.width / self.patch)
    }
    pub fn patch_dim(&self) -> usize {
        self.image.channels * self.patch * self.patch
    }
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
}

/// Offsets of one block's tensors in the flat parameter vector.
#[derive(Clone, Copy, Debug)]
pub struct BlockOffsets {
    pub ln1_g: usize,
    pub ln1_b: usize,
    pub qkv_w: usize,
    pub qkv_b: usize,
    pub proj_w: usize,
    pub proj_b: usize,
    pub ln2_g: usize,
    pub ln2_b: usize,
    pub fc1_w: usize,
    pub fc1_b: usize,
    pub fc2_w: usize,
    pub fc2_b: usize,
}

/// Offsets of every tensor.
#[derive(Clone, Debug)]
pub struct VitOffsets {
    pub patch_w: usize,
    pub patch_b: usize,
    pub pos: usize,
    pub blocks: Vec<BlockOffsets>,
    pub norm_g: usize,
    pub norm_b: usize,
    pub head_w: usize,
    pub head_b: usize,
}

/// The layout and the offsets, built together so they cannot disagree.
pub fn layout(c: &VitConfig) -> (Layout, VitOffsets) {
    let mut l = Layout::default();
    let d = c.dim;
    let patch_w = l.push("patch.weight".into(), vec![d, c.patch_dim()]);
    let patch_b = l.push("patch.bias".into(), vec![d]);
    let pos = l.push("pos".into(), vec![c.tokens(), d]);
    let blocks = (0..c.depth)
        .map(|i| {
            let mut p = |name: &str, shape: Vec<usize>| l.push(format!("block{i}.{name}"), shape);
            BlockOffsets {
                ln1_g: p("ln1.weight", vec![d]),
                ln1_b: p("ln1.bias", vec![d]),
                qkv_w: p("attn.qkv.weight", vec![3 * d, d]),
                qkv_b: p("attn.qkv.bias", vec![3 * d]),
                proj_w: p("attn.proj.weight", vec![d, d]),
                proj_b: p("attn.proj.bias", vec![d]),
                ln2_g: p("ln2.weight", vec![d]),
                ln2_b: p("ln2.bias", vec![d]),
                fc1_w: p("mlp.fc1.weight", vec![c.mlp, d]),
                fc1_b: p("mlp.fc1.bias", vec![c.mlp]),
                fc2_w: p("mlp.fc2.weight", vec![d, c.mlp]),
                fc2_b: p("mlp.fc2.bias", vec![d]),
            }
        })
        .collect();
    let norm_g = l.push("norm.weight".into(), vec![d]);
    let norm_b = l.push("norm.bias".into(), vec![d]);
    let head_w = l.push("head.weight".into(), vec![c.classes, d]);
    let head_b = l.push("head.bias".into(), vec![c.classes]);
    (
        l,
        VitOffsets {
            patch_w,
            patch_b,
            pos,
            blocks,
            norm_g,
            norm_b,
            head_w,
            head_b,
        },
    )
}

const LN_EPS: f64 = 1e-5;

/// Cuts `n` images (`[C, S, S]` each) into patch rows `[n * tokens, patch_dim]`.
pub fn patchify(c: &VitConfig, x: &[f32], n: usize) -> Vec<f32> {
    let (ch, s, p) = (c.image.channels, c.image.width, c.patch);
    let per_row = s / p;
    let mut out = vec![0.0f32; n * c.tokens() * c.patch_dim()];
    for (row, o) in out.chunks_mut(c.patch_dim()).enumerate() {
        let (img, tok) = (row / c.tokens(), row % c.tokens());
        let (py, px) = (tok / per_row, tok % per_row);
        let image = &x[img * c.image.features()..];
        for k in 0..ch {
            for dy in 0..p {
                for dx in 0..p {
                    o[(k * p + dy) * p + dx] = image[(k * s + py * p + dy) * s + px * p + dx];
                }
            }
        }
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// `y = x W^T + b`, x: `rows x din`, W: `dout x din`.
fn linear(x: &[f32], din: usize, w: &[f32], b: &[f32], dout: usize) -> Vec<f32> {
    let rows = x.len() / din;
    let mut y = vec![0.0f32; rows * dout];
    for r in 0..rows {
        let xr = &x[r * din..(r + 1) * din];
        for o in 0..dout {
            y[r * dout + o] = (dot(xr, &w[o * din..(o + 1) * din]) + f64::from(b[o])) as f32;
        }
    }
    y
}

/// Adds `dW += dy^T x`, `db += sum(dy)` into `g` at the given offsets; returns `dx = dy W`.
fn linear_back(
    x: &[f32],
    din: usize,
    w: &[f32],
    dout: usize,
    dy: &[f32],
    g: &mut [f32],
    (wo, bo): (usize, usize),
) -> Vec<f32> {
    let rows = x.len() / din;
    let mut dx = vec![0.0f32; rows * din];
    for o in 0..dout {
        let mut acc = vec![0.0f64; din];
        let mut db = 0.0f64;
        for r in 0..rows {
            let d = f64::from(dy[r * dout + o]);
            db += d;
            for (a, xv) in acc.iter_mut().zip(&x[r * din..(r + 1) * din]) {
                *a += d * f64::from(*xv);
            }
        }
        for (gv, a) in g[wo + o * din..wo + (o + 1) * din].iter_mut().zip(&acc) {
            *gv += *a as f32;
        }
        g[bo + o] += db as f32;
    }
    for r in 0..rows {
        let mut acc = vec![0.0f64; din];
        for o in 0..dout {
            let d = f64::from(dy[r * dout + o]);
            for (a, wv) in acc.iter_mut().zip(&w[o * din..(o + 1) * din]) {
                *a += d * f64::from(*wv);
            }
        }
        for (v, a) in dx[r * din..(r + 1) * din].iter_mut().zip(&acc) {
            *v = *a as f32;
        }
    }
    dx
}

/// LayerNorm over rows of `d`; returns the output, the normalised input and `1/std` per row.
fn layernorm(x: &[f32], d: usize, gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = x.len() / d;
    let (mut y, mut xhat, mut rstd) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; rows]);
    for r in 0..rows {
        let xr = &x[r * d..(r + 1) * d];
        let mean = xr.iter().map(|v| f64::from(*v)).sum::<f64>() / d as f64;
        let var = xr
            .iter()
            .map(|v| (f64::from(*v) - mean).powi(2))
            .sum::<f64>()
            / d as f64;
        let rs = 1.0 / (var + LN_EPS).sqrt();
        rstd[r] = rs as f32;
        for i in 0..d {
            let h = (f64::from(xr[i]) - mean) * rs;
            xhat[r * d + i] = h as f32;
            y[r * d + i] = (h * f64::from(gamma[i]) + f64::from(beta[i])) as f32;
        }
    }
    (y, xhat, rstd)
}

/// LayerNorm's backward: adds the gamma/beta gradients at `(go, bo)`, returns dx.
fn layernorm_back(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    d: usize,
    gamma: &[f32],
    g: &mut [f32],
    (go, bo): (usize, usize),
) -> Vec<f32> {
    let rows = dy.len() / d;
    let mut dx = vec![0.0f32; dy.len()];
    for r in 0..rows {
        let (dyr, hr) = (&dy[r * d..(r + 1) * d], &xhat[r * d..(r + 1) * d]);
        let dh: Vec<f64> = (0..d)
            .map(|i| f64::from(dyr[i]) * f64::from(gamma[i]))
            .collect();
        let mean_dh = dh.iter().sum::<f64>() / d as f64;
        let mean_dh_h = dh
            .iter()
            .zip(hr)
            .map(|(a, h)| a * f64::from(*h))
            .sum::<f64>()
            / d as f64;
        for i in 0..d {
            g[go + i] += (f64::from(dyr[i]) * f64::from(hr[i])) as f32;
            g[bo + i] += dyr[i];
            dx[r * d + i] =
                (f64::from(rstd[r]) * (dh[i] - mean_dh - f64::from(hr[i]) * mean_dh_h)) as f32;
        }
    }
    dx
}

const GELU_K: f64 = 0.797_884_560_802_865_4; // sqrt(2/pi)

fn gelu(x: f32) -> f32 {
    let x = f64::from(x);
    (0.5 * x * (1.0 + (GELU_K * (x + 0.044715 * x * x * x)).tanh())) as f32
}

fn gelu_grad(x: f32) -> f64 {
    let x = f64::from(x);
    let t = (GELU_K * (x + 0.044715 * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * 0.044715 * x * x)
}

/// Multi-head self-attention over `n` sequences of `t` tokens: `qkv` rows are `[q | k | v]`
/// (`3 * dim`), head `h` using columns `h*dh..(h+1)*dh` of each. Returns the concatenated
/// head outputs (`n*t x dim`) and the attention probabilities (`n, heads, t, t`).
fn attention(qkv: &[f32], n: usize, t: usize, heads: usize, dh: usize) -> (Vec<f32>, Vec<f32>) {
    let dim = heads * dh;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut out = vec![0.0f32; n * t * dim];
    let mut probs = vec![0.0f32; n * heads * t * t];
    let at = |s: usize, i: usize, part: usize, h: usize| ((s * t + i) * 3 + part) * dim + h * dh;
    for s in 0..n {
        for h in 0..heads {
            for i in 0..t {
                let q = &qkv[at(s, i, 0, h)..at(s, i, 0, h) + dh];
                let scores: Vec<f64> = (0..t)
                    .map(|j| dot(q, &qkv[at(s, j, 1, h)..at(s, j, 1, h) + dh]) * scale)
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|v| (v - max).exp()).sum();
                let p = &mut probs[((s * heads + h) * t + i) * t..][..t];
                for j in 0..t {
                    p[j] = ((scores[j] - max).exp() / sum) as f32;
                }
                for c in 0..dh {
                    let v: f64 = (0..t)
                        .map(|j| f64::from(p[j]) * f64::from(qkv[at(s, j, 2, h) + c]))
                        .sum();
                    out[(s * t + i) * dim + h * dh + c] = v as f32;
                }
            }
        }
    }
    (out, probs)
}

/// The backward of [`attention`]: the gradient of `qkv` from the output's.
fn attention_back(
    qkv: &[f32],
    probs: &[f32],
    dout: &[f32],
    n: usize,
    t: usize,
    heads: usize,
    dh: usize,
) -> Vec<f32> {
    let dim = heads * dh;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut dqkv = vec![0.0f64; qkv.len()];
    let at = |s: usize, i: usize, part: usize, h: usize| ((s * t + i) * 3 + part) * dim + h * dh;
    for s in 0..n {
        for h in 0..heads {
            for i in 0..t {
                let p = &probs[((s * heads + h) * t + i) * t..][..t];
                let dor = &dout[(s * t + i) * dim + h * dh..][..dh];
                // dP_ij = dO_i . V_j; dV_j += P_ij dO_i
                let dp: Vec<f64> = (0..t)
                    .map(|j| dot(dor, &qkv[at(s, j, 2, h)..at(s, j, 2, h) + dh]))
                    .collect();
                for j in 0..t {
                    for c in 0..dh {
                        dqkv[at(s, j, 2, h) + c] += f64::from(p[j]) * f64::from(dor[c]);
                    }
                }
                // dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik), times the score scale.
                let inner: f64 = (0..t).map(|j| f64::from(p[j]) * dp[j]).sum();
                for j in 0..t {
                    let ds = f64::from(p[j]) * (dp[j] - inner) * scale;
                    for c in 0..dh {
                        dqkv[at(s, i, 0, h) + c] += ds * f64::from(qkv[at(s, j, 1, h) + c]);
                        dqkv[at(s, j, 1, h) + c] += ds * f64::from(qkv[at(s, i, 0, h) + c]);
                    }
                }
            }
        }
    }
    dqkv.into_iter().map(|v| v as f32).collect()
}

/// What one block's backward needs from its forward.
struct BlockCache {
    ln1: (Vec<f32>, Vec<f32>, Vec<f32>),
    qkv: Vec<f32>,
    probs: Vec<f32>,
    attn: Vec<f32>,
    ln2: (Vec<f32>, Vec<f32>, Vec<f32>),
    fc1: Vec<f32>,
    act: Vec<f32>,
}

/// Forward and backward over `n` images; the contract of `cpu::forward_backward`.
pub fn forward_backward(
    c: &VitConfig,
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
    let (_, off) = layout(c);
    let (d, t, pd) = (c.dim, c.tokens(), c.patch_dim());
    let w = |o: usize, len: usize| &params[o..o + len];

    // Embedding.
    let patches = patchify(c, x, n);
    let mut xs = linear(&patches, pd, w(off.patch_w, d * pd), w(off.patch_b, d), d);
    for (row, v) in xs.chunks_mut(d).enumerate() {
        let p = w(off.pos + (row % t) * d, d);
        v.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    // Blocks.
    let mut caches = Vec::with_capacity(c.depth);
    for b in &off.blocks {
        let ln1 = layernorm(&xs, d, w(b.ln1_g, d), w(b.ln1_b, d));
        let qkv = linear(&ln1.0, d, w(b.qkv_w, 3 * d * d), w(b.qkv_b, 3 * d), 3 * d);
        let (attn, probs) = attention(&qkv, n, t, c.heads, c.head_dim());
        let proj = linear(&attn, d, w(b.proj_w, d * d), w(b.proj_b, d), d);
        let h: Vec<f32> = xs.iter().zip(&proj).map(|(a, b)| a + b).collect();
        let ln2 = layernorm(&h, d, w(b.ln2_g, d), w(b.ln2_b, d));
        let fc1 = linear(&ln2.0, d, w(b.fc1_w, c.mlp * d), w(b.fc1_b, c.mlp), c.mlp);
        let act: Vec<f32> = fc1.iter().map(|v| gelu(*v)).collect();
        let fc2 = linear(&act, c.mlp, w(b.fc2_w, d * c.mlp), w(b.fc2_b, d), d);
        let next: Vec<f32> = h.iter().zip(&fc2).map(|(a, b)| a + b).collect();
        xs = next;
        caches.push(BlockCache {
            ln1,
            qkv,
            probs,
            attn,
            ln2,
            fc1,
            act,
        });
    }
    // Head: final norm, mean over tokens, linear.
    let norm = layernorm(&xs, d, w(off.norm_g, d), w(off.norm_b, d));
    let mut pooled = vec![0.0f32; n * d];
    for s in 0..n {
        for i in 0..d {
            let v: f64 = (0..t).map(|j| f64::from(norm.0[(s * t + j) * d + i])).sum();
            pooled[s * d + i] = (v / t as f64) as f32;
        }
    }
    let logits = linear(
        &pooled,
        d,
        w(off.head_w, c.classes * d),
        w(off.head_b, c.classes),
        c.classes,
    );
    let (stats, dlogits) = super::cpu::softmax_xent(&logits, labels, c.classes, scale);

    // Backward.
    let dpooled = linear_back(
        &pooled,
        d,
        w(off.head_w, c.classes * d),
        c.classes,
        &dlogits,
        grads,
        (off.head_w, off.head_b),
    );
    let mut dnorm = vec![0.0f32; n * t * d];
    for (row, v) in dnorm.chunks_mut(d).enumerate() {
        let s = row / t;
        v.iter_mut()
            .zip(&dpooled[s * d..(s + 1) * d])
            .for_each(|(a, g)| *a = g / t as f32);
    }
    let mut dx = layernorm_back(
        &dnorm,
        &norm.1,
        &norm.2,
        d,
        w(off.norm_g, d),
        grads,
        (off.norm_g, off.norm_b),
    );
    for (b, cache) in off.blocks.iter().zip(&caches).rev() {
        // x' = h + fc2(gelu(fc1(LN2(h))))
        let dact = linear_back(
            &cache.act,
            c.mlp,
            w(b.fc2_w, d * c.mlp),
            d,
            &dx,
            grads,
            (b.fc2_w, b.fc2_b),
        );
        let dfc1: Vec<f32> = dact
            .iter()
            .zip(&cache.fc1)
            .map(|(g, v)| (f64::from(*g) * gelu_grad(*v)) as f32)
            .collect();
        let dln2 = linear_back(
            &cache.ln2.0,
            d,
            w(b.fc1_w, c.mlp * d),
            c.mlp,
            &dfc1,
            grads,
            (b.fc1_w, b.fc1_b),
        );
        let dh_norm = layernorm_back(
            &dln2,
            &cache.ln2.1,
            &cache.ln2.2,
            d,
            w(b.ln2_g, d),
            grads,
            (b.ln2_g, b.ln2_b),
        );
        let dh: Vec<f32> = dx.iter().zip(&dh_norm).map(|(a, b)| a + b).collect();
        // h = x + proj(attn(LN1(x)))
        let dattn = linear_back(
            &cache.attn,
            d,
            w(b.proj_w, d * d),
            d,
            &dh,
            grads,
            (b.proj_w, b.proj_b),
        );
        let dqkv = attention_back(
            &cache.qkv,
            &cache.probs,
            &dattn,
            n,
            t,
            c.heads,
            c.head_dim(),
        );
        let dln1 = linear_back(
            &cache.ln1.0,
            d,
            w(b.qkv_w, 3 * d * d),
            3 * d,
            &dqkv,
            grads,
            (b.qkv_w, b.qkv_b),
        );
        let dx_norm = layernorm_back(
            &dln1,
            &cache.ln1.1,
            &cache.ln1.2,
            d,
            w(b.ln1_g, d),
            grads,
            (b.ln1_g, b.ln1_b),
        );
        dx = dh.iter().zip(&dx_norm).map(|(a, b)| a + b).collect();
    }
    // Embedding: position gradient sums over images; patch linear.
    for (row, v) in dx.chunks(d).enumerate() {
        let at = off.pos + (row % t) * d;
        grads[at..at + d]
            .iter_mut()
            .zip(v)
            .for_each(|(g, a)| *g += a);
    }
    linear_back(
        &patches,
        pd,
        w(off.patch_w, d * pd),
        d,
        &dx,
        grads,
        (off.patch_w, off.patch_b),
    );
    stats
}
