//! Launchers for `kernels/window_attention.cu`: cyclic-shift window attention of one head (or,
//! with `w == 1`, plain attention of several heads), fused with window reverse and concat, in
//! three precisions and for every head width up to [`MAX_HEAD_WIDTH`], with the keys
//! optionally split over several blocks ([`KeySplit`]); and its backward.
//!
//! A forward launch is checked and packed first ([`WindowAttentionKernels::prepare`] gives a
//! [`PreparedAttention`], a value holding the kernel's argument struct), then launched alone
//! ([`WindowAttentionKernels::launch`]) or together with others in one fused launch
//! ([`WindowAttentionKernels::launch_fused`]), which is how the `fused` mode runs all heads
//! of a layer at once; a prepared attention computes the same bits either way. The backward
//! ([`WindowAttentionKernels::backward`]) is the ViT trainer's, one head per call on its
//! windowed head-major buffers.

pub mod cpu;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchConfig};

use super::KernelModule;
use super::launch::{
    Args, check_at_least, check_len, elementwise, opt_ptr, ptr, ptr_mut, warp_rows,
};
use crate::base::Precision;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};

/// Mirrors `AttentionArgs` in `kernels/window_attention.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AttentionArgs {
    q: u64,
    k: u64,
    v: u64,
    bias: u64,
    key_pad: u64,
    sr: u64,
    slot_token: u64,
    out: u64,
    head_out: u64,
    partial: u64,
    arrived: u64,
    q_batch_stride: i64,
    q_slot_stride: i64,
    kv_batch_stride: i64,
    kv_slot_stride: i64,
    head_stride: i64,
    w: i32,
    hd: i32,
    n_queries: i32,
    n_keys: i32,
    batch: i32,
    heads: i32,
    out_row: i32,
    out_channel: i32,
    splits: i32,
    chunks_per_split: i32,
}

// SAFETY: plain old data with the C struct's layout.
unsafe impl DeviceRepr for AttentionArgs {}

/// Argument sets of one fused launch (`MAX_FUSED` in the .cu file).
pub const MAX_FUSED: usize = 16;

/// Mirrors `AttentionHeads` in `kernels/window_attention.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AttentionHeads {
    set: [AttentionArgs; MAX_FUSED],
    /// Prefix sum of each set's blocks along x (query tiles x heads x splits).
    block_start: [i32; MAX_FUSED + 1],
    count: i32,
}

// SAFETY: plain old data with the C struct's layout.
unsafe impl DeviceRepr for AttentionHeads {}

// The sizes `static_assert`ed in the .cu file: the two sides must change together.
const _: () = assert!(std::mem::size_of::<AttentionArgs>() == 168);
const _: () = assert!(std::mem::size_of::<AttentionHeads>() == 2760);

const THREADS: u32 = 256;
/// Query slots per block and key slots per chunk (`TILE` in the .cu file).
pub const TILE: usize = 64;
/// The variants' tile widths (`window_attention_hd{HDP}_*`): a head of width `hd` runs in the
/// narrowest one at least `hd` wide, its other channels zero.
pub const PADDED_WIDTHS: [usize; 4] = [16, 32, 64, 128];
/// The widest head the kernels take.
pub const MAX_HEAD_WIDTH: usize = 128;
/// Most key splits of one head (`MAX_SPLITS` in the .cu file).
pub const MAX_SPLITS: usize = 64;

/// Kernel names per precision and variant, in [`PADDED_WIDTHS`] order: (one launch, fused).
fn names(precision: Precision) -> [(&'static str, &'static str); 4] {
    macro_rules! names {
        ($p:literal) => {
            [
                (
                    concat!("window_attention_hd16_", $p),
                    concat!("window_attention_heads_hd16_", $p),
                ),
                (
                    concat!("window_attention_hd32_", $p),
                    concat!("window_attention_heads_hd32_", $p),
                ),
                (
                    concat!("window_attention_hd64_", $p),
                    concat!("window_attention_heads_hd64_", $p),
                ),
                (
                    concat!("window_attention_hd128_", $p),
                    concat!("window_attention_heads_hd128_", $p),
                ),
            ]
        };
    }
    match precision {
        Precision::F32 => names!("f32"),
        Precision::Tf32 => names!("tf32"),
        Precision::Bf16 => names!("bf16"),
    }
}

/// Shared memory per block of the variant `hdp` wide in `precision`: the most either body the
/// kernel runs needs. The windows body (`Smem<HDP>::bytes` in the .cu file): q and k tiles
/// (rows of hdp + 4), v (hdp + 8), D (rows of 68), 16 score rows, four per-window arrays and
/// the merge flag. The rows body (`RowsSmem<HDP>::bytes`; bf16 heads of `w <= 2`): two
/// chunks of k (rows of hdp + 8) and v (hdp + 4), two per-row arrays and the merge flag.
fn shared_bytes(precision: Precision, hdp: usize) -> usize {
    let ds = TILE + 4;
    let windows = 2 * TILE * (hdp + 4) + TILE * (hdp + 8) + TILE * ds + 16 * ds + 4 * TILE + 4;
    let rows = 2 * TILE * (hdp + 8) + 2 * TILE * (hdp + 4) + 2 * TILE + 4;
    let floats = match precision {
        Precision::Bf16 => windows.max(rows),
        Precision::F32 | Precision::Tf32 => windows,
    };
    floats * std::mem::size_of::<f32>()
}

/// One checked launch: the packed arguments and the grid they need. Made only by
/// [`WindowAttentionKernels::prepare`], which checked every buffer against the shape.
///
/// It holds raw device addresses, as every queued launch does: the buffers it was prepared
/// from must outlive the work it is launched with (the engine owns them for its lifetime).
#[derive(Debug, Clone, Copy)]
pub struct PreparedAttention {
    args: AttentionArgs,
    variant: usize,
    /// Blocks along x: query tiles x heads x splits.
    blocks: usize,
    batch: usize,
    heads: usize,
}

impl PreparedAttention {
    /// The key splits this launch runs with (1: none).
    pub fn splits(&self) -> usize {
        self.args.splits as usize
    }
}

/// Query tiles times heads times batch items: the units a split head merges separately.
fn units(s: &AttentionShape) -> usize {
    s.batch * s.heads * s.n_queries.div_ceil(TILE)
}

/// `(splits, chunks per split)` for at most `wanted` splits of `n_keys` keys: chunks are
/// spread evenly and no split is empty.
fn split_chunks(n_keys: usize, wanted: usize) -> (usize, usize) {
    let chunks = n_keys.div_ceil(TILE).max(1);
    let per = chunks.div_ceil(wanted.clamp(1, MAX_SPLITS));
    (chunks.div_ceil(per), per)
}

/// A head's keys split over `splits` blocks per query tile, each block walking a share of
/// the 64-key chunks, and the workspace they merge through. `arrived` must be zero before
/// the first launch (allocate it zeroed; every launch leaves it zero), and one workspace
/// serves one launch at a time (heads in flight together need their own).
pub struct KeySplit<'a> {
    pub splits: usize,
    /// At least [`KeySplit::partial_len`] elements: the splits' outputs and running maxima
    /// and sums.
    pub partial: CudaViewMut<'a, f32>,
    /// At least [`KeySplit::arrived_len`] counters.
    pub arrived: CudaViewMut<'a, u32>,
}

impl KeySplit<'_> {
    /// The `partial` elements `splits` splits of `s` need.
    pub fn partial_len(s: &AttentionShape, splits: usize) -> usize {
        let (splits, _) = split_chunks(s.n_keys, splits);
        splits * units(s) * TILE * (s.hd + 2)
    }

    /// The `arrived` counters a split launch of `s` needs.
    pub fn arrived_len(s: &AttentionShape) -> usize {
        units(s)
    }

    /// The splits that give a launch of `s` about `target_blocks` blocks (rounded, at least
    /// 1, at most one per 64-key chunk).
    pub fn for_blocks(s: &AttentionShape, target_blocks: usize) -> usize {
        let per_split = units(s).max(1);
        let wanted = (target_blocks + per_split / 2) / per_split;
        split_chunks(s.n_keys, wanted).0
    }

    /// The key splits of attentions that run together on a GPU of `sms` multiprocessors (one
    /// layer's heads, in any dispatch mode; or one launch alone): together they fill it once
    /// ([`blocks_per_sm`] blocks on each), each head's share in proportion to its cost per
    /// key chunk, about twice as high for `w = 1` (64 query windows of scores, softmax and
    /// bias per tile, against 16 or fewer) so that the heads finish together. (That is the
    /// windows body's cost; bf16 runs `w <= 2` in the rows body, whose cost per chunk has
    /// not been measured yet, so the shares are the same for every precision.) The same
    /// shapes give the same splits however they are dispatched, so the modes agree bit for
    /// bit.
    pub fn for_heads(shapes: &[AttentionShape], sms: usize) -> Vec<usize> {
        let cost = |s: &AttentionShape| if s.w == 1 { 2 } else { 1 };
        let total: usize = shapes.iter().map(cost).sum::<usize>().max(1);
        shapes
            .iter()
            .map(|s| Self::for_blocks(s, blocks_per_sm(s.hd) * sms * cost(s) / total))
            .collect()
    }
}

/// Attention blocks a multiprocessor holds at once for heads of `hd` channels (the minimum
/// of the variant's `__launch_bounds__` in `window_attention.cu`, which its registers and
/// shared memory allow): what [`KeySplit::for_heads`] fills the GPU with.
pub fn blocks_per_sm(hd: usize) -> usize {
    match hd {
        0..=32 => 3,
        33..=64 => 2,
        _ => 1,
    }
}

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
    /// The keys split over several blocks; `None` walks them all in one block per tile.
    pub split: Option<KeySplit<'a>>,
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

/// The `window_attention_hd*_<precision>` variants and their fused
/// `window_attention_heads_hd*_<precision>` twins (in [`PADDED_WIDTHS`] order) of one
/// precision, and the two backward passes (f32), loaded once. A variant whose shared memory
/// the device cannot give a block is kept as the reason, reported when a head needs it.
#[derive(Debug, Clone)]
pub struct WindowAttentionKernels {
    precision: Precision,
    variants: Vec<std::result::Result<(Kernel, Kernel), String>>,
    backward_scores: Kernel,
    backward_grads: Kernel,
}

/// One past the largest element index a launch reads at `layout` for `slots` slots.
fn extent(layout: SlotLayout, s: &AttentionShape, slots: usize) -> usize {
    (s.batch - 1) * layout.batch + (slots - 1) * layout.slot + (s.heads - 1) * s.head_stride + s.hd
}

impl WindowAttentionKernels {
    /// The f32 kernels (exact FMAs on CUDA cores).
    pub fn load(gpu: &Gpu) -> Result<WindowAttentionKernels> {
        Self::load_precision(gpu, Precision::F32)
    }

    /// The kernels of `precision`: f32 (CUDA cores), tf32 or bf16 (QK^T and P'V on tensor
    /// cores, f32 accumulation and softmax).
    pub fn load_precision(gpu: &Gpu, precision: Precision) -> Result<WindowAttentionKernels> {
        let variants = names(precision)
            .iter()
            .zip(PADDED_WIDTHS)
            .map(|(&(one, fused), hdp)| {
                let (one, fused) = (
                    gpu.kernel(KernelModule::WindowAttention, one)?,
                    gpu.kernel(KernelModule::WindowAttention, fused)?,
                );
                let bytes = shared_bytes(precision, hdp);
                let allowed = one
                    .allow_dynamic_shared(bytes)
                    .and_then(|()| fused.allow_dynamic_shared(bytes));
                Ok(allowed.map(|()| (one, fused)).map_err(|e| {
                    format!(
                        "head widths up to {hdp} need {bytes} bytes of shared memory a block: {e}"
                    )
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let k = |name| gpu.kernel(KernelModule::WindowAttention, name);
        Ok(WindowAttentionKernels {
            precision,
            variants,
            backward_scores: k("window_attention_backward_scores_f32")?,
            backward_grads: k("window_attention_backward_grads_f32")?,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether a head of window `w` and width `hd` can run: `w` a power of two with at most
    /// 64 pixels, `1 <= hd <=` [`MAX_HEAD_WIDTH`]. Returns the variant's index.
    pub fn supports(w: usize, hd: usize) -> Result<usize> {
        let name = "window_attention_hd*";
        let variant = PADDED_WIDTHS
            .iter()
            .position(|&x| hd >= 1 && hd <= x)
            .ok_or_else(|| {
                Error::invalid(
                    name,
                    format!("head width {hd} is outside 1..={MAX_HEAD_WIDTH}"),
                )
            })?;
        if !w.is_power_of_two() || w * w > TILE {
            return Err(Error::invalid(
                name,
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

    fn kernels(&self, variant: usize) -> Result<&(Kernel, Kernel)> {
        self.variants[variant]
            .as_ref()
            .map_err(|why| Error::invalid("window_attention_hd*", why.clone()))
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
        let name = self.kernels(variant)?.0.name();
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
        let (splits, chunks_per_split, partial, arrived) = match ops.split.as_mut() {
            Some(split) if split.splits > 1 => {
                let (splits, per) = split_chunks(s.n_keys, split.splits);
                let need = KeySplit::partial_len(s, splits);
                check_at_least(name, "split partial", split.partial.len(), need)?;
                let counters = KeySplit::arrived_len(s);
                check_at_least(name, "split arrived", split.arrived.len(), counters)?;
                let (p, a) = (&mut split.partial, &mut split.arrived);
                (splits, per, ptr_mut(p, stream), ptr_mut(a, stream))
            }
            _ => (1, s.n_keys.div_ceil(TILE), 0, 0),
        };
        let i32_of = |v: usize| i32::try_from(v).map_err(|_| Error::invalid(name, "size over i32"));
        let tiles = slots.div_ceil(TILE);
        let args = AttentionArgs {
            q: ptr(&ops.q, stream),
            k: ptr(&ops.k, stream),
            v: ptr(&ops.v, stream),
            bias: opt_ptr(ops.bias.as_ref(), stream),
            key_pad: ptr(&ops.key_pad, stream),
            sr: opt_ptr(ops.sr.as_ref(), stream),
            slot_token: opt_ptr(ops.slot_token.as_ref(), stream),
            out: ptr_mut(&mut ops.out, stream),
            head_out: ops.head_out.as_mut().map_or(0, |h| ptr_mut(h, stream)),
            partial,
            arrived,
            q_batch_stride: ops.q_layout.batch as i64,
            q_slot_stride: ops.q_layout.slot as i64,
            kv_batch_stride: ops.kv_layout.batch as i64,
            kv_slot_stride: ops.kv_layout.slot as i64,
            head_stride: s.head_stride as i64,
            w: i32_of(s.w)?,
            hd: i32_of(s.hd)?,
            n_queries: i32_of(s.n_queries)?,
            n_keys: i32_of(s.n_keys)?,
            batch: i32_of(s.batch)?,
            heads: i32_of(s.heads)?,
            out_row: i32_of(ops.out_row)?,
            out_channel: i32_of(ops.out_channel)?,
            splits: i32_of(splits)?,
            chunks_per_split: i32_of(chunks_per_split)?,
        };
        Ok(PreparedAttention {
            args,
            variant,
            blocks: tiles * s.heads * splits,
            batch: s.batch,
            heads: s.heads,
        })
    }

    /// Launches one prepared attention on `stream` (`window_attention_hd*`): grid (query
    /// tiles x splits, batch, heads).
    pub fn launch(&self, stream: &CudaStream, p: &PreparedAttention) -> Result<()> {
        let (one, _) = self.kernels(p.variant)?;
        let cfg = LaunchConfig {
            grid_dim: ((p.blocks / p.heads) as u32, p.batch as u32, p.heads as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: shared_bytes(self.precision, PADDED_WIDTHS[p.variant]) as u32,
        };
        // SAFETY: `args` mirrors the kernel's struct; `prepare` checked that every buffer
        // covers the indices the launch reads or writes.
        unsafe { one.on(stream).arg(&p.args).go(cfg) }
    }

    /// Launches up to [`MAX_FUSED`] prepared attentions as one kernel on `stream`
    /// (`window_attention_heads_hd*`): one block per (query tile, split, batch item, head)
    /// of every set. They must share the variant (head widths in one of [`PADDED_WIDTHS`]'
    /// ranges) and the batch (one grid shape, one shared-memory size); their windows,
    /// lengths and splits may differ. Each set computes exactly what
    /// [`WindowAttentionKernels::launch`] would. Sets with more chunks per block go first, so
    /// that the longest blocks start in the first wave.
    pub fn launch_fused(&self, stream: &CudaStream, sets: &[PreparedAttention]) -> Result<()> {
        let name = "window_attention_heads_hd*";
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
            .find(|p| p.variant != first.variant || p.batch != first.batch)
        {
            return Err(Error::invalid(
                name,
                format!(
                    "fused sets must share head width and batch: hd {} batch {} vs hd {} batch {}",
                    first.args.hd, first.batch, odd.args.hd, odd.batch
                ),
            ));
        }
        let (_, fused) = self.kernels(first.variant)?;
        let mut order: Vec<&PreparedAttention> = sets.iter().collect();
        // Blocks with more work first; w = 1 heads (64 query windows, the most scores) ahead
        // of others with as many chunks. A stable sort keeps the caller's order otherwise.
        order.sort_by_key(|p| std::cmp::Reverse((p.args.chunks_per_split, p.args.w == 1)));
        let mut heads = AttentionHeads {
            set: [first.args; MAX_FUSED],
            block_start: [0; MAX_FUSED + 1],
            count: sets.len() as i32,
        };
        let mut blocks = 0usize;
        for (i, p) in order.iter().enumerate() {
            heads.set[i] = p.args;
            blocks += p.blocks;
            heads.block_start[i + 1] = i32::try_from(blocks)
                .map_err(|_| Error::invalid(name, "more blocks than fit in i32"))?;
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, first.batch as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: shared_bytes(self.precision, PADDED_WIDTHS[first.variant]) as u32,
        };
        // SAFETY: `heads` mirrors the kernel's struct; each set was checked by `prepare`, and
        // the grid covers exactly the blocks of `block_start`.
        unsafe { fused.on(stream).arg(&heads).go(cfg) }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n_keys: usize, batch: usize, heads: usize) -> AttentionShape {
        AttentionShape {
            w: 1,
            hd: 32,
            n_queries: 704,
            n_keys,
            batch,
            heads,
            head_stride: 0,
        }
    }

    #[test]
    fn splits_are_even_and_never_empty() {
        assert_eq!(split_chunks(704, 1), (1, 11));
        assert_eq!(split_chunks(704, 4), (4, 3));
        assert_eq!(split_chunks(704, 5), (4, 3));
        assert_eq!(split_chunks(704, 11), (11, 1));
        assert_eq!(split_chunks(704, 100), (11, 1));
        assert_eq!(split_chunks(45, 3), (1, 1));
        for keys in 1..2000 {
            for wanted in 1..20 {
                let (splits, per) = split_chunks(keys, wanted);
                let chunks = keys.div_ceil(TILE);
                assert!(splits <= wanted.max(1) && (splits - 1) * per < chunks);
                assert!(splits * per >= chunks);
            }
        }
    }

    #[test]
    fn splits_aim_at_a_block_count() {
        // 11 query tiles of one item: 264 blocks is 24 per tile, capped at 11 chunks.
        assert_eq!(KeySplit::for_blocks(&shape(704, 1, 1), 264), 11);
        assert_eq!(KeySplit::for_blocks(&shape(704, 1, 1), 33), 3);
        assert_eq!(KeySplit::for_blocks(&shape(704, 32, 1), 264), 1);
        assert_eq!(
            KeySplit::partial_len(&shape(704, 1, 1), 4),
            4 * 11 * 64 * 34
        );
        // The released layer on 132 SMs (three blocks on each at hd 32): w = 1 heads about
        // twice the blocks of the others (6 splits of 2 chunks, against 4 of 3); the
        // decoder's one query (8 heads in one launch) one block per chunk.
        let layer: Vec<_> = [1, 2, 4, 8, 1, 2, 4, 8]
            .iter()
            .map(|&w| AttentionShape {
                w,
                ..shape(704, 1, 1)
            })
            .collect();
        assert_eq!(
            KeySplit::for_heads(&layer, 132),
            vec![6, 4, 4, 4, 6, 4, 4, 4]
        );
        let cross = AttentionShape {
            n_queries: 1,
            heads: 8,
            ..shape(704, 1, 1)
        };
        assert_eq!(KeySplit::for_heads(&[cross], 132), vec![11]);
        assert_eq!(KeySplit::arrived_len(&shape(704, 2, 3)), 2 * 3 * 11);
    }

    #[test]
    fn every_width_up_to_128_has_a_variant() {
        for hd in 1..=MAX_HEAD_WIDTH {
            let v = WindowAttentionKernels::supports(2, hd).unwrap();
            assert!(PADDED_WIDTHS[v] >= hd && (v == 0 || PADDED_WIDTHS[v - 1] < hd));
        }
        assert!(WindowAttentionKernels::supports(2, 0).is_err());
        assert!(WindowAttentionKernels::supports(2, 129).is_err());
        assert!(WindowAttentionKernels::supports(3, 8).is_err());
        assert!(WindowAttentionKernels::supports(16, 8).is_err());
    }

    #[test]
    fn shared_memory_fits_the_target_gpus() {
        // sm_86/89 give a block up to 99 KB, sm_80 163 KB, sm_90 227 KB.
        for precision in [Precision::F32, Precision::Tf32, Precision::Bf16] {
            assert!(shared_bytes(precision, 64) <= 99 * 1024);
            assert!(shared_bytes(precision, 128) <= 163 * 1024);
            assert_eq!(
                shared_bytes(precision, 32),
                4 * (2 * 64 * 36 + 64 * 40 + 64 * 68 + 16 * 68 + 260)
            );
        }
        // The rows body's two chunks outgrow the windows body's tiles at 128 channels.
        assert_eq!(
            shared_bytes(Precision::Bf16, 128),
            4 * (2 * 64 * 136 + 2 * 64 * 132 + 132)
        );
        assert!(shared_bytes(Precision::F32, 128) < shared_bytes(Precision::Bf16, 128));
    }
}
