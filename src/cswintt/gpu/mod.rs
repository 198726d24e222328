//! The GPU engine: the CSWinTT transformer with our own kernels (`kernels/linear.cu`,
//! `layer_norm.cu`, `window_attention.cu`). In f32 everything runs on CUDA cores; in tf32
//! or bf16 ([`GpuEngine::with_precision`]) the linear layers' GEMMs and attention's two
//! products (QK^T, P'V) run on tensor cores with f32 accumulation, while the softmax and
//! LayerNorm stay f32.
//!
//! Parameters and per-head tables (gathered bias `B_w`, `sr`, partition index maps) are
//! uploaded once by [`GpuEngine::new`]; activations are allocated once per batch size and
//! reused. An encoder layer is: the QKV projection writing each head's q, k, v in its window
//! layout; one attention launch per head with the window reverse and concat fused into its
//! output write, dispatched `sequential`, `streams` or `fused` (see [`dispatch`]), each head's
//! keys split over as many blocks as fill the GPU together (`KeySplit::for_heads`); the output
//! projection with bias + residual, LayerNorm; FFN1 with bias + ReLU; FFN2 with bias +
//! residual, LayerNorm. The decoder computes every layer's cross-attention k|v of the
//! encoder output in one GEMM, then per layer: self attention (with one query and one key,
//! exactly `out_proj(v)`), cross attention (the same attention kernel with `w = 1`), FFN,
//! each followed by LayerNorm.
//!
//! With [`GpuEngine::set_graph`] on, [`GpuEngine::run`] captures the whole forward pass into
//! a CUDA graph the first time it runs a batch size and replays it afterwards: the graph
//! reads the inputs from the persistent activation buffers [`GpuEngine::load_inputs`] fills
//! and writes the outputs where [`GpuEngine::outputs`] reads them. A new batch size
//! reallocates the activations, which drops the graph (its addresses would be stale).

mod activations;
mod dispatch;
mod heads;
mod params;
pub mod trace;

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView};

use self::activations::Activations;
use self::dispatch::{Dispatch, Recorder};
use self::heads::{HeadIo, HeadWork};
use self::params::{DeviceLayerNorm, DeviceLinear, DeviceParams};
use super::backend::Backend;
use super::plan::Plan;
use super::{CPU_F32_TOLERANCE, Inputs, Intermediates, Mode, Outputs, Precision};
use crate::base::tensor::Tensor;
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::{DeviceBuffer, EventTimer, Gpu, Graph, Span, download, upload};
use crate::kernels::layer_norm::{Extra, LayerNormKernels, NormInput, PlusOutput};
use crate::kernels::linear::{self, Epilogue, LinearKernels, RowNorm, split_k};
use crate::kernels::window_attention::{
    AttentionOperands, AttentionShape, KeySplit, SlotLayout, WindowAttentionKernels,
};
use crate::model::weights::{LN_EPS, Weights};

/// Relative error the GPU engine is held to (f32 throughout, as the CPU reference).
pub const GPU_F32_TOLERANCE: f64 = CPU_F32_TOLERANCE;

/// Which part of the transformer [`GpuEngine::enqueue`] queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The encoder layers only (`search_feat`).
    Encoder,
    /// Encoder and decoder (`search_feat` and `hs`).
    Transformer,
}

/// The kernels the engine launches, loaded once.
struct Kernels {
    linear: LinearKernels,
    layer_norm: LayerNormKernels,
    attention: WindowAttentionKernels,
}

pub struct GpuEngine {
    gpu: Arc<Gpu>,
    weights: Arc<Weights>,
    params: DeviceParams,
    heads: Vec<HeadWork>,
    /// Every head's token -> slot map, `(H, L_all)`: where the QKV projection writes.
    token_slot: DeviceBuffer<u32>,
    /// `hd^-0.5`.
    q_scale: f32,
    kernels: Kernels,
    dispatch: Dispatch,
    act: Option<Activations>,
    poison: bool,
    /// Run through a CUDA graph (see the module doc).
    use_graph: bool,
    /// The captured forward pass for the current activations, once captured.
    graph: Option<Graph>,
}

impl GpuEngine {
    /// Uploads the weights and per-head tables to `gpu` and loads the kernels (f32).
    pub fn new(gpu: Arc<Gpu>, weights: Arc<Weights>, mode: Mode) -> Result<GpuEngine> {
        Self::with_precision(gpu, weights, mode, Precision::F32)
    }

    /// As [`GpuEngine::new`], with the linear layers computing in `precision`.
    pub fn with_precision(
        gpu: Arc<Gpu>,
        weights: Arc<Weights>,
        mode: Mode,
        precision: Precision,
    ) -> Result<GpuEngine> {
        let plan = Plan::new(&weights.config)?;
        let s = gpu.stream();
        let kernels = Kernels {
            linear: LinearKernels::load_precision(&gpu, precision)?,
            layer_norm: LayerNormKernels::load(&gpu)?,
            attention: WindowAttentionKernels::load_precision(&gpu, precision)?,
        };
        let heads = plan
            .heads
            .iter()
            .map(|h| HeadWork::new(s, h, &weights))
            .collect::<Result<Vec<_>>>()?;
        let token_slot: Vec<u32> = plan.heads.iter().flat_map(|h| h.reverse_index()).collect();
        let hd = weights.config.hd();
        let head_widths: Vec<usize> = plan.heads.iter().map(|h| h.hd).collect();
        Ok(GpuEngine {
            params: DeviceParams::upload(s, &weights)?,
            token_slot: upload(s, &token_slot)?,
            q_scale: (hd as f64).powf(-0.5) as f32,
            dispatch: Dispatch::new(&gpu, mode, &head_widths)?,
            heads,
            kernels,
            gpu,
            weights,
            act: None,
            poison: false,
            use_graph: false,
            graph: None,
        })
    }

    pub fn mode(&self) -> Mode {
        self.dispatch.mode()
    }

    /// The precision of the matrix products (linear layers and attention's QK^T and P'V;
    /// the softmax and LayerNorm are always f32).
    pub fn precision(&self) -> Precision {
        self.kernels.linear.precision()
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// When on, every activation buffer is filled with NaN before each run's inputs are
    /// uploaded, so that an element a run fails to write shows up in its outputs (tests).
    pub fn set_poison(&mut self, on: bool) {
        self.poison = on;
    }

    /// When on, [`GpuEngine::run`] without intermediates replays a CUDA graph of the whole
    /// forward pass, captured on first use for each batch size.
    pub fn set_graph(&mut self, on: bool) {
        self.use_graph = on;
        if !on {
            self.graph = None;
        }
    }

    pub fn graph(&self) -> bool {
        self.use_graph
    }

    /// Runs the transformer on `inputs`; with `intermediates`, also every tensor the golden
    /// files name (each encoder and decoder layer; layer 0's heads and their concat). The
    /// intermediates are read between layers, so such a run is always eager.
    pub fn run(&mut self, inputs: &Inputs, intermediates: bool) -> Result<Outputs> {
        self.load_inputs(inputs)?;
        if !intermediates {
            if self.use_graph {
                self.replay()?;
            } else {
                self.enqueue(Part::Transformer, None)?;
            }
            return self.outputs(None);
        }
        let mut im = Intermediates::default();
        self.with_activations(|e, act| {
            let mut rec = Recorder::new(None);
            for i in 0..e.params.encoder.len() {
                e.encoder_layer(i, act, &mut rec, (i == 0).then_some(&mut im))?;
                im.encoder
                    .push(e.fetch(&act.x, vec![e.cfg_l_all(), act.batch, e.c()])?);
            }
            e.decoder(act, &mut rec, Some(&mut im))
        })?;
        self.outputs(Some(im))
    }

    /// Queues one replay of the forward pass's graph, capturing it first when there is none
    /// for the current activations.
    fn replay(&mut self) -> Result<()> {
        if self.graph.is_none() {
            let stream = self.gpu.stream().clone();
            let graph = Graph::capture(&stream, || self.enqueue(Part::Transformer, None))?;
            self.graph = Some(graph);
        }
        match &self.graph {
            Some(g) => g.replay(),
            None => Err(Error::invalid("GPU engine", "no graph captured")),
        }
    }

    /// Times one eager forward pass of the inputs loaded last: one span per stage (per head
    /// in the attention, or per fused launch) on the lane of its stream, from CUDA events.
    pub fn trace(&mut self, inputs: &Inputs) -> Result<Vec<Span>> {
        self.load_inputs(inputs)?;
        let mut timer = EventTimer::start(self.gpu.stream())?;
        self.enqueue(Part::Transformer, Some(&mut timer))?;
        self.gpu.sync()?;
        timer.spans()
    }

    /// Uploads `inputs` (merged tokens, masks, query) into the activations for its batch,
    /// allocating them when the batch size changed.
    pub fn load_inputs(&mut self, inputs: &Inputs) -> Result<()> {
        let cfg = &self.weights.config;
        inputs.validate(cfg)?;
        let query = inputs.query(&self.weights)?.data.clone();
        let mask = inputs.merged_mask(cfg);
        self.load_masks(inputs.batch, &mask, &query)?;
        let s = self.gpu.stream().clone();
        let act = self.act.as_mut().ok_or_else(no_activations)?;
        s.memcpy_htod(&inputs.merged_tokens(), &mut act.x)
            .cuda(|| "uploading inputs".to_string())
    }

    /// Device-resident inputs, part one: allocates the activations for `batch` (when the
    /// batch size changed) and uploads the merged padding mask `(batch, L_all)` (1 =
    /// padded) and the object query (`c` values). The tokens are written on the device
    /// through [`GpuEngine::tokens_mut`]. A captured graph reads both, so the masks may
    /// change between replays.
    pub fn load_masks(&mut self, batch: usize, mask: &[u8], query: &[f32]) -> Result<()> {
        let cfg = &self.weights.config;
        let b = batch;
        if mask.len() != b * cfg.l_all() || query.len() != cfg.d_model {
            return Err(Error::invalid(
                "GPU engine inputs",
                format!(
                    "a mask of {} values and a query of {} for batch {b}; expected {} and {}",
                    mask.len(),
                    query.len(),
                    b * cfg.l_all(),
                    cfg.d_model
                ),
            ));
        }
        let s = self.gpu.stream().clone();
        if self.act.as_ref().is_none_or(|a| a.batch != b) {
            self.graph = None; // it holds the old buffers' addresses
            self.act = None; // free the old size first
            // One layer's heads run together in every mode; the cross attention alone.
            let sms = self.gpu.multiprocessors()?;
            let shapes: Vec<_> = self
                .heads
                .iter()
                .map(|h| h.plan.attention_shape(b))
                .collect();
            let splits = KeySplit::for_heads(&shapes, sms);
            let heads: Vec<_> = shapes.into_iter().zip(splits).collect();
            let cross = cross_attention_shape(cfg, b);
            let cross = (cross, KeySplit::for_heads(&[cross], sms)[0]);
            self.act = Some(Activations::new(&s, cfg, b, &heads, cross)?);
        }
        let key_pad: Vec<u8> = self
            .heads
            .iter()
            .flat_map(|h| h.plan.column_padding(&h.plan.window_padding(mask, b), b))
            .collect();
        let qpos: Vec<f32> = (0..b).flat_map(|_| query.iter().copied()).collect();
        let poison = self.poison;
        let act = self.act.as_mut().ok_or_else(no_activations)?;
        if poison {
            act.poison(&s)?;
        }
        let what = || "uploading the masks".to_string();
        s.memcpy_htod(mask, &mut act.mask).cuda(what)?;
        s.memcpy_htod(&key_pad, &mut act.key_pad).cuda(what)?;
        s.memcpy_htod(&qpos, &mut act.qpos).cuda(what)
    }

    /// Device-resident inputs, part two: the merged tokens `(L_all, batch, c)` (templates 1
    /// and 2, then the search region), for the caller to write on the engine's stream. A run
    /// overwrites them (the encoder works in place).
    pub fn tokens_mut(&mut self) -> Result<&mut DeviceBuffer<f32>> {
        Ok(&mut self.act.as_mut().ok_or_else(no_activations)?.x)
    }

    /// The outputs on the device after a run: the encoder output at the search tokens
    /// `(search_tokens, batch, c)` and `hs` `(batch, c)`.
    pub fn device_outputs(&self) -> Result<(CudaView<'_, f32>, CudaView<'_, f32>)> {
        let cfg = &self.weights.config;
        let act = self.act.as_ref().ok_or_else(no_activations)?;
        let (b, c) = (act.batch, cfg.d_model);
        Ok((act.x.slice(cfg.search_offset() * b * c..), act.hs.as_view()))
    }

    /// Queues `part` on the main stream for the inputs loaded last, recording a span per
    /// stage (per head in the attention) on `timer` when given.
    pub fn enqueue(&mut self, part: Part, timer: Option<&mut EventTimer>) -> Result<()> {
        self.with_activations(|e, act| {
            let mut rec = Recorder::new(timer);
            for i in 0..e.params.encoder.len() {
                e.encoder_layer(i, act, &mut rec, None)?;
            }
            match part {
                Part::Encoder => Ok(()),
                Part::Transformer => e.decoder(act, &mut rec, None),
            }
        })
    }

    /// Waits for the queued work and reads `search_feat` and `hs`.
    pub fn outputs(&mut self, intermediates: Option<Intermediates>) -> Result<Outputs> {
        let cfg = &self.weights.config;
        let act = self.act.as_ref().ok_or_else(|| {
            Error::invalid(
                "GPU engine",
                "outputs asked for before any inputs were loaded",
            )
        })?;
        let (b, c) = (act.batch, cfg.d_model);
        let s = self.gpu.stream();
        let search = act.x.slice(cfg.search_offset() * b * c..);
        Ok(Outputs {
            search_feat: Tensor {
                shape: vec![cfg.search_tokens(), b, c],
                data: download(s, &search)?,
            },
            hs: self.fetch(&act.hs, vec![1, b, c])?,
            intermediates,
        })
    }

    fn c(&self) -> usize {
        self.weights.config.d_model
    }

    fn cfg_l_all(&self) -> usize {
        self.weights.config.l_all()
    }

    /// Downloads `buf` as a tensor of `shape` (waits for the main stream).
    fn fetch(&self, buf: &DeviceBuffer<f32>, shape: Vec<usize>) -> Result<Tensor> {
        Ok(Tensor {
            shape,
            data: download(self.gpu.stream(), buf)?,
        })
    }

    /// Lends the activations out of `self` for `f` (they are put back even on error).
    fn with_activations<T>(
        &mut self,
        f: impl FnOnce(&Self, &mut Activations) -> Result<T>,
    ) -> Result<T> {
        let mut act = self.act.take().ok_or_else(|| {
            Error::invalid("GPU engine", "run asked for before any inputs were loaded")
        })?;
        let out = f(self, &mut act);
        self.act = Some(act);
        out
    }

    /// `y = LN(x W^T + bias + residual)` over `rows` rows: the linear split over k into
    /// `partial` (its outputs are only c wide: split-k gives the GEMM enough blocks), then
    /// the partial sums, bias, residual and LayerNorm: for the decoder's few rows by the
    /// GEMM's last block (`Epilogue::SplitKNorm`, no launch of its own), for the encoder's
    /// by one row kernel (a block's tail would normalise 64 rows 8 to a warp).
    #[allow(clippy::too_many_arguments)]
    fn linear_add_norm(
        &self,
        s: &CudaStream,
        x: &DeviceBuffer<f32>,
        lin: &DeviceLinear,
        rows: usize,
        residual: &DeviceBuffer<f32>,
        ln: &DeviceLayerNorm,
        (partial, arrived): (&mut DeviceBuffer<f32>, &mut DeviceBuffer<u32>),
        y: &mut DeviceBuffer<f32>,
        plus: Option<PlusOutput<'_>>,
    ) -> Result<()> {
        let (n, m, k) = lin.shape(rows);
        let splits = split_k(n, m, k);
        let len = splits * n * m;
        let product = |partial: &mut DeviceBuffer<f32>, epilogue| {
            let out = &mut partial.slice_mut(..len);
            let (w, b) = (&lin.weight, &lin.bias);
            self.kernels
                .linear
                .run(s, x, w, b, (n, m, k), out, epilogue)
        };
        if rows <= linear::ROWS {
            let norm = Box::new(RowNorm {
                residual: residual.as_view(),
                gamma: ln.gamma.as_view(),
                beta: ln.beta.as_view(),
                eps: LN_EPS as f32,
                y: y.as_view_mut(),
                plus,
                arrived: arrived.as_view_mut(),
            });
            return product(partial, Epilogue::SplitKNorm { splits, norm });
        }
        product(partial, Epilogue::SplitK { splits })?;
        let input = NormInput {
            parts: partial.slice(..len),
            n_parts: splits,
            bias: Some(lin.bias.as_view()),
            residual: Some(residual.as_view()),
        };
        self.layer_norm(s, input, ln, y, plus)
    }

    /// `y = LN(x + W2 relu(W1 x + b1) + b2)` over `rows` rows: the feed-forward block with
    /// its residual and LayerNorm.
    #[allow(clippy::too_many_arguments)]
    fn feed_forward(
        &self,
        s: &CudaStream,
        x: &DeviceBuffer<f32>,
        (ff1, ff2): (&DeviceLinear, &DeviceLinear),
        rows: usize,
        ln: &DeviceLayerNorm,
        hidden: &mut DeviceBuffer<f32>,
        partial: (&mut DeviceBuffer<f32>, &mut DeviceBuffer<u32>),
        y: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let relu = Epilogue::BiasRelu;
        let shape = ff1.shape(rows);
        self.kernels
            .linear
            .run(s, x, &ff1.weight, &ff1.bias, shape, hidden, relu)?;
        self.linear_add_norm(s, hidden, ff2, rows, x, ln, partial, y, None)
    }

    fn layer_norm(
        &self,
        s: &CudaStream,
        input: NormInput<'_>,
        ln: &DeviceLayerNorm,
        y: &mut DeviceBuffer<f32>,
        plus: Option<PlusOutput<'_>>,
    ) -> Result<()> {
        let eps = LN_EPS as f32;
        let extra = plus.map_or(Extra::Nothing, Extra::Plus);
        self.kernels
            .layer_norm
            .forward(s, input, &ln.gamma, &ln.beta, eps, y, extra)
    }

    /// Encoder layer `i` on `act.x` (spec, encoder steps 1-8); `capture` receives layer 0's
    /// per-head outputs and their concat.
    fn encoder_layer(
        &self,
        i: usize,
        act: &mut Activations,
        rec: &mut Recorder<'_>,
        capture: Option<&mut Intermediates>,
    ) -> Result<()> {
        let cfg = &self.weights.config;
        let s = self.gpu.stream();
        let (b, c, h, hd) = (act.batch, cfg.d_model, cfg.nhead, cfg.hd());
        let n = cfg.l_all() * b;
        let p = &self.params.encoder[i];
        let lin = &self.kernels.linear;
        let name = format!("encoder {i}");

        rec.stage(&format!("{name}/qkv"), 0, s, || {
            let epilogue = Epilogue::QkvWindows {
                token_slot: &self.token_slot,
                batch: b,
                heads: h,
                scale: self.q_scale,
            };
            lin.run(
                s,
                &act.x,
                &p.qkv.weight,
                &p.qkv.bias,
                p.qkv.shape(n),
                &mut act.qkv,
                epilogue,
            )
        })?;

        let per_head = n * hd;
        let want_heads = capture.is_some();
        let (qkv, key_pad, concat, head_out, splits) = (
            &act.qkv,
            &act.key_pad,
            &mut act.concat,
            &mut act.head_out,
            &mut act.head_splits,
        );
        let attention = &self.kernels.attention;
        self.dispatch.heads(
            s,
            h,
            &format!("{name}/attention"),
            rec,
            attention,
            |j, stream| {
                let part = |which: usize| {
                    let at = (which * h + j) * per_head;
                    qkv.slice(at..at + per_head)
                };
                let io = HeadIo {
                    q: part(0),
                    k: part(1),
                    v: part(2),
                    key_pad: key_pad.slice(j * n..(j + 1) * n),
                    concat: concat.as_view_mut(),
                    head_out: want_heads.then(|| head_out[j].as_view_mut()),
                    split: splits[j].key_split(),
                    batch: b,
                    c,
                };
                self.heads[j].prepare(attention, stream, io)
            },
        )?;
        if let Some(im) = capture {
            for (head, buf) in self.heads.iter().zip(&act.head_out) {
                let shape = vec![b, head.plan.l, head.plan.window_dim()];
                im.encoder0_heads.push(self.fetch(buf, shape)?);
            }
            im.encoder0_heads_concat = Some(self.fetch(&act.concat, vec![cfg.l_all(), b, c])?);
        }

        rec.stage(&format!("{name}/output + norm1"), 0, s, || {
            let (o, ln) = (&p.output, &p.norm1);
            let (x, x1) = (&act.x, &mut act.x1);
            let partial = (&mut act.partial, &mut act.norm_arrived);
            self.linear_add_norm(s, &act.concat, o, n, x, ln, partial, x1, None)
        })?;
        rec.stage(&format!("{name}/ffn + norm2"), 0, s, || {
            let hidden = &mut act.hidden;
            let partial = (&mut act.partial, &mut act.norm_arrived);
            let ffn = (&p.ff1, &p.ff2);
            self.feed_forward(s, &act.x1, ffn, n, &p.norm2, hidden, partial, &mut act.x)
        })
    }

    /// The decoder on the encoder output `act.x` (spec, "Decoder"), then `post_norm` into
    /// `act.hs`; `capture` receives each layer's `t`.
    fn decoder(
        &self,
        act: &mut Activations,
        rec: &mut Recorder<'_>,
        mut capture: Option<&mut Intermediates>,
    ) -> Result<()> {
        let cfg = &self.weights.config;
        let s = self.gpu.stream();
        let (b, c) = (act.batch, cfg.d_model);
        let n = cfg.l_all() * b;
        let lin = &self.kernels.linear;
        let plain = || Epilogue::Bias { scale: 1.0 };

        rec.stage("decoder/memory k|v", 0, s, || {
            let kv = &self.params.cross_kv;
            lin.run(
                s,
                &act.x,
                &kv.weight,
                &kv.bias,
                kv.shape(n),
                &mut act.mem_kv,
                plain(),
            )?;
            s.memset_zeros(&mut act.t)
                .cuda(|| "zeroing the decoder state".into())
        })?;
        let kv_row = self.params.cross_kv.out;
        for (j, p) in self.params.decoder.iter().enumerate() {
            let name = format!("decoder {j}");
            rec.stage(&format!("{name}/self attention + norm1"), 0, s, || {
                // One query and one key: softmax is exactly 1, the output is out_proj(v).
                let v = &p.self_v;
                lin.run(
                    s,
                    &act.t,
                    &v.weight,
                    &v.bias,
                    v.shape(b),
                    &mut act.proj,
                    plain(),
                )?;
                let (t, next) = (&act.t, &mut act.t_next);
                let partial = (&mut act.partial, &mut act.norm_arrived);
                let plus = (act.qpos.as_view(), act.tq.as_view_mut());
                self.linear_add_norm(
                    s,
                    &act.proj,
                    &p.self_out,
                    b,
                    t,
                    &p.norm1,
                    partial,
                    next,
                    Some(plus),
                )
            })?;
            std::mem::swap(&mut act.t, &mut act.t_next);
            rec.stage(&format!("{name}/cross attention + norm2"), 0, s, || {
                let q = &p.cross_q;
                let scaled = Epilogue::Bias {
                    scale: self.q_scale,
                };
                lin.run(
                    s,
                    &act.tq,
                    &q.weight,
                    &q.bias,
                    q.shape(b),
                    &mut act.proj,
                    scaled,
                )?;
                let shape = cross_attention_shape(cfg, b);
                let at = j * 2 * c;
                let ops = AttentionOperands {
                    q: act.proj.as_view(),
                    q_layout: SlotLayout { batch: c, slot: 0 },
                    k: act.mem_kv.slice(at..),
                    v: act.mem_kv.slice(at + c..),
                    kv_layout: SlotLayout {
                        batch: kv_row,
                        slot: b * kv_row,
                    },
                    bias: None,
                    key_pad: act.mask.as_view(),
                    sr: None,
                    slot_token: None,
                    out: act.attn.as_view_mut(),
                    out_row: c,
                    out_channel: 0,
                    head_out: None,
                    split: act.cross_split.key_split(),
                };
                self.kernels.attention.run(s, &shape, ops)?;
                let (t, next) = (&act.t, &mut act.t_next);
                let partial = (&mut act.partial, &mut act.norm_arrived);
                self.linear_add_norm(
                    s,
                    &act.attn,
                    &p.cross_out,
                    b,
                    t,
                    &p.norm2,
                    partial,
                    next,
                    None,
                )
            })?;
            std::mem::swap(&mut act.t, &mut act.t_next);
            rec.stage(&format!("{name}/ffn + norm3"), 0, s, || {
                let hidden = &mut act.dhidden;
                let partial = (&mut act.partial, &mut act.norm_arrived);
                let ffn = (&p.linear1, &p.linear2);
                self.feed_forward(
                    s,
                    &act.t,
                    ffn,
                    b,
                    &p.norm3,
                    hidden,
                    partial,
                    &mut act.t_next,
                )
            })?;
            std::mem::swap(&mut act.t, &mut act.t_next);
            if let Some(im) = capture.as_deref_mut() {
                im.decoder.push(self.fetch(&act.t, vec![1, b, c])?);
            }
        }
        rec.stage("decoder/post norm", 0, s, || {
            let input = NormInput::of(act.t.as_view());
            self.layer_norm(s, input, &self.params.post_norm, &mut act.hs, None)
        })
    }
}

/// The decoder's cross attention over `batch` items: the one query against every token of
/// the encoder output, all heads in one launch (`w = 1`, heads `hd` channels apart).
fn cross_attention_shape(cfg: &crate::model::config::Config, batch: usize) -> AttentionShape {
    AttentionShape {
        w: 1,
        hd: cfg.hd(),
        n_queries: 1,
        n_keys: cfg.l_all(),
        batch,
        heads: cfg.nhead,
        head_stride: cfg.hd(),
    }
}

impl Backend for GpuEngine {
    fn describe(&self) -> String {
        format!(
            "GPU engine on {} ({}, heads {}{})",
            self.gpu.describe(),
            match GpuEngine::precision(self) {
                Precision::F32 => "f32 CUDA cores".to_string(),
                p => format!("{p} tensor-core linear layers and attention"),
            },
            self.mode(),
            if self.use_graph { ", CUDA graph" } else { "" }
        )
    }

    fn device(&self) -> String {
        format!("cuda:{}", self.gpu.ordinal())
    }

    fn precision(&self) -> Precision {
        GpuEngine::precision(self)
    }

    fn tolerance(&self) -> f64 {
        match GpuEngine::precision(self) {
            Precision::F32 => GPU_F32_TOLERANCE,
            p => p.tolerance(),
        }
    }

    fn run(&mut self, inputs: &Inputs, intermediates: bool) -> Result<Outputs> {
        GpuEngine::run(self, inputs, intermediates)
    }

    fn trace(&mut self, inputs: &Inputs) -> Result<Vec<Span>> {
        GpuEngine::trace(self, inputs)
    }
}

fn no_activations() -> Error {
    Error::invalid("GPU engine", "no inputs were loaded (no activations)")
}
