//! The ViT's forward and backward pass on one GPU, step for step the CPU reference of
//! [`crate::train::models::vit`]: the linear layers through [`crate::train::gpu::linear`] (cuBLASLt, biases added in the
//! GEMMs' epilogue), attention's GEMMs through [`crate::train::gpu::blas`], the rest through
//! the ops of [`crate::kernels`] (patchify, layer_norm, heads, softmax, gelu, mean_tokens,
//! elementwise, softmax_cross_entropy, window_attention). Standard attention is one pointer-array
//! batched GEMM over every image and head per product, reading `q`, `k`, `v` in place in the
//! `qkv` rows and writing the heads' outputs in place in the concatenated rows (and likewise
//! backward), so no head-major copies are made; only the probabilities get buffers of their
//! own.
//!
//! Window attention (CSWinTT's, [`crate::train::models::vit`]) gathers each head's tokens into its window
//! partition's slot order on that copy (q pre-scaled, as the inference kernel wants it) and
//! runs the forward with the inference kernel itself (`kernels/window_attention.cu`, all
//! heads in fused launches), which also window-reverses and concatenates the heads. It writes
//! token-major rows `(token, image, dim)`, the inference engine's layout; one transpose makes
//! them the ViT's `(image, token, dim)`. The kernel keeps no probabilities, so the backward
//! (`window_attention_backward_*_f32`, beside the forward) recomputes them from the saved `q`
//! and `k`.

use cudarc::driver::{CudaSlice, CudaStream};

use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::{Gpu, nvtx};
use crate::kernels::elementwise::ElementwiseKernels;
use crate::kernels::gelu::GeluKernels;
use crate::kernels::heads::{Heads, HeadsKernels, SlotOrder};
use crate::kernels::layer_norm::{self, Extra, LayerNormKernels, NormInput};
use crate::kernels::mean_tokens::MeanTokensKernels;
use crate::kernels::patchify::{Patches, PatchifyKernels};
use crate::kernels::softmax::SoftmaxKernels;
use crate::kernels::softmax_cross_entropy::SoftmaxCrossEntropyKernels;
use crate::kernels::window_attention::{
    AttentionOperands, AttentionShape, BackwardHead, BackwardOperands, BackwardOutputs, MAX_FUSED,
    MAX_HEAD_WIDTH, SlotLayout, WindowAttentionKernels,
};
use crate::train::gpu::blas::{self, BatchLayout, Batched, HeadBatch, MatrixBatch};
use crate::train::gpu::linear::GemmEpilogue::Bias;
use crate::train::gpu::replica::Pass;
use crate::train::models::vit::{VitConfig, VitOffsets, layout};

/// One block's activations, kept for the backward pass.
struct BlockBufs {
    ln1_y: CudaSlice<f32>,
    ln1_xhat: CudaSlice<f32>,
    ln1_rstd: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    /// Head-major windowed copies of q, k, v (window attention only).
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    /// Attention probabilities, `[images * heads, tokens, tokens]` (standard attention only).
    p: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    /// Standard attention's operands in `qkv`, `p` and `attn` (`None` for window attention).
    /// Made after the buffers they point into, and dropped with them.
    operands: Option<Operands>,
    h: CudaSlice<f32>,
    ln2_y: CudaSlice<f32>,
    ln2_xhat: CudaSlice<f32>,
    ln2_rstd: CudaSlice<f32>,
    fc1: CudaSlice<f32>,
    act: CudaSlice<f32>,
    out: CudaSlice<f32>,
}

/// Everything else: embedding and head activations, and backward scratch.
struct Bufs {
    patches: CudaSlice<f32>,
    x0: CudaSlice<f32>,
    blocks: Vec<BlockBufs>,
    norm_y: CudaSlice<f32>,
    norm_xhat: CudaSlice<f32>,
    norm_rstd: CudaSlice<f32>,
    pooled: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    dlogits: CudaSlice<f32>,
    dpooled: CudaSlice<f32>,
    /// The gradient flowing back through the residual stream.
    dx: CudaSlice<f32>,
    dtmp: CudaSlice<f32>,
    dyxhat: CudaSlice<f32>,
    dbig: CudaSlice<f32>,
    dqkv: CudaSlice<f32>,
    /// Window attention's head-major `dout`, `dq`, `dk`, `dv`.
    heads: [CudaSlice<f32>; 4],
    dp: CudaSlice<f32>,
    /// Standard attention's gradients in `dtmp`, `dp` and `dqkv` (`None` for window attention).
    grad_operands: Option<GradOperands>,
    /// Ones, for column sums (bias and LayerNorm gradients) as GEMMs.
    ones: CudaSlice<f32>,
    /// Window attention's tables and scratch; `None` for standard attention.
    win: Option<WindowBufs>,
}

/// One block's standard attention operands, a `[tokens x head_dim]` (`p`: `[tokens x tokens]`)
/// matrix per image and head.
struct Operands {
    q: MatrixBatch,
    k: MatrixBatch,
    v: MatrixBatch,
    p: MatrixBatch,
    out: MatrixBatch,
}

/// Their gradients, in the shared backward buffers: `dout` in `dtmp`, `dp` in `dp`, and
/// `dq`, `dk`, `dv` in `dqkv`.
struct GradOperands {
    dout: MatrixBatch,
    dp: MatrixBatch,
    dq: MatrixBatch,
    dk: MatrixBatch,
    dv: MatrixBatch,
}

/// What window attention needs besides the blocks' buffers.
struct WindowBufs {
    kernel: WindowAttentionKernels,
    /// Head `h`'s window side.
    sides: Vec<usize>,
    /// `[heads, tokens]`: head `h`'s slot -> token (its window partition).
    slot_token: CudaSlice<u32>,
    /// Head `h`'s `sr(a, e)` table (`w*w`), for `w > 1`.
    sr: Vec<Option<CudaSlice<f32>>>,
    /// All zeros, `[images, tokens]`: no key is padded.
    no_padding: CudaSlice<u8>,
    /// The backward's recomputed probabilities, `[images * heads, tokens, tokens]`.
    probs: CudaSlice<f32>,
}

impl WindowBufs {
    fn new(gpu: &Gpu, c: &VitConfig, n: usize) -> Result<WindowBufs> {
        let width = c.dim / c.heads;
        if !(1..=MAX_HEAD_WIDTH).contains(&width) {
            return Err(Error::invalid(
                "ViT window attention on the GPU",
                format!(
                    "needs a head width (width / heads) of at most {MAX_HEAD_WIDTH}, the widest \
                     kernel; this model has {} / {} = {width} (the CPU trains any width)",
                    c.dim, c.heads
                ),
            ));
        }
        let s = gpu.stream();
        let plans = c.head_plans();
        let table: Vec<u32> = plans.iter().flat_map(|p| p.partition_index()).collect();
        let sr = plans
            .iter()
            .map(|p| {
                (p.w > 1)
                    .then(|| s.clone_htod(&p.sr_table()))
                    .transpose()
                    .cuda(|| "uploading sr tables".into())
            })
            .collect::<Result<Vec<_>>>()?;
        let t = c.tokens();
        Ok(WindowBufs {
            kernel: WindowAttentionKernels::load(gpu)?,
            sides: plans.iter().map(|p| p.w).collect(),
            slot_token: s
                .clone_htod(&table)
                .cuda(|| "uploading window partitions".into())?,
            sr,
            no_padding: s
                .alloc_zeros::<u8>(n * t)
                .cuda(|| "allocating the key padding".into())?,
            probs: s
                .alloc_zeros::<f32>(n * c.heads * t * t)
                .cuda(|| "allocating window probabilities".into())?,
        })
    }

    /// Each head's partition, with `scale` applied on the way.
    fn order(&self, scale: f32) -> SlotOrder<'_> {
        SlotOrder {
            slot_token: Some(&self.slot_token),
            scale,
        }
    }

    /// The forward of every head of `n` images by the inference kernel, from windowed
    /// `[n, heads, t, hd]` q (pre-scaled), k and v into token-major rows `out` `(t, n, dim)`.
    fn forward(
        &self,
        stream: &CudaStream,
        c: &VitConfig,
        n: usize,
        (q, k, v): (&CudaSlice<f32>, &CudaSlice<f32>, &CudaSlice<f32>),
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (t, hd, d) = (c.tokens(), c.head_dim(), c.dim);
        let layout = SlotLayout {
            batch: c.heads * t * hd,
            slot: hd,
        };
        let prepared = (0..c.heads)
            .map(|h| {
                let shape = AttentionShape {
                    w: self.sides[h],
                    hd,
                    n_queries: t,
                    n_keys: t,
                    batch: n,
                    heads: 1,
                    head_stride: 0,
                };
                let at = h * t * hd;
                let ops = AttentionOperands {
                    q: q.slice(at..),
                    q_layout: layout,
                    k: k.slice(at..),
                    v: v.slice(at..),
                    kv_layout: layout,
                    bias: None,
                    key_pad: self.no_padding.slice(..n * t),
                    sr: self.sr[h].as_ref().map(|s| s.slice(..)),
                    slot_token: Some(self.slot_token.slice(h * t..(h + 1) * t)),
                    out: out.slice_mut(..t * n * d),
                    out_row: d,
                    out_channel: h * hd,
                    head_out: None,
                    split: None,
                };
                self.kernel.prepare(stream, &shape, ops)
            })
            .collect::<Result<Vec<_>>>()?;
        prepared
            .chunks(MAX_FUSED)
            .try_for_each(|sets| self.kernel.launch_fused(stream, sets))
    }
}

/// The ops of the pass besides the GEMMs, loaded once.
struct Ops {
    patchify: PatchifyKernels,
    norm: LayerNormKernels,
    heads: HeadsKernels,
    softmax: SoftmaxKernels,
    gelu: GeluKernels,
    mean: MeanTokensKernels,
    elementwise: ElementwiseKernels,
    loss: SoftmaxCrossEntropyKernels,
}

/// The ViT's LayerNorm eps (PyTorch's default), as the CPU reference's.
const LN_EPS: f32 = 1e-5;

pub struct VitNet {
    cfg: VitConfig,
    off: VitOffsets,
    ops: Ops,
    /// Images the buffers hold.
    capacity: usize,
    bufs: Option<Bufs>,
}

impl VitNet {
    pub fn new(gpu: &Gpu, cfg: VitConfig) -> Result<VitNet> {
        if cfg.dim > layer_norm::MAX_WIDTH {
            return Err(Error::invalid(
                "ViT on the GPU",
                format!(
                    "needs a width of at most {} (the LayerNorm kernel keeps a row in \
                     registers); this model has {} (the CPU trains any width)",
                    layer_norm::MAX_WIDTH,
                    cfg.dim
                ),
            ));
        }
        Ok(VitNet {
            off: layout(&cfg).1,
            cfg,
            ops: Ops {
                patchify: PatchifyKernels::load(gpu)?,
                norm: LayerNormKernels::load(gpu)?,
                heads: HeadsKernels::load(gpu)?,
                softmax: SoftmaxKernels::load(gpu)?,
                gelu: GeluKernels::load(gpu)?,
                mean: MeanTokensKernels::load(gpu)?,
                elementwise: ElementwiseKernels::load(gpu)?,
                loss: SoftmaxCrossEntropyKernels::load(gpu)?,
            },
            capacity: 0,
            bufs: None,
        })
    }

    fn reserve(&mut self, gpu: &Gpu, n: usize) -> Result<()> {
        if n <= self.capacity {
            return Ok(());
        }
        self.bufs = None; // free the old set first
        let c = &self.cfg;
        let (t, d, m) = (c.tokens(), c.dim, c.mlp);
        let rows = n * t;
        let s = gpu.stream();
        let a = |len: usize| {
            s.alloc_zeros::<f32>(len.max(1))
                .cuda(|| format!("allocating {len} ViT activations"))
        };
        // Each attention kind allocates only its own buffers.
        let (win_len, std_len) = if c.windows {
            (rows * d, 0)
        } else {
            (0, n * c.heads * t * t)
        };
        let lay = HeadBatch {
            n,
            heads: c.heads,
            t,
            dh: c.head_dim(),
        };
        let batch = |buf: &CudaSlice<f32>, l: BatchLayout| MatrixBatch::new(s, buf, l);
        let blocks = (0..c.depth)
            .map(|_| {
                let mut bk = BlockBufs {
                    ln1_y: a(rows * d)?,
                    ln1_xhat: a(rows * d)?,
                    ln1_rstd: a(rows)?,
                    qkv: a(rows * 3 * d)?,
                    q: a(win_len)?,
                    k: a(win_len)?,
                    v: a(win_len)?,
                    p: a(std_len)?,
                    attn: a(rows * d)?,
                    operands: None,
                    h: a(rows * d)?,
                    ln2_y: a(rows * d)?,
                    ln2_xhat: a(rows * d)?,
                    ln2_rstd: a(rows)?,
                    fc1: a(rows * m)?,
                    act: a(rows * m)?,
                    out: a(rows * d)?,
                };
                if !c.windows {
                    bk.operands = Some(Operands {
                        q: batch(&bk.qkv, lay.in_rows(3 * d, 0))?,
                        k: batch(&bk.qkv, lay.in_rows(3 * d, d))?,
                        v: batch(&bk.qkv, lay.in_rows(3 * d, 2 * d))?,
                        p: batch(&bk.p, lay.probs())?,
                        out: batch(&bk.attn, lay.in_rows(d, 0))?,
                    });
                }
                Ok(bk)
            })
            .collect::<Result<Vec<_>>>()?;
        let (dtmp, dp, dqkv) = (a(rows * d)?, a(n * c.heads * t * t)?, a(rows * 3 * d)?);
        let grad_operands = if c.windows {
            None
        } else {
            Some(GradOperands {
                dout: batch(&dtmp, lay.in_rows(d, 0))?,
                dp: batch(&dp, lay.probs())?,
                dq: batch(&dqkv, lay.in_rows(3 * d, 0))?,
                dk: batch(&dqkv, lay.in_rows(3 * d, d))?,
                dv: batch(&dqkv, lay.in_rows(3 * d, 2 * d))?,
            })
        };
        self.bufs = Some(Bufs {
            patches: a(rows * c.patch_dim())?,
            x0: a(rows * d)?,
            blocks,
            norm_y: a(rows * d)?,
            norm_xhat: a(rows * d)?,
            norm_rstd: a(rows)?,
            pooled: a(n * d)?,
            logits: a(n * c.classes)?,
            dlogits: a(n * c.classes)?,
            dpooled: a(n * d)?,
            dx: a(rows * d)?,
            dtmp,
            dyxhat: a(rows * d)?,
            dbig: a(rows * m)?,
            dqkv,
            heads: [a(win_len)?, a(win_len)?, a(win_len)?, a(win_len)?],
            dp,
            grad_operands,
            ones: s
                .clone_htod(&vec![1.0f32; rows])
                .cuda(|| "allocating ones".into())?,
            win: c.windows.then(|| WindowBufs::new(gpu, c, n)).transpose()?,
        });
        self.capacity = n;
        Ok(())
    }

    pub fn forward_backward(&mut self, p: Pass) -> Result<()> {
        let n = p.rows;
        self.reserve(p.gpu, n)?;
        let (c, off) = (self.cfg, &self.off);
        let Some(b) = self.bufs.as_mut() else {
            unreachable!("reserve allocates the buffers")
        };
        let (ops, s, cb, lin) = (&self.ops, p.gpu.stream(), p.blas, p.linear);
        let (t, d, m, pd, hh, dh) = (
            c.tokens(),
            c.dim,
            c.mlp,
            c.patch_dim(),
            c.heads,
            c.head_dim(),
        );
        let rows = n * t;
        let w = |o: usize, len: usize| p.params.slice(o..o + len);
        let heads = |stride: usize, offset: usize| Heads {
            n,
            t,
            h: hh,
            dh,
            stride,
            offset,
        };
        let batch = n * hh;
        let score_scale = 1.0 / (dh as f32).sqrt();
        // LayerNorm of `x`'s rows into `y`, saving `xhat` and `rstd` for the backward.
        let norm = |x: &CudaSlice<f32>,
                    (g, bias): (usize, usize),
                    y: &mut CudaSlice<f32>,
                    (xhat, rstd): (&mut CudaSlice<f32>, &mut CudaSlice<f32>)| {
            let saved = layer_norm::Saved {
                xhat: xhat.slice_mut(..rows * d),
                rstd: rstd.slice_mut(..rows),
            };
            let input = NormInput::of(x.slice(..rows * d));
            let (g, bias) = (w(g, d), w(bias, d));
            let y = &mut y.slice_mut(..rows * d);
            ops.norm
                .forward(s, input, &g, &bias, LN_EPS, y, Extra::Saved(saved))
        };

        // Embedding: patches, linear, position.
        let (ch, side) = (c.image.channels, c.image.width);
        let images = Patches {
            n,
            channels: ch,
            side,
            patch: c.patch,
        };
        ops.patchify
            .run(s, p.input.f32("vit")?, &mut b.patches, images)?;
        let (pw, pb) = (w(off.patch_w, d * pd), Bias(w(off.patch_b, d)));
        lin.forward(&b.patches, &pw, pb, &mut b.x0, rows, pd, d)?;
        let pos = w(off.pos, t * d);
        ops.elementwise
            .add_periodic(s, &mut b.x0, &pos, rows * d, t * d)?;

        // Blocks.
        for (i, o) in off.blocks.iter().enumerate() {
            let _r = nvtx::range(format!("block {i} forward"));
            let (done, rest) = b.blocks.split_at_mut(i);
            let x = if i == 0 { &b.x0 } else { &done[i - 1].out };
            let bk = &mut rest[0];
            let saved = (&mut bk.ln1_xhat, &mut bk.ln1_rstd);
            norm(x, (o.ln1_g, o.ln1_b), &mut bk.ln1_y, saved)?;
            let (qw, qb) = (w(o.qkv_w, 3 * d * d), Bias(w(o.qkv_b, 3 * d)));
            lin.forward(&bk.ln1_y, &qw, qb, &mut bk.qkv, rows, d, 3 * d)?;
            if let Some(win) = &b.win {
                let (q_order, order) = (win.order(score_scale), win.order(1.0));
                let hk = &ops.heads;
                hk.from_rows(s, &bk.qkv, &mut bk.q, heads(3 * d, 0), q_order)?;
                hk.from_rows(s, &bk.qkv, &mut bk.k, heads(3 * d, d), order)?;
                hk.from_rows(s, &bk.qkv, &mut bk.v, heads(3 * d, 2 * d), order)?;
                let out = &mut b.heads[0];
                win.forward(s, &c, n, (&bk.q, &bk.k, &bk.v), out)?;
                // (token, image) rows to (image, token): the head split with images as heads.
                let images = Heads {
                    n: 1,
                    t,
                    h: n,
                    dh: d,
                    stride: n * d,
                    offset: 0,
                };
                hk.from_rows(s, &*out, &mut bk.attn, images, SlotOrder::IDENTITY)?;
            } else {
                let Some(a) = &bk.operands else {
                    unreachable!("reserve makes standard attention's operands")
                };
                blas::batched(cb, Batched::XYt, &a.q, &a.k, &a.p, n, score_scale)?;
                ops.softmax.forward(s, &mut bk.p, (batch * t, t))?;
                blas::batched(cb, Batched::PX, &a.p, &a.v, &a.out, n, 1.0)?;
            }
            let (pw, pb) = (w(o.proj_w, d * d), Bias(w(o.proj_b, d)));
            lin.forward(&bk.attn, &pw, pb, &mut bk.h, rows, d, d)?;
            ops.elementwise.add(s, &mut bk.h, x, rows * d)?;
            let saved = (&mut bk.ln2_xhat, &mut bk.ln2_rstd);
            norm(&bk.h, (o.ln2_g, o.ln2_b), &mut bk.ln2_y, saved)?;
            let (w1, b1) = (w(o.fc1_w, m * d), Bias(w(o.fc1_b, m)));
            lin.forward(&bk.ln2_y, &w1, b1, &mut bk.fc1, rows, d, m)?;
            ops.gelu.forward(s, &bk.fc1, &mut bk.act, rows * m)?;
            let (w2, b2) = (w(o.fc2_w, d * m), Bias(w(o.fc2_b, d)));
            lin.forward(&bk.act, &w2, b2, &mut bk.out, rows, m, d)?;
            ops.elementwise.add(s, &mut bk.out, &bk.h, rows * d)?;
        }

        // Head: final norm, mean over tokens, linear, loss.
        let last = b.blocks.last().map_or(&b.x0, |bk| &bk.out);
        let saved = (&mut b.norm_xhat, &mut b.norm_rstd);
        norm(last, (off.norm_g, off.norm_b), &mut b.norm_y, saved)?;
        ops.mean.forward(s, &b.norm_y, &mut b.pooled, (n, t, d))?;
        let classes = c.classes;
        let (hw, hb) = (w(off.head_w, classes * d), Bias(w(off.head_b, classes)));
        lin.forward(&b.pooled, &hw, hb, &mut b.logits, n, d, classes)?;
        let shape = (n, classes);
        ops.loss.run(
            s,
            &b.logits,
            p.labels,
            &mut b.dlogits,
            p.stats,
            shape,
            p.scale,
        )?;

        // Backward. `g(o, len)` is a gradient slice; each is written exactly once.
        let grads = p.grads;
        macro_rules! g {
            ($o:expr, $len:expr) => {
                &mut grads.slice_mut($o..$o + $len)
            };
        }
        let dpooled = Some((w(off.head_w, classes * d), &mut b.dpooled));
        let gw = g!(off.head_w, classes * d);
        lin.backward(&b.pooled, &b.dlogits, gw, dpooled, n, d, classes)?;
        blas::column_sums(cb, &b.dlogits, &b.ones, g!(off.head_b, classes), n, classes)?;
        ops.mean.backward(s, &b.dpooled, &mut b.dtmp, (n, t, d))?;
        let saved = (&b.norm_xhat, &b.norm_rstd);
        let gamma = w(off.norm_g, d);
        let (dx, dyxhat) = (&mut b.dx, &mut b.dyxhat);
        ops.norm
            .backward(s, &b.dtmp, saved, &gamma, dx, dyxhat, (rows, d), false)?;
        blas::column_sums(cb, &b.dyxhat, &b.ones, g!(off.norm_g, d), rows, d)?;
        blas::column_sums(cb, &b.dtmp, &b.ones, g!(off.norm_b, d), rows, d)?;

        for (i, o) in off.blocks.iter().enumerate().rev() {
            let _r = nvtx::range(format!("block {i} backward"));
            let bk = &b.blocks[i];
            // out = h + fc2(gelu(fc1(LN2(h)))); dx holds d(out).
            let dact = Some((w(o.fc2_w, d * m), &mut b.dbig));
            lin.backward(&bk.act, &b.dx, g!(o.fc2_w, d * m), dact, rows, m, d)?;
            blas::column_sums(cb, &b.dx, &b.ones, g!(o.fc2_b, d), rows, d)?;
            ops.gelu.backward(s, &bk.fc1, &mut b.dbig, rows * m)?;
            let dln2 = Some((w(o.fc1_w, m * d), &mut b.dtmp));
            lin.backward(&bk.ln2_y, &b.dbig, g!(o.fc1_w, m * d), dln2, rows, d, m)?;
            blas::column_sums(cb, &b.dbig, &b.ones, g!(o.fc1_b, m), rows, m)?;
            let saved = (&bk.ln2_xhat, &bk.ln2_rstd);
            let (gamma, dx, dyxhat) = (w(o.ln2_g, d), &mut b.dx, &mut b.dyxhat);
            ops.norm
                .backward(s, &b.dtmp, saved, &gamma, dx, dyxhat, (rows, d), true)?;
            blas::column_sums(cb, &b.dyxhat, &b.ones, g!(o.ln2_g, d), rows, d)?;
            blas::column_sums(cb, &b.dtmp, &b.ones, g!(o.ln2_b, d), rows, d)?;
            // h = x + proj(attn(LN1(x))); dx holds d(h).
            let dattn = Some((w(o.proj_w, d * d), &mut b.dtmp));
            lin.backward(&bk.attn, &b.dx, g!(o.proj_w, d * d), dattn, rows, d, d)?;
            blas::column_sums(cb, &b.dx, &b.ones, g!(o.proj_b, d), rows, d)?;
            if let Some(win) = &mut b.win {
                let [dout, dq, dk, dv] = &mut b.heads;
                let hk = &ops.heads;
                hk.from_rows(s, &b.dtmp, dout, heads(d, 0), win.order(1.0))?;
                for (head, &w) in win.sides.iter().enumerate() {
                    let h = BackwardHead {
                        n,
                        w,
                        t,
                        hd: dh,
                        heads: hh,
                        head,
                    };
                    let x = BackwardOperands {
                        q: &bk.q,
                        k: &bk.k,
                        v: &bk.v,
                        dout: &*dout,
                        sr: win.sr[head].as_ref(),
                    };
                    let out = BackwardOutputs {
                        p: &mut win.probs,
                        ds: &mut b.dp,
                        dq: &mut *dq,
                        dk: &mut *dk,
                        dv: &mut *dv,
                    };
                    win.kernel.backward(s, &h, &x, out)?;
                }
                // dq is that of the pre-scaled q.
                let (q_order, order) = (win.order(score_scale), win.order(1.0));
                hk.to_rows(s, &*dq, &mut b.dqkv, heads(3 * d, 0), q_order)?;
                hk.to_rows(s, &*dk, &mut b.dqkv, heads(3 * d, d), order)?;
                hk.to_rows(s, &*dv, &mut b.dqkv, heads(3 * d, 2 * d), order)?;
            } else {
                let (Some(a), Some(ga)) = (&bk.operands, &b.grad_operands) else {
                    unreachable!("reserve makes standard attention's operands")
                };
                // dP = dout V^T, dV = P^T dout; dS from dP; dQ = dS K, dK = dS^T Q.
                blas::batched(cb, Batched::XYt, &ga.dout, &a.v, &ga.dp, n, 1.0)?;
                blas::batched(cb, Batched::PtX, &a.p, &ga.dout, &ga.dv, n, 1.0)?;
                let shape = (batch * t, t);
                ops.softmax
                    .backward(s, &bk.p, &mut b.dp, shape, score_scale)?;
                blas::batched(cb, Batched::PX, &ga.dp, &a.k, &ga.dq, n, 1.0)?;
                blas::batched(cb, Batched::PtX, &ga.dp, &a.q, &ga.dk, n, 1.0)?;
            }
            let dln1 = Some((w(o.qkv_w, 3 * d * d), &mut b.dtmp));
            let gw = g!(o.qkv_w, 3 * d * d);
            lin.backward(&bk.ln1_y, &b.dqkv, gw, dln1, rows, d, 3 * d)?;
            blas::column_sums(cb, &b.dqkv, &b.ones, g!(o.qkv_b, 3 * d), rows, 3 * d)?;
            let saved = (&bk.ln1_xhat, &bk.ln1_rstd);
            let (gamma, dx, dyxhat) = (w(o.ln1_g, d), &mut b.dx, &mut b.dyxhat);
            ops.norm
                .backward(s, &b.dtmp, saved, &gamma, dx, dyxhat, (rows, d), true)?;
            blas::column_sums(cb, &b.dyxhat, &b.ones, g!(o.ln1_g, d), rows, d)?;
            blas::column_sums(cb, &b.dtmp, &b.ones, g!(o.ln1_b, d), rows, d)?;
        }

        // Embedding: the position gradient sums over images; the patch linear layer.
        blas::column_sums(cb, &b.dx, &b.ones, g!(off.pos, t * d), n, t * d)?;
        lin.backward(
            &b.patches,
            &b.dx,
            g!(off.patch_w, d * pd),
            None,
            rows,
            pd,
            d,
        )?;
        blas::column_sums(cb, &b.dx, &b.ones, g!(off.patch_b, d), rows, d)
    }
}
