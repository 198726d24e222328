//! The ViT classifier: its configuration, parameter layout, and forward/backward on the CPU
//! (f32 storage, f64 accumulation), the reference for a GPU version.
//!
//! An image `[C, S, S]` is cut into `(S/P)^2` patches of `C*P*P` values (channel-major within
//! a patch), each embedded by a linear layer, plus a learned position embedding. Then `depth`
//! pre-norm encoder blocks: `h = x + proj(attn(LN1(x)))`, `x' = h + fc2(gelu(fc1(LN2(h))))`,
//! with standard multi-head self-attention over all tokens, or (`windows`) CSWinTT's cyclic-shift
//! window attention. A final LayerNorm, the mean over tokens, and a linear head give the
//! logits. GELU is the tanh approximation.
//!
//! Window attention (`docs/TRAINING.md`; the exact semantics are CSWinTT's, spec encoder steps
//! 2-6): the `G x G` token grid (`G = 32 / P`) is CSWinTT's search region on its own. Head `h`
//! gets window `w = sides[h % sides.len()]`, `sides` being those of CSWinTT's `[1, 2, 4, 8]`
//! that divide `G` (for `G = 8` all four, as CSWinTT's heads cycle), and the shift `w / 2`
//! when `h >= heads / 2` (CSWinTT's rule; `w == 1` never shifts). Scores are
//! `(q.k * hd^-0.5 + sr(a, e)) / (w*w)` over the key windows' `w*w` cyclic shifts, softmax
//! over all `G*G` columns. No padding mask (every pixel is real) and no relative-position
//! bias (the ViT has its learned position embedding). Standard attention is the `w == 1`
//! case of the same code.

use crate::base::Precision;
use crate::cswintt::plan::{HeadPlan, Region};
use crate::train::data::ImageShape;
use crate::train::models::Layout;
use crate::train::models::cpu::ShardStats;

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
    /// CSWinTT's cyclic-shift window attention instead of standard multi-head attention.
    pub windows: bool,
}

/// The window sides a head may get: CSWinTT's, whose largest (64 pixels) is also the limit of
/// the inference kernel the GPU forward reuses.
const WINDOW_SIDES: [usize; 4] = [1, 2, 4, 8];

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
    /// Tokens per grid side.
    pub fn grid(&self) -> usize {
        self.image.width / self.patch
    }

    /// Head `h`'s window side and shift (see the module docs); `(1, 0)` without windows.
    pub fn head_window(&self, h: usize) -> (usize, usize) {
        if !self.windows {
            return (1, 0);
        }
        let sides: Vec<usize> = WINDOW_SIDES
            .into_iter()
            .filter(|w| self.grid().is_multiple_of(*w))
            .collect();
        let w = sides[h % sides.len()];
        (w, if h >= self.heads / 2 { w / 2 } else { 0 })
    }

    /// Every head's partition of the token grid, as CSWinTT's [`HeadPlan`]: the grid is the
    /// search region (rolled by the shift), the two template regions are empty.
    pub fn head_plans(&self) -> Vec<HeadPlan> {
        let (g, hd) = (self.grid(), self.head_dim());
        let empty = |name| Region {
            name,
            side: 0,
            token_offset: 0,
            window_offset: 0,
            windows_per_side: 0,
            rolled: false,
        };
        (0..self.heads)
            .map(|head| {
                let (w, shift) = self.head_window(head);
                HeadPlan {
                    head,
                    w,
                    shift,
                    hd,
                    channel_offset: head * hd,
                    l_all: g * g,
                    l: g * g / (w * w),
                    regions: [
                        empty("template1"),
                        empty("template2"),
                        Region {
                            name: "search",
                            side: g,
                            token_offset: 0,
                            window_offset: 0,
                            windows_per_side: g / w,
                            rolled: true,
                        },
                    ],
                    has_rel_bias: false,
                }
            })
            .collect()
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

/// `y = x W^T + b`, x: `rows x din`, W: `dout x din`; the product in `pr`.
fn linear(pr: Precision, x: &[f32], din: usize, w: &[f32], b: &[f32], dout: usize) -> Vec<f32> {
    let (x, w) = (pr.operand(x), pr.operand(w));
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
/// The products in `pr`; the bias gradient sums the f32 `dy`.
#[allow(clippy::too_many_arguments)]
fn linear_back(
    pr: Precision,
    x: &[f32],
    din: usize,
    w: &[f32],
    dout: usize,
    dy: &[f32],
    g: &mut [f32],
    (wo, bo): (usize, usize),
) -> Vec<f32> {
    let (x, w, dy_op) = (pr.operand(x), pr.operand(w), pr.operand(dy));
    let rows = x.len() / din;
    let mut dx = vec![0.0f32; rows * din];
    for o in 0..dout {
        let mut acc = vec![0.0f64; din];
        let mut db = 0.0f64;
        for r in 0..rows {
            db += f64::from(dy[r * dout + o]);
            let d = f64::from(dy_op[r * dout + o]);
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
            let d = f64::from(dy_op[r * dout + o]);
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

/// One head's view of an image's token grid: which token sits at each slot of its window
/// partition, and the `sr(a, e)` term of each score column. Standard attention is the
/// `w == 1` case: slot = token, column = key token, `sr = 0`, no division.
struct HeadView<'a> {
    plan: &'a HeadPlan,
    slot_token: Vec<u32>,
    sr: Vec<f32>,
}

impl<'a> HeadView<'a> {
    fn new(plan: &'a HeadPlan) -> HeadView<'a> {
        HeadView {
            plan,
            slot_token: plan.partition_index(),
            sr: plan.sr_table(),
        }
    }

    /// The `(query token, key token)` pairs whose dot products make score column `col` of
    /// query window `i`: query slot `i*ww + pos` against position `pos` of key window `l`
    /// rolled by `(a, e)`. The `pos`-th pair also carries value and output position `pos`.
    fn pairs(&self, i: usize, col: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (l, a, e) = self.plan.column(col);
        let ww = self.plan.ww();
        (0..ww).map(move |pos| {
            let key = l * ww + self.plan.shifted_pos(pos, a, e);
            (
                self.slot_token[i * ww + pos] as usize,
                self.slot_token[key] as usize,
            )
        })
    }

    /// `(scale * q.k + sr) / ww`, CSWinTT's score (spec, encoder step 5) from `q.k`.
    fn score(&self, col: usize, qk: f64, scale: f64) -> f64 {
        let ww = self.plan.ww();
        (qk * scale + f64::from(self.sr[col % ww])) / ww as f64
    }
}

/// Where head `h`'s `part` (0 q, 1 k, 2 v) of token `tok` of image `s` starts in `qkv` rows
/// of `[q | k | v]` (`3 * dim`), head `h` using columns `h*dh..(h+1)*dh` of each.
#[derive(Clone, Copy)]
struct QkvIndex {
    t: usize,
    dim: usize,
    dh: usize,
}

impl QkvIndex {
    fn at(&self, s: usize, tok: usize, part: usize, h: usize) -> usize {
        ((s * self.t + tok) * 3 + part) * self.dim + h * self.dh
    }
    /// Where the head's channels of token `tok` start in `[n*t, dim]` rows.
    fn row(&self, s: usize, tok: usize, h: usize) -> usize {
        (s * self.t + tok) * self.dim + h * self.dh
    }
}

/// Self-attention over `n` images of `t` tokens, head `h` windowed by `plans[h]` (every
/// `w == 1` for standard multi-head attention). Each query window's scores run over all `t`
/// columns. Returns the concatenated, window-reversed head outputs (`n*t x dim`) and the
/// probabilities (`n, heads, t, t`; query window `i` is row `i`, rows past `L` unused).
fn attention(qkv: &[f32], n: usize, t: usize, plans: &[HeadPlan]) -> (Vec<f32>, Vec<f32>) {
    let (heads, dh) = (plans.len(), plans[0].hd);
    let ix = QkvIndex {
        t,
        dim: heads * dh,
        dh,
    };
    let scale = 1.0 / (dh as f64).sqrt();
    let mut out = vec![0.0f32; n * t * ix.dim];
    let mut probs = vec![0.0f32; n * heads * t * t];
    for (h, plan) in plans.iter().enumerate() {
        let view = HeadView::new(plan);
        let ww = plan.ww();
        for s in 0..n {
            for i in 0..plan.l {
                let scores: Vec<f64> = (0..t)
                    .map(|col| {
                        let qk: f64 = view
                            .pairs(i, col)
                            .map(|(qt, kt)| {
                                dot(
                                    &qkv[ix.at(s, qt, 0, h)..][..dh],
                                    &qkv[ix.at(s, kt, 1, h)..][..dh],
                                )
                            })
                            .sum();
                        view.score(col, qk, scale)
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|v| (v - max).exp()).sum();
                let p = &mut probs[((s * heads + h) * t + i) * t..][..t];
                for col in 0..t {
                    p[col] = ((scores[col] - max).exp() / sum) as f32;
                }
                // o[query slot i*ww + pos] = sum over columns of p * (rolled value)[pos].
                let mut acc = vec![0.0f64; ww * dh];
                for (col, &pc) in p.iter().enumerate() {
                    for (pos, (_, kt)) in view.pairs(i, col).enumerate() {
                        let v = &qkv[ix.at(s, kt, 2, h)..][..dh];
                        for (a, x) in acc[pos * dh..][..dh].iter_mut().zip(v) {
                            *a += f64::from(pc) * f64::from(*x);
                        }
                    }
                }
                for (pos, (qt, _)) in view.pairs(i, 0).enumerate() {
                    let o = &mut out[ix.row(s, qt, h)..][..dh];
                    for (o, a) in o.iter_mut().zip(&acc[pos * dh..][..dh]) {
                        *o = *a as f32;
                    }
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
    plans: &[HeadPlan],
) -> Vec<f32> {
    let (heads, dh) = (plans.len(), plans[0].hd);
    let ix = QkvIndex {
        t,
        dim: heads * dh,
        dh,
    };
    let scale = 1.0 / (dh as f64).sqrt();
    let mut dqkv = vec![0.0f64; qkv.len()];
    let add = |acc: &mut [f64], k: f64, x: &[f32]| {
        acc.iter_mut()
            .zip(x)
            .for_each(|(a, v)| *a += k * f64::from(*v));
    };
    for (h, plan) in plans.iter().enumerate() {
        let view = HeadView::new(plan);
        let ww = plan.ww() as f64;
        for s in 0..n {
            for i in 0..plan.l {
                let p = &probs[((s * heads + h) * t + i) * t..][..t];
                // dP = dO . V' over the column's pairs; dV' += P dO.
                let mut dp = vec![0.0f64; t];
                for col in 0..t {
                    for (qt, kt) in view.pairs(i, col) {
                        let dor = &dout[ix.row(s, qt, h)..][..dh];
                        dp[col] += dot(dor, &qkv[ix.at(s, kt, 2, h)..][..dh]);
                        add(
                            &mut dqkv[ix.at(s, kt, 2, h)..][..dh],
                            f64::from(p[col]),
                            dor,
                        );
                    }
                }
                // dS = P (dP - sum_k P_k dP_k), times the score's scale / ww.
                let inner: f64 = (0..t).map(|col| f64::from(p[col]) * dp[col]).sum();
                for col in 0..t {
                    let ds = f64::from(p[col]) * (dp[col] - inner) * scale / ww;
                    for (qt, kt) in view.pairs(i, col) {
                        let (qa, ka) = (ix.at(s, qt, 0, h), ix.at(s, kt, 1, h));
                        add(&mut dqkv[qa..][..dh], ds, &qkv[ka..][..dh]);
                        add(&mut dqkv[ka..][..dh], ds, &qkv[qa..][..dh]);
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
    pr: Precision,
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
    let plans = c.head_plans();

    // Embedding.
    let patches = patchify(c, x, n);
    let mut xs = linear(
        pr,
        &patches,
        pd,
        w(off.patch_w, d * pd),
        w(off.patch_b, d),
        d,
    );
    for (row, v) in xs.chunks_mut(d).enumerate() {
        let p = w(off.pos + (row % t) * d, d);
        v.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    // Blocks.
    let mut caches = Vec::with_capacity(c.depth);
    for b in &off.blocks {
        let ln1 = layernorm(&xs, d, w(b.ln1_g, d), w(b.ln1_b, d));
        let qkv = linear(
            pr,
            &ln1.0,
            d,
            w(b.qkv_w, 3 * d * d),
            w(b.qkv_b, 3 * d),
            3 * d,
        );
        let (attn, probs) = attention(&qkv, n, t, &plans);
        let proj = linear(pr, &attn, d, w(b.proj_w, d * d), w(b.proj_b, d), d);
        let h: Vec<f32> = xs.iter().zip(&proj).map(|(a, b)| a + b).collect();
        let ln2 = layernorm(&h, d, w(b.ln2_g, d), w(b.ln2_b, d));
        let fc1 = linear(
            pr,
            &ln2.0,
            d,
            w(b.fc1_w, c.mlp * d),
            w(b.fc1_b, c.mlp),
            c.mlp,
        );
        let act: Vec<f32> = fc1.iter().map(|v| gelu(*v)).collect();
        let fc2 = linear(pr, &act, c.mlp, w(b.fc2_w, d * c.mlp), w(b.fc2_b, d), d);
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
        pr,
        &pooled,
        d,
        w(off.head_w, c.classes * d),
        w(off.head_b, c.classes),
        c.classes,
    );
    let (stats, dlogits) =
        crate::train::models::cpu::softmax_xent(&logits, labels, c.classes, scale);

    // Backward.
    let dpooled = linear_back(
        pr,
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
            pr,
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
            pr,
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
            pr,
            &cache.attn,
            d,
            w(b.proj_w, d * d),
            d,
            &dh,
            grads,
            (b.proj_w, b.proj_b),
        );
        let dqkv = attention_back(&cache.qkv, &cache.probs, &dattn, n, t, &plans);
        let dln1 = linear_back(
            pr,
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
        pr,
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
