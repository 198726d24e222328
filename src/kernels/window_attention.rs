//! Launcher for `kernels/window_attention.cu`: cyclic-shift window attention of one head (or,
//! with `w == 1`, plain attention of several heads), fused with window reverse and concat.

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchConfig};

use super::KernelModule;
use super::raw::{check_len, opt_ptr, ptr, ptr_mut};
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

const THREADS: u32 = 256;
/// Query slots per block and key slots per chunk (`TILE` in the .cu file).
const TILE: usize = 64;
/// Head widths with a compiled variant (`window_attention_hd{HD}_f32`).
const HEAD_WIDTHS: [usize; 4] = [8, 16, 32, 64];
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

/// The `window_attention_hd*_f32` variants, loaded once (in `HEAD_WIDTHS` order).
#[derive(Debug, Clone)]
pub struct WindowAttentionKernel {
    variants: Vec<Kernel>,
}

/// One past the largest element index a launch reads at `layout` for `slots` slots.
fn extent(layout: SlotLayout, s: &AttentionShape, slots: usize) -> usize {
    (s.batch - 1) * layout.batch + (slots - 1) * layout.slot + (s.heads - 1) * s.head_stride + s.hd
}

fn check_covers(kernel: &str, what: &str, len: usize, need: usize) -> Result<()> {
    if len >= need {
        Ok(())
    } else {
        Err(Error::invalid(
            kernel,
            format!("{what} has {len} elements, but the launch reads up to {need}"),
        ))
    }
}

impl WindowAttentionKernel {
    pub fn load(gpu: &Gpu) -> Result<WindowAttentionKernel> {
        const NAMES: [&str; 4] = [
            "window_attention_hd8_f32",
            "window_attention_hd16_f32",
            "window_attention_hd32_f32",
            "window_attention_hd64_f32",
        ];
        let variants = NAMES
            .iter()
            .map(|name| {
                let kernel = gpu.kernel(KernelModule::WindowAttention, name)?;
                kernel.allow_dynamic_shared(SMEM_LIMIT)?;
                Ok(kernel)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(WindowAttentionKernel { variants })
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
                "window_attention_f32",
                format!("head width {hd} has no variant (one of {HEAD_WIDTHS:?})"),
            )
        })?;
        if !w.is_power_of_two() || w * w > TILE {
            return Err(Error::invalid(
                "window_attention_f32",
                format!("window {w} must be a power of two with at most {TILE} pixels"),
            ));
        }
        Ok(variant)
    }

    pub fn run(
        &self,
        stream: &CudaStream,
        s: &AttentionShape,
        mut ops: AttentionOperands<'_>,
    ) -> Result<()> {
        let ww = s.w * s.w;
        let kernel = &self.variants[Self::supports(s.w, s.hd)?];
        let name = kernel.name();
        let bad = |problem: String| Err(Error::invalid(name, problem));
        if s.batch == 0 || s.heads == 0 {
            return bad(format!("batch and heads must be nonzero: {s:?}"));
        }
        for (what, n) in [("queries", s.n_queries), ("keys", s.n_keys)] {
            if n == 0 || !n.is_multiple_of(ww) {
                return bad(format!("{n} {what} are not whole {}x{} windows", s.w, s.w));
            }
        }
        let smem = Self::shared_bytes(s.hd);
        let slots = s.n_queries;
        check_covers(name, "q", ops.q.len(), extent(ops.q_layout, s, slots))?;
        check_covers(name, "k", ops.k.len(), extent(ops.kv_layout, s, s.n_keys))?;
        check_covers(name, "v", ops.v.len(), extent(ops.kv_layout, s, s.n_keys))?;
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
        check_covers(name, "out", ops.out.len(), tokens * s.batch * ops.out_row)?;
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
        let cfg = LaunchConfig {
            grid_dim: (slots.div_ceil(TILE) as u32, s.batch as u32, s.heads as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // SAFETY: `args` mirrors the kernel's struct; every buffer covers the indices the
        // launch reads or writes (checked above).
        unsafe { kernel.on(stream).arg(&args).go(cfg) }
    }
}
