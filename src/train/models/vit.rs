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
use crate::kernels::bias_grad::cpu::bias_grad;
use crate::kernels::elementwise::cpu as elementwise;
use crate::kernels::gelu::cpu::{gelu, gelu_backward};
use crate::kernels::heads::Heads;
use crate::kernels::heads::cpu::{heads_from_rows, heads_to_rows};
use crate::kernels::layer_norm::cpu::{Normalized, layer_norm, layer_norm_backward};
use crate::kernels::linear::cpu as linear;
use crate::kernels::mean_tokens::cpu::{mean_tokens, mean_tokens_backward};
use crate::kernels::patchify::Patches;
use crate::kernels::patchify::cpu::patchify;
use crate::kernels::softmax_cross_entropy::cpu::softmax_cross_entropy;
use crate::kernels::window_attention::cpu::{Head, window_attention, window_attention_backward};
use crate::train::data::ImageShape;
use crate::train::models::Layout;
use crate::train::models::cpu::{DenseShard, ShardStats};

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

/// LayerNorm's eps (PyTorch's default).
const LN_EPS: f64 = 1e-5;

/// `y = x W^T + b` for `rows` rows, x: `rows x din`, W: `dout x din`; the product in `pr`.
fn linear(pr: Precision, x: &[f32], din: usize, w: &[f32], b: &[f32], dout: usize) -> Vec<f32> {
    let rows = x.len() / din;
    linear::linear(&pr.operand(x), &pr.operand(w), b, (rows, dout, din))
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
    let rows = x.len() / din;
    let shape = (rows, dout, din);
    let (x, w, dy_op) = (pr.operand(x), pr.operand(w), pr.operand(dy));
    let (dw, dx) = linear::linear_backward(&x, &w, &dy_op, shape, true);
    elementwise::add(&mut g[wo..wo + dout * din], &dw);
    elementwise::add(&mut g[bo..bo + dout], &bias_grad(dy, dout));
    dx.unwrap_or_default()
}

/// LayerNorm's backward: adds the gamma/beta gradients at `(go, bo)`, returns dx.
fn layer_norm_back(
    dy: &[f32],
    saved: &Normalized,
    gamma: &[f32],
    g: &mut [f32],
    (go, bo): (usize, usize),
) -> Vec<f32> {
    let d = gamma.len();
    let grads = layer_norm_backward(dy, &saved.xhat, &saved.rstd, gamma);
    elementwise::add(&mut g[go..go + d], &grads.dgamma);
    elementwise::add(&mut g[bo..bo + d], &grads.dbeta);
    grads.dx
}

/// Attention as the GPU pass computes it: the `qkv` rows (`[q | k | v]`, `3 * dim` wide)
/// gathered into head-major `[n * heads, t, dh]` in each head's window-partition order (q
/// pre-scaled by `dh^-0.5`), window attention per image and head, and the outputs put back.
struct Attention {
    plans: Vec<HeadPlan>,
    /// `[heads, t]`: head `h`'s slot -> token.
    slot_token: Vec<u32>,
    /// Head `h`'s `sr(a, e)` table.
    sr: Vec<Vec<f32>>,
    n: usize,
    t: usize,
    dh: usize,
}

impl Attention {
    fn new(c: &VitConfig, n: usize) -> Attention {
        let plans = c.head_plans();
        Attention {
            slot_token: plans.iter().flat_map(|p| p.partition_index()).collect(),
            sr: plans.iter().map(|p| p.sr_table()).collect(),
            plans,
            n,
            t: c.tokens(),
            dh: c.head_dim(),
        }
    }

    fn dim(&self) -> usize {
        self.plans.len() * self.dh
    }

    /// Part `part` (0 q, 1 k, 2 v, times `scale`) of `stride`-wide rows, head-major.
    fn gather(&self, rows: &[f32], stride: usize, part: usize, scale: f32) -> Vec<f32> {
        let table = Some(self.slot_token.as_slice());
        heads_from_rows(rows, self.split(stride, part), table, scale)
    }

    /// Head-major `heads` into part `part` of `stride`-wide `rows`, times `scale`.
    fn scatter(&self, heads: &[f32], rows: &mut [f32], stride: usize, part: usize, scale: f32) {
        let table = Some(self.slot_token.as_slice());
        heads_to_rows(heads, rows, self.split(stride, part), table, scale);
    }

    fn split(&self, stride: usize, part: usize) -> Heads {
        Heads {
            n: self.n,
            t: self.t,
            h: self.plans.len(),
            dh: self.dh,
            stride,
            offset: part * self.dim(),
        }
    }

    /// The head-major q (pre-scaled), k and v of `qkv` rows.
    fn qkv(&self, qkv: &[f32]) -> [Vec<f32>; 3] {
        let scale = 1.0 / (self.dh as f32).sqrt();
        let stride = 3 * self.dim();
        [
            self.gather(qkv, stride, 0, scale),
            self.gather(qkv, stride, 1, 1.0),
            self.gather(qkv, stride, 2, 1.0),
        ]
    }

    /// Head `i % heads` of image `i / heads` (the `i`-th `[t, dh]` block of each).
    fn head<'a>(&'a self, [q, k, v]: &'a [Vec<f32>; 3], i: usize) -> Head<'a> {
        let (h, len) = (i % self.plans.len(), self.t * self.dh);
        let block = |x: &'a [f32]| &x[i * len..][..len];
        Head {
            w: self.plans[h].w,
            hd: self.dh,
            q: block(q),
            k: block(k),
            v: block(v),
            sr: &self.sr[h],
            key_pad: None,
            bias: None,
        }
    }

    /// The attention of every image and head: `qkv` rows in, the concatenated,
    /// window-reversed head outputs (`n*t x dim`) out.
    fn forward(&self, qkv: &[f32]) -> Vec<f32> {
        let heads = self.qkv(qkv);
        let len = self.t * self.dh;
        let mut o = vec![0.0f32; heads[0].len()];
        for (i, out) in o.chunks_mut(len).enumerate() {
            out.copy_from_slice(&window_attention(&self.head(&heads, i)));
        }
        let mut rows = vec![0.0f32; self.n * self.t * self.dim()];
        self.scatter(&o, &mut rows, self.dim(), 0, 1.0);
        rows
    }

    /// The backward of [`forward`](Self::forward): the gradient of `qkv` from the output's.
    fn backward(&self, qkv: &[f32], dout: &[f32]) -> Vec<f32> {
        let heads = self.qkv(qkv);
        let dout = self.gather(dout, self.dim(), 0, 1.0);
        let len = self.t * self.dh;
        let mut grads = [
            vec![0.0f32; dout.len()],
            vec![0.0; dout.len()],
            vec![0.0; dout.len()],
        ];
        for i in 0..dout.len() / len {
            let g = window_attention_backward(&self.head(&heads, i), &dout[i * len..][..len]);
            for (to, from) in grads.iter_mut().zip([g.dq, g.dk, g.dv]) {
                to[i * len..][..len].copy_from_slice(&from);
            }
        }
        // dq is that of the pre-scaled q.
        let scales = [1.0 / (self.dh as f32).sqrt(), 1.0, 1.0];
        let mut dqkv = vec![0.0f32; qkv.len()];
        for (part, (g, scale)) in grads.iter().zip(scales).enumerate() {
            self.scatter(g, &mut dqkv, 3 * self.dim(), part, scale);
        }
        dqkv
    }
}

/// What one block's backward needs from its forward.
struct BlockCache {
    ln1: Normalized,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    ln2: Normalized,
    fc1: Vec<f32>,
    act: Vec<f32>,
}

/// Forward and backward over `n > 0` images; the contract of `cpu::forward_backward`.
pub(crate) fn forward_backward(c: &VitConfig, s: &DenseShard, grads: &mut [f32]) -> ShardStats {
    grads.fill(0.0);
    let (pr, params, n) = (s.precision, s.params, s.labels.len());
    let (_, off) = layout(c);
    let (d, t, pd) = (c.dim, c.tokens(), c.patch_dim());
    let w = |o: usize, len: usize| &params[o..o + len];
    let norm = |x: &[f32], (g, b): (usize, usize)| layer_norm(x, w(g, d), w(b, d), LN_EPS);
    let attention = Attention::new(c, n);

    // Embedding.
    let images = Patches {
        n,
        channels: c.image.channels,
        side: c.image.width,
        patch: c.patch,
    };
    let patches = patchify(s.x, images);
    let mut xs = linear(
        pr,
        &patches,
        pd,
        w(off.patch_w, d * pd),
        w(off.patch_b, d),
        d,
    );
    elementwise::add_periodic(&mut xs, w(off.pos, t * d));
    // Blocks.
    let mut caches = Vec::with_capacity(c.depth);
    for b in &off.blocks {
        let ln1 = norm(&xs, (b.ln1_g, b.ln1_b));
        let qkv = linear(
            pr,
            &ln1.y,
            d,
            w(b.qkv_w, 3 * d * d),
            w(b.qkv_b, 3 * d),
            3 * d,
        );
        let attn = attention.forward(&qkv);
        let mut h = linear(pr, &attn, d, w(b.proj_w, d * d), w(b.proj_b, d), d);
        elementwise::add(&mut h, &xs);
        let ln2 = norm(&h, (b.ln2_g, b.ln2_b));
        let fc1 = linear(
            pr,
            &ln2.y,
            d,
            w(b.fc1_w, c.mlp * d),
            w(b.fc1_b, c.mlp),
            c.mlp,
        );
        let act = gelu(&fc1);
        let mut next = linear(pr, &act, c.mlp, w(b.fc2_w, d * c.mlp), w(b.fc2_b, d), d);
        elementwise::add(&mut next, &h);
        xs = next;
        caches.push(BlockCache {
            ln1,
            qkv,
            attn,
            ln2,
            fc1,
            act,
        });
    }
    // Head: final norm, mean over tokens, linear.
    let norm_out = norm(&xs, (off.norm_g, off.norm_b));
    let pooled = mean_tokens(&norm_out.y, (n, t, d));
    let logits = linear(
        pr,
        &pooled,
        d,
        w(off.head_w, c.classes * d),
        w(off.head_b, c.classes),
        c.classes,
    );
    let (loss, dlogits) = softmax_cross_entropy(&logits, s.labels, c.classes, s.scale);

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
    let dnorm = mean_tokens_backward(&dpooled, (n, t, d));
    let mut dx = layer_norm_back(
        &dnorm,
        &norm_out,
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
        let dfc1 = gelu_backward(&cache.fc1, &dact);
        let dln2 = linear_back(
            pr,
            &cache.ln2.y,
            d,
            w(b.fc1_w, c.mlp * d),
            c.mlp,
            &dfc1,
            grads,
            (b.fc1_w, b.fc1_b),
        );
        let mut dh = layer_norm_back(&dln2, &cache.ln2, w(b.ln2_g, d), grads, (b.ln2_g, b.ln2_b));
        elementwise::add(&mut dh, &dx);
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
        let dqkv = attention.backward(&cache.qkv, &dattn);
        let dln1 = linear_back(
            pr,
            &cache.ln1.y,
            d,
            w(b.qkv_w, 3 * d * d),
            3 * d,
            &dqkv,
            grads,
            (b.qkv_w, b.qkv_b),
        );
        dx = layer_norm_back(&dln1, &cache.ln1, w(b.ln1_g, d), grads, (b.ln1_g, b.ln1_b));
        elementwise::add(&mut dx, &dh);
    }
    // Embedding: position gradient sums over images; patch linear.
    for v in dx.chunks(t * d) {
        elementwise::add(&mut grads[off.pos..off.pos + t * d], v);
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
    ShardStats::from(loss)
}
