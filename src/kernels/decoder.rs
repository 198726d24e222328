//! Launcher for `kernels/decoder.cu`: the transformer's decoder, every layer and the final
//! post_norm, in one launch (the kernel file's header has the math and the block chain). The
//! CPU reference is [`cpu`].
//!
//! [`DecoderWeights`] packs the decoder's parameters into one device buffer once;
//! [`DecoderPlan`] decides, per batch size, how the products are split over blocks;
//! [`DecoderWorkspace`] holds what the blocks exchange (allocated once per batch size; its
//! counters stay zero between launches, so a captured graph can replay the launch).

pub mod cpu;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchConfig};

use super::KernelModule;
use super::launch::{check_len, ptr, ptr_mut};
use crate::base::Precision;
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::{DeviceBuffer, Gpu, Kernel, poison_nan, upload};

/// The packed fields of one layer, in the order of `decoder::Field` in the .cu file.
const FIELDS: usize = 18;

/// Mirrors `DecoderArgs` in `kernels/decoder.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DecoderArgs {
    weights: u64,
    mem_kv: u64,
    key_pad: u64,
    qpos: u64,
    layers_out: u64,
    hs: u64,
    residual: u64,
    work: u64,
    control: u64,
    layer_stride: i64,
    post_norm: i64,
    work_half: i64,
    field: [i64; FIELDS],
    batch: i32,
    c: i32,
    ff: i32,
    heads: i32,
    layers: i32,
    l_all: i32,
    proj_chunk: i32,
    ffn1_chunk: i32,
    ffn2_chunk: i32,
    keys_per_split: i32,
    proj_columns: i32,
    ffn1_columns: i32,
    ffn2_columns: i32,
    scale: f32,
    eps: f32,
}

// SAFETY: plain old data with the C struct's layout (`#[repr(C)]`, same field order).
unsafe impl DeviceRepr for DecoderArgs {}

// The size `static_assert`ed in the .cu file: the two sides must change together.
const _: () = assert!(std::mem::size_of::<DecoderArgs>() == 304);

const THREADS: u32 = 256;
/// Warps of a block: a linear phase's block computes a multiple of this many output columns,
/// one per warp at a time.
const WARPS: usize = THREADS as usize / 32;
/// Floats of the kernel's shared buffer (`SMEM_FLOATS`): a k chunk of one row must fit.
const SMEM_FLOATS: usize = 8192;
/// The widest model the kernel's LayerNorm keeps in registers (`layer_norm::MAX_C`).
pub const MAX_WIDTH: usize = 1024;
/// The most keys of one attention block (its scores sit in shared memory next to q and the
/// p.v sums of up to `MAX_WIDTH` channels).
const MAX_KEYS_PER_SPLIT: usize = 4096;

/// The decoder's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderDims {
    /// Model width.
    pub c: usize,
    /// FFN hidden width.
    pub ff: usize,
    pub heads: usize,
    pub layers: usize,
    /// Tokens of the encoder memory.
    pub l_all: usize,
}

impl DecoderDims {
    pub fn hd(&self) -> usize {
        self.c / self.heads.max(1)
    }

    /// Channels of one memory row of k|v for all layers: `layers * 2c`.
    pub fn kv_row(&self) -> usize {
        self.layers * 2 * self.c
    }

    fn validate(&self) -> Result<()> {
        let d = self;
        if d.c == 0 || d.c > MAX_WIDTH || d.heads == 0 || !d.c.is_multiple_of(d.heads) {
            return Err(Error::invalid(
                "decoder",
                format!(
                    "c = {} must be 1..={MAX_WIDTH} and divisible by {} heads",
                    d.c, d.heads
                ),
            ));
        }
        if d.ff == 0 || d.layers == 0 || d.l_all == 0 {
            return Err(Error::invalid(
                "decoder",
                format!(
                    "ff = {}, layers = {}, memory tokens = {}: each must be at least 1",
                    d.ff, d.layers, d.l_all
                ),
            ));
        }
        Ok(())
    }
}

/// `y = x W^T + b` on the host: `weight` `(out, in)`, `bias` `(out)`.
#[derive(Debug, Clone, Copy)]
pub struct LinearRef<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
}

/// A LayerNorm's `gamma`, `beta` `(c)` on the host.
#[derive(Debug, Clone, Copy)]
pub struct NormRef<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
}

/// One decoder layer's parameters on the host. The self attention has one query and one key,
/// so its softmax is exactly 1 and only `v` (`in_proj` rows `[2c, 3c)`) and `out_proj`
/// matter; the cross attention's query is `in_proj` rows `[0, c)`, its keys and values come
/// from the memory (`mem_kv`).
#[derive(Debug, Clone, Copy)]
pub struct LayerRef<'a> {
    pub self_v: LinearRef<'a>,
    pub self_out: LinearRef<'a>,
    pub cross_q: LinearRef<'a>,
    pub cross_out: LinearRef<'a>,
    pub linear1: LinearRef<'a>,
    pub linear2: LinearRef<'a>,
    pub norm1: NormRef<'a>,
    pub norm2: NormRef<'a>,
    pub norm3: NormRef<'a>,
}

impl<'a> LayerRef<'a> {
    /// The fields in the kernel's order, each with the length it must have.
    fn fields(&self, d: &DecoderDims) -> [(&'static str, &'a [f32], usize); FIELDS] {
        let (c, ff) = (d.c, d.ff);
        [
            ("self_v.weight", self.self_v.weight, c * c),
            ("self_v.bias", self.self_v.bias, c),
            ("self_out.weight", self.self_out.weight, c * c),
            ("self_out.bias", self.self_out.bias, c),
            ("cross_q.weight", self.cross_q.weight, c * c),
            ("cross_q.bias", self.cross_q.bias, c),
            ("cross_out.weight", self.cross_out.weight, c * c),
            ("cross_out.bias", self.cross_out.bias, c),
            ("linear1.weight", self.linear1.weight, ff * c),
            ("linear1.bias", self.linear1.bias, ff),
            ("linear2.weight", self.linear2.weight, c * ff),
            ("linear2.bias", self.linear2.bias, c),
            ("norm1.weight", self.norm1.gamma, c),
            ("norm1.bias", self.norm1.beta, c),
            ("norm2.weight", self.norm2.gamma, c),
            ("norm2.bias", self.norm2.beta, c),
            ("norm3.weight", self.norm3.gamma, c),
            ("norm3.bias", self.norm3.beta, c),
        ]
    }
}

/// The decoder's parameters packed into one device buffer: layer `j`'s field `f` at
/// `j * layer_stride + field[f]`, every field starting on 16 bytes (float4 loads), then
/// post_norm's gamma and beta.
pub struct DecoderWeights {
    packed: DeviceBuffer<f32>,
    dims: DecoderDims,
    layer_stride: usize,
    field: [usize; FIELDS],
    post_norm: usize,
}

impl DecoderWeights {
    /// Checks every tensor's length against `dims` (naming the layer and field) and uploads.
    pub fn upload(
        s: &std::sync::Arc<CudaStream>,
        dims: DecoderDims,
        layers: &[LayerRef<'_>],
        post_norm: NormRef<'_>,
    ) -> Result<DecoderWeights> {
        dims.validate()?;
        if layers.len() != dims.layers {
            return Err(Error::invalid(
                "decoder weights",
                format!("{} layers given, expected {}", layers.len(), dims.layers),
            ));
        }
        let mut field = [0; FIELDS];
        let mut at = 0;
        for (f, (_, _, len)) in field.iter_mut().zip(layers[0].fields(&dims)) {
            *f = at;
            at = (at + len).next_multiple_of(4);
        }
        let layer_stride = at;
        let mut packed = vec![0.0f32; layer_stride * dims.layers + 2 * dims.c];
        for (j, layer) in layers.iter().enumerate() {
            for (f, (name, data, len)) in layer.fields(&dims).into_iter().enumerate() {
                check_len(&format!("decoder layer {j}"), name, data.len(), len)?;
                let to = j * layer_stride + field[f];
                packed[to..to + len].copy_from_slice(data);
            }
        }
        let post = layer_stride * dims.layers;
        check_len("decoder", "post_norm.weight", post_norm.gamma.len(), dims.c)?;
        check_len("decoder", "post_norm.bias", post_norm.beta.len(), dims.c)?;
        packed[post..post + dims.c].copy_from_slice(post_norm.gamma);
        packed[post + dims.c..].copy_from_slice(post_norm.beta);
        Ok(DecoderWeights {
            packed: upload(s, &packed)?,
            dims,
            layer_stride,
            field,
            post_norm: post,
        })
    }

    pub fn dims(&self) -> DecoderDims {
        self.dims
    }
}

/// How one linear phase's product is cut into blocks: k chunks of `chunk` (the splits are
/// `ceil(k / chunk)`), `columns` output columns a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearSplit {
    pub chunk: usize,
    pub columns: usize,
}

impl LinearSplit {
    /// For an `(n outputs, k inputs)` product, about `target` blocks: k chunks while the
    /// output columns' blocks are fewer (each chunk at least 128 long, a float4 per lane; a
    /// multiple of 4 for float4 rows; within shared memory), then more columns a block while
    /// the blocks are more.
    fn new(n: usize, k: usize, target: usize) -> LinearSplit {
        let column_blocks = n.div_ceil(WARPS);
        let want = (target / column_blocks).clamp(1, (k / 128).max(1));
        let chunk = k.div_ceil(want);
        let chunk = if k.is_multiple_of(4) {
            chunk.next_multiple_of(4)
        } else {
            chunk
        };
        let chunk = chunk.min(SMEM_FLOATS);
        let rounds = (column_blocks * k.div_ceil(chunk)).div_ceil(target).max(1);
        LinearSplit {
            chunk,
            columns: WARPS * rounds,
        }
    }

    fn blocks(&self, n: usize, k: usize) -> usize {
        n.div_ceil(self.columns) * k.div_ceil(self.chunk)
    }

    fn parts(&self, k: usize) -> usize {
        k.div_ceil(self.chunk)
    }
}

/// How one batch size's launch splits its work: the linears (input c: the projections and
/// FFN1; input ff: FFN2) and the keys of one attention block, chosen so that each phase is
/// about one block per multiprocessor (the kernel's registers allow one) where its shape
/// allows: one wave of blocks per phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderPlan {
    pub batch: usize,
    pub proj: LinearSplit,
    pub ffn1: LinearSplit,
    pub ffn2: LinearSplit,
    pub keys_per_split: usize,
    /// Blocks of the launch (all phases of all layers, and the post_norm block).
    pub blocks: usize,
    /// Floats of each half of the workspace (one phase's results).
    work_half: usize,
}

impl DecoderPlan {
    pub fn new(dims: DecoderDims, batch: usize, multiprocessors: usize) -> Result<DecoderPlan> {
        dims.validate()?;
        if batch == 0 {
            return Err(Error::invalid("decoder", "batch 0"));
        }
        let target = multiprocessors.max(1);
        let (c, ff) = (dims.c, dims.ff);
        let (proj, ffn1, ffn2) = (
            LinearSplit::new(c, c, target),
            LinearSplit::new(ff, c, target),
            LinearSplit::new(c, ff, target),
        );
        let units = batch * dims.heads;
        let key_splits = (target / units).clamp(1, (dims.l_all / 64).max(1));
        let keys_per_split = dims.l_all.div_ceil(key_splits).min(MAX_KEYS_PER_SPLIT);
        let attention = units * dims.l_all.div_ceil(keys_per_split);
        let per_layer = 4 * proj.blocks(c, c) + attention + ffn1.blocks(ff, c) + ffn2.blocks(c, ff);
        let work_half = [
            proj.parts(c) * batch * c,
            ffn1.parts(c) * batch * ff,
            ffn2.parts(ff) * batch * c,
            attention * (dims.hd() + 2),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        Ok(DecoderPlan {
            batch,
            proj,
            ffn1,
            ffn2,
            keys_per_split,
            blocks: dims.layers * per_layer + 1,
            work_half,
        })
    }
}

/// What the blocks of one launch exchange, for one [`DecoderPlan`].
pub struct DecoderWorkspace {
    dims: DecoderDims,
    plan: DecoderPlan,
    /// Two halves of `work_half`: each phase's partial results.
    work: DeviceBuffer<f32>,
    /// `(2, batch, c)`: t1 and t2 of the current layer.
    residual: DeviceBuffer<f32>,
    /// The ticket and done counters; zero between launches (allocated zeroed, never
    /// poisoned).
    control: DeviceBuffer<u32>,
}

impl DecoderWorkspace {
    pub fn new(
        s: &std::sync::Arc<CudaStream>,
        dims: DecoderDims,
        plan: DecoderPlan,
    ) -> Result<DecoderWorkspace> {
        let f = |len: usize| {
            s.alloc_zeros::<f32>(len)
                .cuda(|| format!("allocating {len} decoder workspace floats"))
        };
        Ok(DecoderWorkspace {
            dims,
            plan,
            work: f(2 * plan.work_half)?,
            residual: f(2 * plan.batch * dims.c)?,
            control: s
                .alloc_zeros::<u32>(2)
                .cuda(|| "allocating the decoder's counters".to_string())?,
        })
    }

    pub fn plan(&self) -> DecoderPlan {
        self.plan
    }

    /// Fills the float buffers with NaN (the counters stay zero), so that anything the
    /// kernel reads before writing shows.
    pub fn poison(&mut self, s: &CudaStream) -> Result<()> {
        poison_nan(s, &mut self.work)?;
        poison_nan(s, &mut self.residual)
    }
}

/// The launch's inputs and outputs, for `batch` rows.
pub struct DecoderIo<'a> {
    /// Every layer's cross-attention k|v of the encoder output, `(l_all, batch, layers * 2c)`
    /// (layer `j`'s k at channel `j * 2c`, its v at `j * 2c + c`).
    pub mem_kv: CudaView<'a, f32>,
    /// `(batch, l_all)`, nonzero = padded (ignored as a key).
    pub key_pad: CudaView<'a, u8>,
    /// The query embedding per row, `(batch, c)`.
    pub qpos: CudaView<'a, f32>,
    /// Each layer's output `t`, `(layers, batch, c)`.
    pub layers_out: CudaViewMut<'a, f32>,
    /// `post_norm` of the last layer's output, `(batch, c)`.
    pub hs: CudaViewMut<'a, f32>,
}

/// `decoder_<precision>`, loaded once.
#[derive(Debug, Clone)]
pub struct DecoderKernels {
    precision: Precision,
    kernel: Kernel,
}

impl DecoderKernels {
    /// The kernel whose products round their operands as `precision`'s tensor cores do.
    pub fn load_precision(gpu: &Gpu, precision: Precision) -> Result<DecoderKernels> {
        let name = match precision {
            Precision::F32 => "decoder_f32",
            Precision::Tf32 => "decoder_tf32",
            Precision::Bf16 => "decoder_bf16",
        };
        Ok(DecoderKernels {
            precision,
            kernel: gpu.kernel(KernelModule::Decoder, name)?,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Queues the decoder on `stream`: `scale` multiplies the cross-attention query
    /// (`hd^-0.5`), `eps` is every LayerNorm's.
    pub fn run(
        &self,
        stream: &CudaStream,
        weights: &DecoderWeights,
        work: &mut DecoderWorkspace,
        mut io: DecoderIo<'_>,
        scale: f32,
        eps: f32,
    ) -> Result<()> {
        let name = self.kernel.name();
        let (d, plan) = (weights.dims, work.plan);
        if work.dims != d {
            return Err(Error::invalid(
                name,
                format!("a workspace for {:?} with weights for {d:?}", work.dims),
            ));
        }
        let b = plan.batch;
        check_len(name, "mem_kv", io.mem_kv.len(), d.l_all * b * d.kv_row())?;
        check_len(name, "key_pad", io.key_pad.len(), b * d.l_all)?;
        check_len(name, "qpos", io.qpos.len(), b * d.c)?;
        check_len(name, "layers_out", io.layers_out.len(), d.layers * b * d.c)?;
        check_len(name, "hs", io.hs.len(), b * d.c)?;
        check_len(name, "residual", work.residual.len(), 2 * b * d.c)?;
        let int = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| Error::invalid(name, format!("{what} = {v} over i32")))
        };
        let args = DecoderArgs {
            weights: ptr(&weights.packed, stream),
            mem_kv: ptr(&io.mem_kv, stream),
            key_pad: ptr(&io.key_pad, stream),
            qpos: ptr(&io.qpos, stream),
            layers_out: ptr_mut(&mut io.layers_out, stream),
            hs: ptr_mut(&mut io.hs, stream),
            residual: ptr_mut(&mut work.residual, stream),
            work: ptr_mut(&mut work.work, stream),
            control: ptr_mut(&mut work.control, stream),
            layer_stride: weights.layer_stride as i64,
            post_norm: weights.post_norm as i64,
            work_half: plan.work_half as i64,
            field: weights.field.map(|f| f as i64),
            batch: int("batch", b)?,
            c: int("c", d.c)?,
            ff: int("ff", d.ff)?,
            heads: int("heads", d.heads)?,
            layers: int("layers", d.layers)?,
            l_all: int("memory tokens", d.l_all)?,
            proj_chunk: int("proj chunk", plan.proj.chunk)?,
            ffn1_chunk: int("ffn1 chunk", plan.ffn1.chunk)?,
            ffn2_chunk: int("ffn2 chunk", plan.ffn2.chunk)?,
            keys_per_split: int("keys per split", plan.keys_per_split)?,
            proj_columns: int("proj columns", plan.proj.columns)?,
            ffn1_columns: int("ffn1 columns", plan.ffn1.columns)?,
            ffn2_columns: int("ffn2 columns", plan.ffn2.columns)?,
            scale,
            eps,
        };
        let cfg = LaunchConfig {
            grid_dim: (int("blocks", plan.blocks)? as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `args` mirrors the kernel's struct; every buffer was checked against what
        // the plan's blocks read and write (the workspace was sized by the same plan).
        unsafe { self.kernel.on(stream).arg(&args).go(cfg) }
    }
}
