//! Launchers for `kernels/window_attention.cu`: cyclic-shift window attention of one head (or,
//! with `w == 1`, plain attention of several heads), fused with window reverse and concat,
//! and its backward.
//!
//! A forward launch is checked and packed first ([`WindowAttentionKernels::prepare`] gives a
//! [`PreparedAttention`], a value holding the kernel's argument struct), then launched alone
//! ([`WindowAttentionKernels::launch`]) or together with others in one fused launch
//! ([`WindowAttentionKernels::launch_fused`]), which is how the `fused` mode runs all heads
//! of a layer at once. The backward ([`WindowAttentionKernels::backward`]) is the ViT
//! trainer's, one head per call on its windowed head-major buffers.

pub mod cpu;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchConfig};

use super::KernelModule;
use super::launch::{
    Args, check_at_least, check_len, elementwise, opt_ptr, ptr, ptr_mut, warp_rows,
};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};

/// Mirrors `WindowAttentionArgs` in `kernels/window_attention.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct WindowAttentionArgs {
    q: u64,
    k: u64,
    v: u64,
    bias: u64,
    key_pad: u64,
    sr: u64,
    slot_token: u64,
    out: u64,
    head_out: u64,
    q_batch_stride: i64,
    q_slot_stride: i64,
    kv_batch_stride: i64,
    kv_slot_stride: i64,
    head_stride: i64,
    w: i32,
    n_queries: i32,
    n_keys: i32,
    batch: i32,
    out_row: i32,
    out_channel: i32,
}

// SAFETY: plain old data with the C struct's layout.
unsafe impl DeviceRepr for WindowAttentionArgs {}

/// Argument sets of one fused launch (`MAX_FUSED` in the .cu file).
pub const MAX_FUSED: usize = 16;

/// Mirrors `WindowAttentionHeads` in `kernels/window_attention.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct WindowAttentionHeads {
    set: [WindowAttentionArgs; MAX_FUSED],
    /// Prefix sum of each set's blocks along x (query tiles times heads).
    tile_start: [i32; MAX_FUSED + 1],
    count: i32,
}

// SAFETY: plain old data with the C struct's layout.
unsafe impl DeviceRepr for WindowAttentionHeads {}

// The sizes `static_assert`ed in the .cu file: the two sides must change together.
const _: () = assert!(std::mem::size_of::<WindowAttentionArgs>() == 136);
const _: () = assert!(std::mem::size_of::<WindowAttentionHeads>() == 2248);

/// One checked launch: the packed arguments and the grid they need. Made only by
/// [`WindowAttentionKernels::prepare`], which checked every buffer against the shape.
///
/// It holds raw device addresses, as every queued launch does: the buffers it was prepared
/// from must outlive the work it is launched with (the engine owns them for its lifetime).
#[derive(Debug, Clone, Copy)]
pub struct PreparedAttention {
    args: WindowAttentionArgs,
    variant: usize,
    hd: usize,
    /// Query tiles per (batch item, head).
    tiles: usize,
    batch: usize,
    heads: usize,
}

const THREADS: u32 = 256;
/// Query slots per block and key slots per chunk (`TILE` in the .cu file).
const TILE: usize = 64;
/// Head widths with a compiled variant (`window_attention_hd{HD}_f32`).
pub const HEAD_WIDTHS: [usize; 4] = [8, 16, 32, 64];
/// Shared memory the kernel is allowed (above the 48 KB default; every GPU we build for
/// has at least 99 KB per block). hd = 64 needs 83 KB.
const SMEM_LIMIT: usize = 96 * 1024;

/// Where slot `s` of batch item `b` starts (in elements): `b * batch + s * slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLayout {
    pub batch: usize,
    pub slot: usize,
}

/// The shape of one launch: `n_queries` query slots (`n_queries / (w*w)` windows) against
/// `n_keys` key slots (`n_keys / (w*w)` windows), for `batch` items and `heads` heads that
/// sit `head_stride` elements apart in q, k and v and `hd` channels apart in `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub w: usize,
    pub hd: usize,
    pub n_queries: usize,
    pub n_keys: usize,
    pub batch: usize,
    pub heads: usize,
    pub head_stride: usize,
}

/// One launch's operands. Shapes are in the `.cu` file's header.
pub struct AttentionOperands<'a> {
    pub q: CudaView<'a, f32>,
    pub q_layout: SlotLayout,
    pub k: CudaView<'a, f32>,
    pub v: CudaView<'a, f32>,
    pub kv_layout: SlotLayout,
    /// `(n_queries / (w*w), n_keys)`, added after masking.
    pub bias: Option<CudaView<'a, f32>>,
    /// `(batch, n_keys)`, nonzero = masked key.
    pub key_pad: CudaView<'a, u8>,
    /// `sr(a, e)`, `(w*w)`; required when `w > 1`.
    pub sr: Option<CudaView<'a, f32>>,
    /// Slot -> token (`n_queries` entries, each below `n_keys`); `None` is the identity.
    pub slot_token: Option<CudaView<'a, u32>>,
    /// `(tokens, batch, out_row)`; head `z` writes channels `out_channel + z*hd ..`.
    pub out: CudaViewMut<'a, f32>,
    pub out_row: usize,
    pub out_channel: usize,
    /// `(batch, n_queries, hd)` in slot order (before window reverse), when wanted.
    pub head_out: Option<CudaViewMut<'a, f32>>,
}

/// One head of a backward call: `n` images of `t` slots, window side `w` (a power of two
/// whose `w*w` divides `t`), `hd` channels; head `head` of `heads` in the buffers.
#[derive(Clone, Copy, Debug)]
pub struct BackwardHead {
    pub n: usize,
    pub w: usize,
    pub t: usize,
    pub hd: usize,
    pub heads: usize,
    pub head: usize,
}

impl BackwardHead {
    /// The kernels' trailing arguments: `n, log2 w, t, hd, heads, head`.
    fn push<'a>(&self, args: Args<'a>) -> Result<Args<'a>> {
        args.int("n", self.n)?
            .int("log2 w", self.w.trailing_zeros() as usize)?
            .int("t", self.t)?
            .int("hd", self.hd)?
            .int("heads", self.heads)?
            .int("head", self.head)
    }
}

/// The forward's operands and the output gradient, each `[n, heads, t, hd]` in each head's
/// slot order; `q` pre-scaled by `hd^-0.5`. `sr`: the head's `w*w` table, for `w > 1`.
pub struct BackwardOperands<'a> {
    pub q: &'a CudaSlice<f32>,
    pub k: &'a CudaSlice<f32>,
    pub v: &'a CudaSlice<f32>,
    pub dout: &'a CudaSlice<f32>,
    pub sr: Option<&'a CudaSlice<f32>>,
}

/// The backward's outputs: scratch for the recomputed probabilities and the score gradient
/// (`[n, heads, t, t]` each, query window `i` in row `i`), and the head's part of `dq` (of
/// the pre-scaled q), `dk` and `dv` (`[n, heads, t, hd]` each).
pub struct BackwardOutputs<'a> {
    pub p: &'a mut CudaSlice<f32>,
    pub ds: &'a mut CudaSlice<f32>,
    pub dq: &'a mut CudaSlice<f32>,
    pub dk: &'a mut CudaSlice<f32>,
    pub dv: &'a mut CudaSlice<f32>,
}

/// The `window_attention_hd*_f32` variants and their fused `window_attention_heads_hd*_f32`
/// twins (in `HEAD_WIDTHS` order), and the two backward passes, loaded once.
#[derive(Debug, Clone)]
pub struct WindowAttentionKernels {
    variants: Vec<Kernel>,
    fused: Vec<Kernel>,
    backward_scores: Kernel,
    backward_grads: Kernel,
}

/// One past the largest element index a launch reads at `layout` for `slots` slots.
fn extent(layout: SlotLayout, s: &AttentionShape, slots: usize) -> usize {
    (s.batch - 1) * layout.batch + (slots - 1) * layout.slot + (s.heads - 1) * s.head_stride + s.hd
}

impl WindowAttentionKernels {
    pub fn load(gpu: &Gpu) -> Result<WindowAttentionKernels> {
        const NAMES: [&str; 4] = [
            "window_attention_hd8_f32",
            "window_attention_hd16_f32",
            "window_attention_hd32_f32",
            "window_attention_hd64_f32",
        ];
        const FUSED: [&str; 4] = [
            "window_attention_heads_hd8_f32",
            "window_attention_heads_hd16_f32",
            "window_attention_heads_hd32_f32",
            "window_attention_heads_hd64_f32",
        ];
        let load = |names: [&'static str; 4]| {
            names
                .iter()
                .map(|name| {
                    let kernel = gpu.kernel(KernelModule::WindowAttention, name)?;
                    kernel.allow_dynamic_shared(SMEM_LIMIT)?;
                    Ok(kernel)
                })
                .collect::<Result<Vec<_>>>()
        };
        let k = |name| gpu.kernel(KernelModule::WindowAttention, name);
        Ok(WindowAttentionKernels {
            variants: load(NAMES)?,
            fused: load(FUSED)?,
            backward_scores: k("window_attention_backward_scores_f32")?,
            backward_grads: k("window_attention_backward_grads_f32")?,
        })
    }

    /// Shared memory per block: q, k and v tiles, the D/P' tile, the scores, and three
    /// per-window running values (the layout at the top of the kernel).
    fn shared_bytes(hd: usize) -> usize {
        let floats = TILE * hd + TILE * (hd + 1) + TILE * hd + TILE * (TILE + 1) + TILE * TILE;
        (floats + 3 * TILE) * std::mem::size_of::<f32>()
    }

    /// Whether a head of window `w` and width `hd` can run: `w` a power of two with at most
    /// 64 pixels, `hd` one of the compiled widths. Returns the variant's index.
    pub fn supports(w: usize, hd: usize) -> Result<usize> {
        let variant = HEAD_WIDTHS.iter().position(|&x| x == hd).ok_or_else(|| {
            Error::invalid(
                "window_attention_hd*_f32",
                format!("head width {hd} has no variant (one of {HEAD_WIDTHS:?})"),
            )
        })?;
        if !w.is_power_of_two() || w * w > TILE {
            return Err(Error::invalid(
                "window_attention_hd*_f32",
                format!("window {w} must be a power of two with at most {TILE} pixels"),
            ));
        }
        Ok(variant)
    }

    /// Checks and launches one attention on `stream`.
    pub fn run(
        &self,
        stream: &CudaStream,
        s: &AttentionShape,
        ops: AttentionOperands<'_>,
    ) -> Result<()> {
        let prepared = self.prepare(stream, s, ops)?;
        self.launch(stream, &prepared)
    }

    /// Checks `ops` against `s` and packs the kernel's arguments (launches nothing).
    pub fn prepare(
        &self,
        stream: &CudaStream,
        s: &AttentionShape,
        mut ops: AttentionOperands<'_>,
    ) -> Result<PreparedAttention> {
        let ww = s.w * s.w;
        let variant = Self::supports(s.w, s.hd)?;
        let name = self.variants[variant].name();
        let bad = |problem: String| Err(Error::invalid(name, problem));
        if s.batch == 0 || s.heads == 0 {
            return bad(format!("batch and heads must be nonzero: {s:?}"));
        }
        for (what, n) in [("queries", s.n_queries), ("keys", s.n_keys)] {
            if n == 0 || !n.is_multiple_of(ww) {
                return bad(format!("{n} {what} are not whole {}x{} windows", s.w, s.w));
            }
        }
        let slots = s.n_queries;
        check_at_least(name, "q", ops.q.len(), extent(ops.q_layout, s, slots))?;
        check_at_least(name, "k", ops.k.len(), extent(ops.kv_layout, s, s.n_keys))?;
        check_at_least(name, "v", ops.v.len(), extent(ops.kv_layout, s, s.n_keys))?;
        if let Some(b) = &ops.bias {
            check_len(name, "bias", b.len(), slots / ww * s.n_keys)?;
        }
        check_len(name, "key_pad", ops.key_pad.len(), s.batch * s.n_keys)?;
        match &ops.sr {
            Some(sr) => check_len(name, "sr", sr.len(), ww)?,
            None if s.w > 1 => return bad("sr is required when w > 1".into()),
            None => {}
        }
        // Tokens the output rows are indexed by: the slot_token table's range, else slots.
        let tokens = match &ops.slot_token {
            Some(t) => {
                check_len(name, "slot_token", t.len(), slots)?;
                s.n_keys
            }
            None => slots,
        };
        if ops.out_channel + s.heads * s.hd > ops.out_row {
            return bad(format!(
                "{} heads of {} channels from channel {} overflow rows of {}",
                s.heads, s.hd, ops.out_channel, ops.out_row
            ));
        }
        check_at_least(name, "out", ops.out.len(), tokens * s.batch * ops.out_row)?;
        if let Some(h) = &ops.head_out {
            if s.heads != 1 {
                return bad("head_out is for single-head launches".into());
            }
            check_len(name, "head_out", h.len(), s.batch * slots * s.hd)?;
        }
        let i32_of = |v: usize| i32::try_from(v).map_err(|_| Error::invalid(name, "size over i32"));
        let args = WindowAttentionArgs {
            q: ptr(&ops.q, stream),
            k: ptr(&ops.k, stream),
            v: ptr(&ops.v, stream),
            bias: opt_ptr(ops.bias.as_ref(), stream),
            key_pad: ptr(&ops.key_pad, stream),
            sr: opt_ptr(ops.sr.as_ref(), stream),
            slot_token: opt_ptr(ops.slot_token.as_ref(), stream),
            out: ptr_mut(&mut ops.out, stream),
            head_out: ops.head_out.as_mut().map_or(0, |h| ptr_mut(h, stream)),
            q_batch_stride: ops.q_layout.batch as i64,
            q_slot_stride: ops.q_layout.slot as i64,
            kv_batch_stride: ops.kv_layout.batch as i64,
            kv_slot_stride: ops.kv_layout.slot as i64,
            head_stride: s.head_stride as i64,
            w: i32_of(s.w)?,
            n_queries: i32_of(s.n_queries)?,
            n_keys: i32_of(s.n_keys)?,
            batch: i32_of(s.batch)?,
            out_row: i32_of(ops.out_row)?,
            out_channel: i32_of(ops.out_channel)?,
        };
        Ok(PreparedAttention {
            args,
            variant,
            hd: s.hd,
            tiles: slots.div_ceil(TILE),
            batch: s.batch,
            heads: s.heads,
        })
    }

    /// Launches one prepared attention on `stream` (`window_attention_hd*_f32`).
    pub fn launch(&self, stream: &CudaStream, p: &PreparedAttention) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (p.tiles as u32, p.batch as u32, p.heads as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: Self::shared_bytes(p.hd) as u32,
        };
        // SAFETY: `args` mirrors the kernel's struct; `prepare` checked that every buffer
        // covers the indices the launch reads or writes.
        unsafe { self.variants[p.variant].on(stream).arg(&p.args).go(cfg) }
    }

    /// Launches up to [`MAX_FUSED`] prepared attentions as one kernel on `stream`
    /// (`window_attention_heads_hd*_f32`): one block per (query tile, batch item, head) of
    /// every set. They must share the head width and the batch (one grid shape, one
    /// shared-memory size); their windows and lengths may differ. Each set computes exactly
    /// what [`WindowAttentionKernels::launch`] would.
    pub fn launch_fused(&self, stream: &CudaStream, sets: &[PreparedAttention]) -> Result<()> {
        let name = "window_attention_heads_hd*_f32";
        let first = sets
            .first()
            .ok_or_else(|| Error::invalid(name, "no attention to launch"))?;
        if sets.len() > MAX_FUSED {
            return Err(Error::invalid(
                name,
                format!("{} sets, at most {MAX_FUSED} per launch", sets.len()),
            ));
        }
        if let Some(odd) = sets
            .iter()
            .find(|p| p.hd != first.hd || p.batch != first.batch)
        {
            return Err(Error::invalid(
                name,
                format!(
                    "fused sets must share head width and batch: hd {} batch {} vs hd {} batch {}",
                    first.hd, first.batch, odd.hd, odd.batch
                ),
            ));
        }
        let mut heads = WindowAttentionHeads {
            set: [first.args; MAX_FUSED],
            tile_start: [0; MAX_FUSED + 1],
            count: sets.len() as i32,
        };
        let mut blocks = 0usize;
        for (i, p) in sets.iter().enumerate() {
            heads.set[i] = p.args;
            blocks += p.tiles * p.heads;
            heads.tile_start[i + 1] = i32::try_from(blocks)
                .map_err(|_| Error::invalid(name, "more blocks than fit in i32"))?;
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, first.batch as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: Self::shared_bytes(first.hd) as u32,
        };
        // SAFETY: `heads` mirrors the kernel's struct; each set was checked by `prepare`, and
        // the grid covers exactly the blocks of `tile_start`.
        unsafe { self.fused[first.variant].on(stream).arg(&heads).go(cfg) }
    }

    /// The backward of head `h` (no key padding, no bias: the ViT's attention): recomputes
    /// the probabilities into `out.p` and the score gradient into `out.ds`
    /// (`window_attention_backward_scores_f32`), then writes the head's `dq`, `dk`, `dv`
    /// (`window_attention_backward_grads_f32`).
    pub fn backward(
        &self,
        stream: &CudaStream,
        h: &BackwardHead,
        x: &BackwardOperands<'_>,
        out: BackwardOutputs<'_>,
    ) -> Result<()> {
        let name = self.backward_scores.name();
        let ww = h.w * h.w;
        if !h.w.is_power_of_two() || !h.t.is_multiple_of(ww) || h.head >= h.heads {
            return Err(Error::invalid(name, format!("bad head shape {h:?}")));
        }
        match x.sr {
            Some(sr) => check_len(name, "sr", sr.len(), ww)?,
            None if h.w > 1 => return Err(Error::invalid(name, "sr is required when w > 1")),
            None => {}
        }
        let (slots, scores) = (h.n * h.heads * h.t * h.hd, h.n * h.heads * h.t * h.t);
        let args = Args::new(&self.backward_scores, stream)
            .input("q", x.q, slots)?
            .input("k", x.k, slots)?
            .input("v", x.v, slots)?
            .input("dout", x.dout, slots)?
            .optional("sr", x.sr, ww)?
            .output("p", out.p, scores)?
            .output("ds", out.ds, scores)?;
        let args = h.push(args)?;
        // SAFETY: window_attention_backward_scores_f32(q, k, v, dout, sr, p, ds, then six
        // ints: n, log2 w, t, hd, heads, head); one warp per (image, query window); every
        // buffer covers the shape (checked).
        unsafe { args.launch(warp_rows(h.n * h.t / ww))? };
        let args = Args::new(&self.backward_grads, stream)
            .input("q", x.q, slots)?
            .input("k", x.k, slots)?
            .input("dout", x.dout, slots)?
            .input("p", &*out.p, scores)?
            .input("ds", &*out.ds, scores)?
            .output("dq", out.dq, slots)?
            .output("dk", out.dk, slots)?
            .output("dv", out.dv, slots)?;
        let args = h.push(args)?;
        // SAFETY: window_attention_backward_grads_f32(q, k, dout, p, ds, dq, dk, dv, then the
        // same six ints); one thread per (image, slot, channel) of the head (strided); every
        // buffer covers the shape (checked).
        unsafe { args.launch(elementwise(h.n * h.t * h.hd)) }
    }
}
