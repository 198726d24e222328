//! The tracker's network on one GPU: the frame uploaded once as `uint8`, one crop kernel
//! (crop, zero padding, OpenCV's resize, normalisation), ResNet-50 to `layer3` and the
//! bottleneck on cuDNN (NHWC, batch norms folded into the biases at load, bias + ReLU and
//! bias + residual + ReLU fused into the convolutions), the transformer through its GPU
//! engine fed on the device, the corner head (features weighted by `hs`, cuDNN
//! convolutions, soft-argmax) and the score head (the linear op's few-rows kernels).
//!
//! Precisions: `f32` (f32 storage, cuDNN's FMA math, the engine's CUDA-core f32: the f32
//! golden tolerances), `tf32` (f32 storage, tensor cores with f32 accumulation everywhere),
//! `bf16` (the convolutions store bf16 activations and weights; the transformer and the
//! score head keep f32 storage with bf16 products). Soft-argmax sums in f64 in every one.
//!
//! Everything a step needs is allocated once. The templates' tokens live in one f32 buffer
//! (template 1, then template 2) copied into the transformer's input by one device copy in
//! every step: the encoder works in place on its input, overwriting the template rows
//! too, so they cannot live there between steps. The corner head's two branches run in
//! the faster of two forms, measured on the first step ([`CornerForm`]).
//!
//! Initialising plans the search step (one eager search around the first box: cuDNN's
//! algorithm searches, the corner head's choice), so no tracked frame pays for it. With the
//! graph on, it then captures the whole search step (crop -> corners and logit) into one
//! CUDA graph, replayed every frame, and the template step into another, replayed at each
//! template update: the host writes only what the graphs read (the frame, the crop window,
//! the masks when they change, the templates when updated) and reads back four corners and
//! the logit. Frames go up and results come back through page-locked memory ([`host`]), the
//! next frame copied while the current step runs when the caller names it
//! ([`Network::search_ahead`]); the step waits only for its results. `--ops` times every
//! operation of a step on its own ([`profile`]).
//!
//! The transformer does not read positional encodings, so none are computed here; the
//! golden check takes them from the host's cache.

mod host;
mod profile;

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
use half::bf16;

use super::crop::{Crop, CropWindow, crop_window};
use super::frame::{BBox, Frame};
use super::track::{
    Activation, BackboneStages, CropKind, Features, Network, OpTiming, Prediction, SearchDetail,
    StageTimes, corners_to_box, stage_times,
};
use super::weights::{Conv, CornerBranch, FEATURE_STRIDE, TrackerConfig, TrackerWeights};
use crate::base::{Precision, Tensor};
use crate::cswintt::gpu::{GpuEngine, Part};
use crate::cswintt::{Backend, Mode};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::{DeviceBuffer, EventTimer, Gpu, Graph, Span, download, time_ms, upload};
use crate::kernels::cast::{CastKernels, Storage};
use crate::kernels::conv2d::{Conv2dKernels, Conv2dShape, Epilogue};
use crate::kernels::crop::cpu::sampled_mask;
use crate::kernels::crop::{CropExtras, CropKernels, DeviceWindow};
use crate::kernels::elementwise::ElementwiseKernels;
use crate::kernels::linear::{self, LinearKernels};
use crate::kernels::max_pool::MaxPoolKernels;
use crate::kernels::pool::Pool2d;
use crate::kernels::soft_argmax::SoftArgmaxKernels;
use crate::model::weights::Linear;
use host::HostTraffic;
use profile::{Profiler, op};

/// One convolution on the device: KRSC weights and the folded bias, in the storage type,
/// in `groups` groups (`conv`'s channels are all groups' together), and its name in
/// `--ops` tables.
struct DeviceConv<T> {
    name: String,
    weight: DeviceBuffer<T>,
    bias: DeviceBuffer<T>,
    conv: Conv,
    groups: usize,
}

impl<T: Storage> DeviceConv<T> {
    fn upload(stream: &Arc<CudaStream>, name: String, conv: &Conv) -> Result<DeviceConv<T>> {
        Self::upload_grouped(stream, name, conv, 1)
    }

    fn upload_grouped(
        stream: &Arc<CudaStream>,
        name: String,
        conv: &Conv,
        groups: usize,
    ) -> Result<DeviceConv<T>> {
        let shape = conv.shape(1, 1).with_groups(groups);
        let krsc = shape.weight_to_gpu(&conv.weight);
        let to = |v: &[f32]| v.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>();
        Ok(DeviceConv {
            name,
            weight: upload(stream, &to(&krsc))?,
            bias: upload(stream, &to(&conv.bias))?,
            conv: conv.clone(),
            groups,
        })
    }

    /// The GPU op's shape on a `(1, h, w, in)` input.
    fn shape(&self, h: usize, w: usize) -> Conv2dShape {
        self.conv.shape(h, w).with_groups(self.groups)
    }
}

/// How the corner head runs its two branches (same layer shapes): cuDNN's speed differs
/// between them by precision and card (an eager bf16 step on an H200 spent 1.77 ms in the
/// grouped head, an f32 one 0.29 ms), so the step measures both once and keeps the faster
/// ([`GpuNetwork::set_corner_form`] forces one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CornerForm {
    /// One convolution per layer over both branches' channels: the first layer's outputs
    /// concatenated, the later 3x3 layers in two groups, each 1x1 score layer over both
    /// branches' channels with the other branch's weights zero (the soft-argmax wants the
    /// two maps apart, not interleaved as one 2-channel output would be). Half the launches.
    Grouped,
    /// Each branch's own convolutions, top-left then bottom-right, each branch's activations
    /// in its own half of the ping-pong buffers.
    Split,
}

impl std::fmt::Display for CornerForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CornerForm::Grouped => "grouped",
            CornerForm::Split => "split",
        })
    }
}

/// The corner head in both forms ([`CornerForm`]), and the one the step runs.
struct CornerHead<T> {
    /// The grouped form's hidden layers, then its two score layers.
    grouped: Vec<DeviceConv<T>>,
    grouped_score: [DeviceConv<T>; 2],
    /// The split form: each branch's hidden layers, then its score layer.
    split: [Vec<DeviceConv<T>>; 2],
    /// The form forced, else measured on the first step.
    forced: Option<CornerForm>,
    form: Option<CornerForm>,
    /// Milliseconds per run of the grouped and the split form, when measured.
    measured: Option<[f64; 2]>,
}

impl<T: Storage> CornerHead<T> {
    /// `tl` and `br` must have the same layer shapes (the checkpoint's do).
    fn upload(s: &Arc<CudaStream>, tl: &CornerBranch, br: &CornerBranch) -> Result<CornerHead<T>> {
        let same = |a: &Conv, b: &Conv| {
            (a.in_channels, a.out_channels, a.kernel, a.stride, a.pad)
                == (b.in_channels, b.out_channels, b.kernel, b.stride, b.pad)
        };
        if tl.convs.len() != br.convs.len()
            || !tl.convs.iter().zip(&br.convs).all(|(a, b)| same(a, b))
            || !same(&tl.score, &br.score)
            || tl.score.out_channels != 1
        {
            return Err(Error::invalid(
                "box_head",
                "the top-left and bottom-right branches must have the same layers, each \
                 ending in one score map",
            ));
        }
        let cat = |a: &[f32], b: &[f32]| [a, b].concat();
        let grouped = tl
            .convs
            .iter()
            .zip(&br.convs)
            .enumerate()
            .map(|(i, (a, b))| {
                // The first layer reads one input for both branches; the later ones each
                // branch's own half of the channels.
                let groups = if i == 0 { 1 } else { 2 };
                let both = Conv {
                    weight: cat(&a.weight, &b.weight),
                    bias: cat(&a.bias, &b.bias),
                    in_channels: a.in_channels * groups,
                    out_channels: 2 * a.out_channels,
                    ..a.clone()
                };
                DeviceConv::upload_grouped(s, format!("corner.{i}"), &both, groups)
            })
            .collect::<Result<Vec<_>>>()?;
        // Each score layer over both branches' channels, zero on the other branch's: the
        // same sums (the added terms are exact zeros) into a map of its own. Without hidden
        // layers both read the one input as they are.
        let zeros = vec![0.0; tl.score.weight.len()];
        let apart = grouped.is_empty();
        let score = |own: &Conv, first: bool| -> Result<DeviceConv<T>> {
            let name = format!("corner.score.{}", if first { "tl" } else { "br" });
            if apart {
                return DeviceConv::upload(s, name, own);
            }
            let weight = if first {
                cat(&own.weight, &zeros)
            } else {
                cat(&zeros, &own.weight)
            };
            let wide = Conv {
                weight,
                in_channels: 2 * own.in_channels,
                ..own.clone()
            };
            DeviceConv::upload(s, name, &wide)
        };
        let branch = |b: &CornerBranch, which: &str| -> Result<Vec<DeviceConv<T>>> {
            let mut convs = b
                .convs
                .iter()
                .enumerate()
                .map(|(i, c)| DeviceConv::upload(s, format!("corner.{i}.{which}"), c))
                .collect::<Result<Vec<_>>>()?;
            convs.push(DeviceConv::upload(
                s,
                format!("corner.score.{which}"),
                &b.score,
            )?);
            Ok(convs)
        };
        Ok(CornerHead {
            grouped,
            grouped_score: [score(&tl.score, true)?, score(&br.score, false)?],
            split: [branch(tl, "tl")?, branch(br, "br")?],
            forced: None,
            form: None,
            measured: None,
        })
    }
}

struct DeviceBlock<T> {
    conv1: DeviceConv<T>,
    conv2: DeviceConv<T>,
    conv3: DeviceConv<T>,
    downsample: Option<DeviceConv<T>>,
}

struct DeviceLinear {
    weight: DeviceBuffer<f32>,
    bias: DeviceBuffer<f32>,
    out_features: usize,
    in_features: usize,
}

/// Every parameter on the device, uploaded once.
struct Params<T> {
    stem: DeviceConv<T>,
    stages: Vec<Vec<DeviceBlock<T>>>,
    bottleneck: DeviceConv<T>,
    corners: CornerHead<T>,
    score_head: Vec<DeviceLinear>,
}

impl<T: Storage> Params<T> {
    fn upload(s: &Arc<CudaStream>, w: &TrackerWeights) -> Result<Params<T>> {
        let conv = |name: String, c: &Conv| DeviceConv::upload(s, name, c);
        let linear = |l: &Linear| -> Result<DeviceLinear> {
            Ok(DeviceLinear {
                weight: upload(s, &l.weight.data)?,
                bias: upload(s, &l.bias.data)?,
                out_features: l.out_features(),
                in_features: l.in_features(),
            })
        };
        Ok(Params {
            stem: conv("stem".into(), &w.backbone.stem)?,
            stages: w
                .backbone
                .stages
                .iter()
                .enumerate()
                .map(|(n, stage)| {
                    stage
                        .iter()
                        .enumerate()
                        .map(|(i, b)| {
                            let name = |part: &str| format!("layer{}.{i}.{part}", n + 1);
                            Ok(DeviceBlock {
                                conv1: conv(name("conv1"), &b.conv1)?,
                                conv2: conv(name("conv2"), &b.conv2)?,
                                conv3: conv(name("conv3"), &b.conv3)?,
                                downsample: b
                                    .downsample
                                    .as_ref()
                                    .map(|d| conv(name("downsample"), d))
                                    .transpose()?,
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .collect::<Result<Vec<_>>>()?,
            bottleneck: conv("bottleneck".into(), &w.bottleneck)?,
            corners: CornerHead::upload(s, &w.corner_tl, &w.corner_br)?,
            score_head: w.score_head.iter().map(linear).collect::<Result<_>>()?,
        })
    }
}

/// The kernels the network launches, loaded once.
struct Kernels {
    conv: Conv2dKernels,
    crop: CropKernels,
    cast: CastKernels,
    elementwise: ElementwiseKernels,
    max_pool: MaxPoolKernels,
    soft_argmax: SoftArgmaxKernels,
    linear: LinearKernels,
    /// On while `--ops` times a step's operations.
    profile: Option<Profiler>,
}

/// The device buffers of a step, allocated once.
struct Buffers<T> {
    /// The frame as uploaded, `height x width x 3` bytes, and its size.
    frame: DeviceBuffer<u8>,
    frame_size: (usize, usize),
    window: DeviceWindow,
    /// The crop's pixels and mask (written only when the crop is asked for).
    pixels: DeviceBuffer<u8>,
    mask: DeviceBuffer<u8>,
    /// Four activations of the largest size the backbone makes (the normalised crop too).
    act: [DeviceBuffer<T>; 4],
    /// The max pool's argmax (unused, the kernel writes it).
    pool_idx: DeviceBuffer<i32>,
    /// The bottleneck's output, `(side, side, c)`.
    feat: DeviceBuffer<T>,
    /// Templates 1 and 2, each `(template tokens, c)` f32, one after the other as the
    /// transformer takes them.
    templates: DeviceBuffer<f32>,
    /// The corner head's input and its two ping-pong activations (both branches' channels:
    /// interleaved per pixel in the grouped form, the bottom-right branch's from element
    /// `corner_half` in the split form).
    opt: DeviceBuffer<T>,
    corner: [DeviceBuffer<T>; 2],
    corner_half: usize,
    /// Both branches' score maps, `(2, search tokens)`.
    scores: DeviceBuffer<T>,
    /// `(x_tl, y_tl, x_br, y_br)` in crop pixels.
    corners: DeviceBuffer<f64>,
    /// The score head's hidden layers and its logit.
    hidden: [DeviceBuffer<f32>; 2],
    logit: DeviceBuffer<f32>,
}

/// Masks the transformer was given last: templates 1 and 2 and the search region.
#[derive(Default, Clone, PartialEq)]
struct Masks([Vec<u8>; 3]);

/// The tracker's network on a GPU, with storage `T` (see the module docs).
pub struct GpuNetwork<T: Storage> {
    gpu: Arc<Gpu>,
    weights: Arc<TrackerWeights>,
    precision: Precision,
    engine: GpuEngine,
    k: Kernels,
    params: Params<T>,
    buf: Buffers<T>,
    host: HostTraffic,
    /// The masks each slot holds now, and those the engine was given last.
    masks: Masks,
    loaded: Option<Masks>,
    query: Vec<f32>,
    use_graph: bool,
    /// Whether one eager step ran since the buffers last changed (a capture needs it).
    warm: bool,
    graph: Option<Graph>,
    /// The template step (crop -> features into template 2), captured at initialisation.
    template_graph: Option<Graph>,
    timing: bool,
    stages: Option<StageTimes>,
}

/// A GPU network of the precision asked for, as a [`Network`].
pub fn gpu_network(
    gpu: Arc<Gpu>,
    weights: Arc<TrackerWeights>,
    mode: Mode,
    precision: Precision,
    graph: bool,
) -> Result<Box<dyn Network>> {
    Ok(match precision {
        Precision::Bf16 => Box::new(GpuNetwork::<bf16>::new(
            gpu, weights, mode, precision, graph,
        )?),
        _ => Box::new(GpuNetwork::<f32>::new(
            gpu, weights, mode, precision, graph,
        )?),
    })
}

impl<T: Storage> GpuNetwork<T> {
    /// Uploads `weights` to `gpu` and allocates every buffer; `precision` must match `T`
    /// (bf16 storage for bf16, f32 otherwise).
    pub fn new(
        gpu: Arc<Gpu>,
        weights: Arc<TrackerWeights>,
        mode: Mode,
        precision: Precision,
        graph: bool,
    ) -> Result<GpuNetwork<T>> {
        if (precision == Precision::Bf16) != (T::NAME == "bf16") {
            return Err(Error::invalid(
                "--precision",
                format!("{precision} does not run on {} storage", T::NAME),
            ));
        }
        let s = gpu.stream().clone();
        let cfg = &weights.config;
        let tcfg = &weights.transformer.config;
        let c = weights.d_model();
        let query = weights
            .transformer
            .query_embed
            .as_ref()
            .ok_or_else(|| Error::invalid("tracker", "the model has no 'query_embed.weight'"))?
            .data
            .clone();
        let largest = largest_activation(&weights, cfg.search_crop.max(cfg.template_crop));
        let zeros = |n: usize| -> Result<DeviceBuffer<T>> {
            s.alloc_zeros::<T>(n.max(1))
                .cuda(|| format!("allocating {n} tracker activations"))
        };
        let f = |n: usize| -> Result<DeviceBuffer<f32>> {
            s.alloc_zeros::<f32>(n.max(1))
                .cuda(|| format!("allocating {n} tracker activations"))
        };
        let bytes = |n: usize| -> Result<DeviceBuffer<u8>> {
            s.alloc_zeros::<u8>(n.max(1))
                .cuda(|| format!("allocating {n} bytes"))
        };
        let search_tokens = tcfg.search_tokens();
        let pixels = cfg.search_crop.max(cfg.template_crop).pow(2);
        let widest = weights
            .corner_tl
            .convs
            .iter()
            .map(|cv| cv.out_channels)
            .max()
            .unwrap_or(1)
            .max(c)
            * 2;
        // Each branch's half starts on a 16-byte boundary (8 elements), as cuDNN wants.
        let corner_half = (search_tokens * widest / 2).next_multiple_of(8);
        let buf = Buffers {
            frame: bytes(3)?,
            frame_size: (1, 1),
            window: DeviceWindow::new(&s)?,
            pixels: bytes(pixels * 3)?,
            mask: bytes(pixels)?,
            act: [
                zeros(largest)?,
                zeros(largest)?,
                zeros(largest)?,
                zeros(largest)?,
            ],
            pool_idx: s
                .alloc_zeros::<i32>(largest)
                .cuda(|| "allocating the max pool's indices".into())?,
            feat: zeros(search_tokens.max(tcfg.template_tokens()) * c)?,
            templates: f(2 * tcfg.template_tokens() * c)?,
            opt: zeros(search_tokens * c)?,
            corner: [zeros(2 * corner_half)?, zeros(2 * corner_half)?],
            corner_half,
            scores: zeros(2 * search_tokens)?,
            corners: s
                .alloc_zeros::<f64>(4)
                .cuda(|| "allocating the corners".into())?,
            hidden: [f(c)?, f(c)?],
            logit: f(1)?,
        };
        let k = Kernels {
            conv: Conv2dKernels::load(&gpu, precision)?,
            crop: CropKernels::load(&gpu)?,
            cast: CastKernels::load(&gpu)?,
            elementwise: ElementwiseKernels::load(&gpu)?,
            max_pool: MaxPoolKernels::load(&gpu)?,
            soft_argmax: SoftArgmaxKernels::load(&gpu)?,
            linear: LinearKernels::load_precision(&gpu, precision)?,
            profile: None,
        };
        let engine =
            GpuEngine::with_precision(gpu.clone(), weights.transformer.clone(), mode, precision)?;
        let params = Params::upload(&s, &weights)?;
        let host = HostTraffic::new(&s)?;
        let none = |n: usize| vec![0u8; n];
        let masks = Masks([
            none(tcfg.template_tokens()),
            none(tcfg.template_tokens()),
            none(search_tokens),
        ]);
        Ok(GpuNetwork {
            gpu,
            weights,
            precision,
            engine,
            k,
            params,
            buf,
            host,
            masks,
            loaded: None,
            query,
            use_graph: graph,
            warm: false,
            graph: None,
            template_graph: None,
            timing: false,
            stages: None,
        })
    }

    /// Sizes the device frame for `height x width` frames, reallocating it (and dropping
    /// the graphs, which hold its address) when the size changed.
    fn frame_buffer(&mut self, height: usize, width: usize) -> Result<()> {
        if self.buf.frame_size != (height, width) {
            self.graph = None;
            self.template_graph = None;
            self.warm = false;
            self.buf.frame = self
                .gpu
                .stream()
                .alloc_zeros::<u8>(height * width * 3)
                .cuda(|| format!("allocating a {width}x{height} frame"))?;
            self.buf.frame_size = (height, width);
        }
        Ok(())
    }

    /// Uploads a `height x width` RGB image as the frame.
    fn upload_frame(&mut self, data: &[u8], height: usize, width: usize) -> Result<()> {
        self.frame_buffer(height, width)?;
        self.host.put(data, &mut self.buf.frame)
    }

    /// Crops the uploaded frame at `win` into `act[0]` (normalised), and into the pixel and
    /// mask buffers with `extras`.
    fn crop_device(&mut self, side: usize, extras: bool) -> Result<()> {
        let s = self.gpu.stream().clone();
        let (h, w) = self.buf.frame_size;
        let n = side * side;
        let (k, b) = (&mut self.k, &mut self.buf);
        op(&mut k.profile, "crop", 0.0, || {
            let ex = if extras {
                CropExtras {
                    pixels: Some(b.pixels.slice_mut(..n * 3)),
                    mask: Some(b.mask.slice_mut(..n)),
                }
            } else {
                CropExtras::default()
            };
            k.crop.run(
                &s,
                &b.frame,
                (h, w),
                &b.window,
                side,
                &mut b.act[0].slice_mut(..n * 3),
                ex,
            )
        })
        .map(drop)
    }

    /// The backbone and bottleneck on the normalised crop in `act[0]` (`side x side`): the
    /// features in `buf.feat`; with `capture`, every stage's output downloaded; with
    /// `timer`, a span per stage (`backbone/stem`, `backbone/layerN`, `backbone/bottleneck`).
    fn backbone(
        &mut self,
        side: usize,
        capture: bool,
        mut timer: Option<&mut EventTimer>,
    ) -> Result<Option<BackboneStages>> {
        let s = self.gpu.stream().clone();
        let (p, b, k) = (&self.params, &mut self.buf, &mut self.k);
        let mut stages = None;
        // act[0]: the crop; the stem into act[1]; the pool into act[0].
        let (stem, pooled) = span(timer.as_deref_mut(), "backbone/stem", &s, || {
            let stem = {
                let [x, y] = pick(&mut b.act, [0, 1]);
                conv(
                    k,
                    &p.stem,
                    side,
                    side,
                    x.as_view(),
                    None,
                    true,
                    y.as_view_mut(),
                )?
            };
            if capture {
                stages = Some(BackboneStages {
                    stem: download_activation(&s, &b.act[1], stem)?,
                    layers: Vec::new(),
                });
            }
            let pool = Pool2d {
                batch: 1,
                channels: stem.2,
                height: stem.0,
                width: stem.1,
                kernel: 3,
                stride: 2,
                pad: 1,
            };
            let (a0, a1) = b.act.split_at_mut(1);
            let idx = &mut b.pool_idx;
            op(&mut k.profile, "maxpool", 0.0, || {
                k.max_pool.forward(
                    &s,
                    &pool,
                    &a1[0].slice(..pool.input_len()),
                    &mut a0[0].slice_mut(..pool.output_len()),
                    idx,
                )
            })?;
            Ok((stem, pool.out_size()))
        })?;
        // x in act[ix]; each block's conv1 -> y1, conv2 -> y2, the shortcut -> sc, and
        // conv3 (+ shortcut, ReLU) over y1's buffer, which becomes the next x.
        let (mut ix, mut dims) = (0usize, (pooled[0], pooled[1], stem.2));
        for (n, stage) in p.stages.iter().enumerate() {
            let name = format!("backbone/layer{}", n + 1);
            (ix, dims) = span(timer.as_deref_mut(), &name, &s, || {
                let (mut ix, mut dims) = (ix, dims);
                for block in stage {
                    let others: Vec<usize> = (0..4).filter(|&i| i != ix).collect();
                    let (y1, y2, sc) = (others[0], others[1], others[2]);
                    let d1 = {
                        let [x, y] = pick(&mut b.act, [ix, y1]);
                        let (x, y) = (x.as_view(), y.as_view_mut());
                        conv(k, &block.conv1, dims.0, dims.1, x, None, true, y)?
                    };
                    let d2 = {
                        let [x, y] = pick(&mut b.act, [y1, y2]);
                        let (x, y) = (x.as_view(), y.as_view_mut());
                        conv(k, &block.conv2, d1.0, d1.1, x, None, true, y)?
                    };
                    let shortcut = match &block.downsample {
                        Some(d) => {
                            let [x, y] = pick(&mut b.act, [ix, sc]);
                            let (x, y) = (x.as_view(), y.as_view_mut());
                            conv(k, d, dims.0, dims.1, x, None, false, y)?;
                            sc
                        }
                        None => ix,
                    };
                    let out = {
                        let [x, r, y] = pick(&mut b.act, [y2, shortcut, y1]);
                        let (x, r, y) = (x.as_view(), Some(r.as_view()), y.as_view_mut());
                        conv(k, &block.conv3, d2.0, d2.1, x, r, true, y)?
                    };
                    ix = y1;
                    dims = out;
                }
                Ok((ix, dims))
            })?;
            if let Some(st) = stages.as_mut() {
                st.layers.push(download_activation(&s, &b.act[ix], dims)?);
            }
        }
        span(timer, "backbone/bottleneck", &s, || {
            let (x, y) = (b.act[ix].as_view(), b.feat.as_view_mut());
            conv(k, &p.bottleneck, dims.0, dims.1, x, None, false, y).map(drop)
        })?;
        Ok(stages)
    }

    /// The features in `buf.feat` widened into `dst` (f32 tokens).
    fn widen_features(&mut self, tokens: usize, dst: Dest) -> Result<()> {
        let s = self.gpu.stream().clone();
        let n = tokens * self.weights.d_model();
        let (k, b) = (&mut self.k, &mut self.buf);
        let x = b.feat.slice(..n);
        let mut y = match dst {
            Dest::Template(slot) => b.templates.slice_mut(slot * n..(slot + 1) * n),
            Dest::Search => {
                let off = self.weights.transformer.config.search_offset() * self.weights.d_model();
                self.engine.tokens_mut()?.slice_mut(off..off + n)
            }
        };
        op(&mut k.profile, "features -> tokens", 0.0, || {
            T::widen(&k.cast, &s, &x, &mut y)
        })
        .map(drop)
    }

    /// Gives the engine the masks when they changed since it was given them last.
    fn load_masks(&mut self) -> Result<()> {
        if self.loaded.as_ref() != Some(&self.masks) {
            let merged: Vec<u8> = self.masks.0.concat();
            self.engine.load_masks(1, &merged, &self.query)?;
            self.loaded = Some(self.masks.clone());
        }
        Ok(())
    }

    /// The templates into the transformer's input, the transformer, and both heads: the
    /// corners and the logit on the device.
    fn transformer_and_heads(&mut self, mut timer: Option<&mut EventTimer>) -> Result<()> {
        let s = self.gpu.stream().clone();
        let c = self.weights.d_model();
        {
            let (engine, templates, k) = (&mut self.engine, &self.buf.templates, &mut self.k);
            span(timer.as_deref_mut(), "transformer", &s, || {
                op(&mut k.profile, "transformer", 0.0, || {
                    let tokens = engine.tokens_mut()?;
                    s.memcpy_dtod(templates, &mut tokens.slice_mut(..templates.len()))
                        .cuda(|| "copying the templates into the transformer's input".into())?;
                    engine.enqueue(Part::Transformer, None)
                })
                .map(drop)
            })?;
        }
        if self.params.corners.form.is_none() {
            self.choose_corner_form()?;
        }
        let (p, b, k, engine) = (&self.params, &mut self.buf, &mut self.k, &self.engine);
        let side = self.weights.transformer.config.search_size;
        let tokens = side * side;
        let form = p.corners.form.expect("chosen above");
        span(timer.as_deref_mut(), "heads/corners", &s, || {
            let (search, hs) = engine.device_outputs()?;
            let opt = &mut b.opt.slice_mut(..tokens * c);
            op(&mut k.profile, "scale_by_dot", 0.0, || {
                k.elementwise.scale_by_dot(&s, &search, &hs, opt, tokens)
            })?;
            corner_head(k, &p.corners, form, b, side)?;
            let (scores, corners) = (&b.scores, &mut b.corners);
            op(&mut k.profile, "soft_argmax", 0.0, || {
                k.soft_argmax
                    .run(&s, scores, 2, side, FEATURE_STRIDE as f32, corners)
            })
            .map(drop)
        })?;
        let hs = engine.device_outputs()?.1;
        span(timer, "heads/score", &s, || {
            op(&mut k.profile, "score head", 0.0, || {
                score_head(
                    &k.linear,
                    &s,
                    &p.score_head,
                    &hs,
                    &mut b.hidden,
                    &mut b.logit,
                )
            })
            .map(drop)
        })
    }

    /// Runs both forms of the corner head on the current buffers (planning their
    /// convolutions), times each as the step runs it (`CHOICE_REPS` runs: in one CUDA graph
    /// when the graph is on, else eagerly), and keeps the faster, or the forced form.
    fn choose_corner_form(&mut self) -> Result<()> {
        let head = &mut self.params.corners;
        if let Some(forced) = head.forced {
            head.form = Some(forced);
            return Ok(());
        }
        let s = self.gpu.stream().clone();
        let side = self.weights.transformer.config.search_size;
        // The measuring runs are not the step's operations (and `--ops` cannot time inside
        // their capture).
        let profile = self.k.profile.take();
        let ms = self.time_corner_forms(&s, side);
        self.k.profile = profile;
        let ms = ms?;
        let head = &mut self.params.corners;
        head.form = Some(if ms[1] < ms[0] {
            CornerForm::Split
        } else {
            CornerForm::Grouped
        });
        head.measured = Some(ms);
        Ok(())
    }

    /// Milliseconds per run of the grouped and the split corner head (see
    /// [`Self::choose_corner_form`]).
    fn time_corner_forms(&mut self, s: &Arc<CudaStream>, side: usize) -> Result<[f64; 2]> {
        let (head, b, k) = (&self.params.corners, &mut self.buf, &mut self.k);
        let mut ms = [0.0; 2];
        for (i, form) in [CornerForm::Grouped, CornerForm::Split]
            .into_iter()
            .enumerate()
        {
            corner_head(k, head, form, b, side)?;
            let run = || (0..CHOICE_REPS).try_for_each(|_| corner_head(k, head, form, b, side));
            let total = if self.use_graph {
                let graph = Graph::capture(s, run)?;
                graph.replay()?;
                time_ms(s, || graph.replay())?
            } else {
                s.synchronize()
                    .cuda(|| "waiting before timing the corner head".into())?;
                time_ms(s, run)?
            };
            ms[i] = total / CHOICE_REPS as f64;
        }
        Ok(ms)
    }

    /// Forces the corner head's form (`None`: measure both on the next step and keep the
    /// faster, the default); the next step runs eagerly and captures the graph again.
    pub fn set_corner_form(&mut self, form: Option<CornerForm>) {
        let head = &mut self.params.corners;
        head.forced = form;
        head.form = None;
        head.measured = None;
        self.graph = None;
        self.warm = false;
    }

    /// The corner head's form, once chosen.
    pub fn corner_form(&self) -> Option<CornerForm> {
        self.params.corners.form
    }

    /// One search step on the uploaded frame and written window: crop -> corners and logit,
    /// with a span per stage on `timer` when given.
    fn step(&mut self, mut timer: Option<&mut EventTimer>) -> Result<()> {
        let side = self.weights.config.search_crop;
        let tokens = self.weights.transformer.config.search_tokens();
        let s = self.gpu.stream().clone();
        span(timer.as_deref_mut(), "crop", &s, || {
            self.crop_device(side, false)
        })?;
        self.backbone(side, false, timer.as_deref_mut())?;
        self.widen_features(tokens, Dest::Search)?;
        self.transformer_and_heads(timer)
    }

    /// The template step on the uploaded frame and written window: crop -> features into
    /// template 2.
    fn template_step(&mut self) -> Result<()> {
        self.crop_device(self.weights.config.template_crop, false)?;
        self.backbone(self.weights.config.template_crop, false, None)?;
        let tokens = self.weights.transformer.config.template_tokens();
        self.widen_features(tokens, Dest::Template(1))
    }

    /// Plans the search step before the first tracked frame, so that no tracked frame pays
    /// for cuDNN's benchmarks, the corner head's measurement or a graph capture: one eager
    /// search around `target` on the uploaded frame (its results unused: the next search
    /// writes every buffer it reads), then, with the graph on, the captures of the search
    /// and the template steps. Nothing to do when an earlier sequence of this frame size
    /// left them ready.
    fn prepare_search(&mut self, frame: &Frame, target: &BBox) -> Result<()> {
        let graphs = self.graph.is_some() && self.template_graph.is_some();
        if self.warm && (graphs || !self.use_graph) {
            return Ok(());
        }
        let side = self.weights.config.search_crop;
        let win = self.window(frame, target, CropKind::Search)?;
        self.masks.0[2] = sampled_mask(&win, side, FEATURE_STRIDE);
        self.load_masks()?;
        self.step(None)?;
        self.warm = true;
        if self.use_graph {
            let s = self.gpu.stream().clone();
            self.graph = Some(Graph::capture(&s, || self.step(None))?);
            self.template_graph = Some(Graph::capture(&s, || self.template_step())?);
        }
        Ok(())
    }

    /// Waits for the corners and the logit that [`HostTraffic::fetch`] queued.
    fn prediction(&self, resize_factor: f64) -> Result<Prediction> {
        let (corners, logit) = self.host.results()?;
        let crop = self.weights.config.search_crop as f64;
        Ok(Prediction {
            pred_box: corners_to_box(corners, crop),
            conf_logit: logit as f64,
            resize_factor,
        })
    }

    /// Writes the crop window of `target` in `frame` (uploaded), returning it.
    fn place(&mut self, frame: &Frame, target: &BBox, kind: CropKind) -> Result<CropWindow> {
        self.upload_frame(&frame.data, frame.height, frame.width)?;
        self.window(frame, target, kind)
    }

    /// Writes the crop window of `target` in `frame` (of the frame's size), returning it.
    fn window(&mut self, frame: &Frame, target: &BBox, kind: CropKind) -> Result<CropWindow> {
        let (factor, _) = kind.geometry(&self.weights.config);
        let win = crop_window(target, factor, frame.width, frame.height)?;
        let s = self.gpu.stream().clone();
        self.buf.window.write(&s, &win, frame.width, frame.height)?;
        Ok(win)
    }

    /// The search of `frame` (uploaded, or the staged frame) around `state`, up to the
    /// masks: the window, for the step to run.
    fn place_search(&mut self, frame: &Frame, state: &BBox) -> Result<CropWindow> {
        let side = self.weights.config.search_crop;
        self.frame_buffer(frame.height, frame.width)?;
        self.host.search_frame(frame, &mut self.buf.frame)?;
        let win = self.window(frame, state, CropKind::Search)?;
        self.masks.0[2] = sampled_mask(&win, side, FEATURE_STRIDE);
        self.load_masks()?;
        Ok(win)
    }
}

/// Runs of each corner-head form timed when choosing between them.
const CHOICE_REPS: usize = 10;

/// The corner head in `form` on `b.opt` (the search features weighted by `hs`): both
/// branches' score maps in `b.scores`.
fn corner_head<T: Storage>(
    k: &mut Kernels,
    head: &CornerHead<T>,
    form: CornerForm,
    b: &mut Buffers<T>,
    side: usize,
) -> Result<()> {
    let tokens = side * side;
    match form {
        CornerForm::Grouped => {
            let all = 0..b.corner[0].len();
            let last = hidden_layers(k, &head.grouped, b, all.clone(), side)?;
            for (m, score) in head.grouped_score.iter().enumerate() {
                let (x, y) = layer_io(b, last, all.clone(), m * tokens..(m + 1) * tokens);
                conv(k, score, side, side, x, None, false, y)?;
            }
        }
        CornerForm::Split => {
            let half = b.corner_half;
            for (m, branch) in head.split.iter().enumerate() {
                let (score, hidden) = branch.split_last().expect("a score layer per branch");
                let at = m * half..(m + 1) * half;
                let last = hidden_layers(k, hidden, b, at.clone(), side)?;
                let (x, y) = layer_io(b, last, at, m * tokens..(m + 1) * tokens);
                conv(k, score, side, side, x, None, false, y)?;
            }
        }
    }
    Ok(())
}

/// The corner head's hidden `layers` (ReLU) one after the other, the first on `b.opt`, the
/// others ping-ponging through elements `at` of `b.corner`: which of the two holds the
/// last output, `None` without layers.
fn hidden_layers<T: Storage>(
    k: &mut Kernels,
    layers: &[DeviceConv<T>],
    b: &mut Buffers<T>,
    at: std::ops::Range<usize>,
    side: usize,
) -> Result<Option<usize>> {
    let mut last = None;
    for (i, layer) in layers.iter().enumerate() {
        let [x, y] = pick(&mut b.corner, [(i + 1) % 2, i % 2]);
        let x = match last {
            None => b.opt.as_view(),
            Some(_) => x.slice(at.clone()),
        };
        conv(k, layer, side, side, x, None, true, y.slice_mut(at.clone()))?;
        last = Some(i % 2);
    }
    Ok(last)
}

/// A score layer's input (the last hidden output in elements `at` of `b.corner[last]`, or
/// `b.opt` without hidden layers) and its output, elements `map` of `b.scores`.
fn layer_io<T: Storage>(
    b: &mut Buffers<T>,
    last: Option<usize>,
    at: std::ops::Range<usize>,
    map: std::ops::Range<usize>,
) -> (CudaView<'_, T>, CudaViewMut<'_, T>) {
    let x = match last {
        None => b.opt.as_view(),
        Some(i) => b.corner[i].slice(at),
    };
    (x, b.scores.slice_mut(map))
}

/// The score head: `hs` -> `hidden[0]` -> `hidden[1]` -> ... -> the logit.
fn score_head(
    lin: &LinearKernels,
    s: &Arc<CudaStream>,
    layers: &[DeviceLinear],
    hs: &CudaView<'_, f32>,
    hidden: &mut [DeviceBuffer<f32>; 2],
    logit: &mut DeviceBuffer<f32>,
) -> Result<()> {
    for (i, l) in layers.iter().enumerate() {
        let shape = (1, l.out_features, l.in_features);
        let last = i + 1 == layers.len();
        let epilogue = if last {
            linear::Epilogue::Bias { scale: 1.0 }
        } else {
            linear::Epilogue::BiasRelu
        };
        match (i, last) {
            (0, true) => lin.run(s, hs, &l.weight, &l.bias, shape, logit, epilogue)?,
            (0, false) => lin.run(s, hs, &l.weight, &l.bias, shape, &mut hidden[0], epilogue)?,
            (_, true) => {
                let x = &hidden[(i - 1) % 2];
                lin.run(s, x, &l.weight, &l.bias, shape, logit, epilogue)?
            }
            (_, false) => {
                let [x, y] = pick(hidden, [(i - 1) % 2, i % 2]);
                lin.run(s, x, &l.weight, &l.bias, shape, y, epilogue)?
            }
        }
    }
    Ok(())
}

/// Where [`GpuNetwork::widen_features`] writes.
#[derive(Clone, Copy)]
enum Dest {
    Template(usize),
    Search,
}

/// Runs `f` as a span named `name` when timing, else just runs it.
fn span<R>(
    timer: Option<&mut EventTimer>,
    name: &str,
    s: &CudaStream,
    f: impl FnOnce() -> Result<R>,
) -> Result<R> {
    match timer {
        Some(t) => t.span(name, 0, s, f),
        None => f(),
    }
}

/// Mutable references to distinct buffers of `bufs` (the indices must differ).
fn pick<const N: usize, T>(
    bufs: &mut [DeviceBuffer<T>],
    idx: [usize; N],
) -> [&mut DeviceBuffer<T>; N] {
    bufs.get_disjoint_mut(idx)
        .expect("the backbone's buffer rotation picks distinct buffers")
}

/// `y = relu?(conv(x) + bias + residual)` on an `h x w` input, into the front of `y`: the
/// output's `(h, w, channels)`. Profiled as a row named after the convolution, with its
/// shape and cuDNN's plan.
#[allow(clippy::too_many_arguments)]
fn conv<T: Storage>(
    k: &mut Kernels,
    c: &DeviceConv<T>,
    h: usize,
    w: usize,
    x: CudaView<'_, T>,
    residual: Option<CudaView<'_, T>>,
    relu: bool,
    mut y: CudaViewMut<'_, T>,
) -> Result<(usize, usize, usize)> {
    let shape = c.shape(h, w);
    let [oh, ow] = shape.out_size();
    let n = shape.output_len();
    let x = x.slice(..shape.input_len());
    let residual = residual.map(|r| r.slice(..n));
    let row = op(&mut k.profile, &c.name, shape.flops(), || {
        let bias = c.bias.as_view();
        let epilogue = match &residual {
            Some(r) => Epilogue::bias_add_relu(bias, r.slice(..)),
            None if relu => Epilogue::bias_relu(bias),
            None => Epilogue::bias(bias),
        };
        k.conv
            .forward(&shape, &x, &c.weight, epilogue, &mut y.slice_mut(..n))
    })?;
    if let Some(row) = row {
        row.detail = k.conv.describe(&shape).unwrap_or_default();
        row.candidates = k.conv.forward_candidates(&shape).unwrap_or_default();
    }
    Ok((oh, ow, c.conv.out_channels))
}

/// An activation of `(h, w, c)` downloaded as f32 (waits for the stream).
fn download_activation<T: Storage>(
    s: &Arc<CudaStream>,
    buf: &DeviceBuffer<T>,
    (h, w, c): (usize, usize, usize),
) -> Result<Activation> {
    let data = download(s, &buf.slice(..h * w * c))?;
    Ok(Activation {
        height: h,
        width: w,
        channels: c,
        data: data.into_iter().map(T::to_f32).collect(),
    })
}

/// The most elements any backbone activation of a `side x side` crop holds (the crop's
/// three channels included).
fn largest_activation(w: &TrackerWeights, side: usize) -> usize {
    let b = &w.backbone;
    let stem = b.stem.shape(side, side);
    let [sh, sw] = stem.out_size();
    let mut most = (side * side * 3).max(stem.output_len());
    let (mut h, mut wd) = ((sh + 2 - 3) / 2 + 1, (sw + 2 - 3) / 2 + 1);
    most = most.max(h * wd * b.stem.out_channels);
    for stage in &b.stages {
        for block in stage {
            let s2 = block.conv2.shape(h, wd);
            let [oh, ow] = s2.out_size();
            most = most
                .max(h * wd * block.conv1.out_channels)
                .max(s2.output_len())
                .max(oh * ow * block.conv3.out_channels);
            (h, wd) = (oh, ow);
        }
    }
    most
}

impl<T: Storage> Network for GpuNetwork<T> {
    fn describe(&self) -> String {
        let head = &self.params.corners;
        let corners = match (head.form, head.measured) {
            (Some(form), Some([grouped, split])) => format!(
                ", corner head {form} (measured: grouped {grouped:.3} ms, split {split:.3} ms)"
            ),
            (Some(form), None) => format!(", corner head {form} (forced)"),
            (None, _) => String::new(),
        };
        format!(
            "GPU tracker ({}, {}, transformer {}{corners}{})",
            self.precision,
            T::NAME,
            self.engine.describe(),
            if self.use_graph {
                ", one CUDA graph a step"
            } else {
                ""
            }
        )
    }

    fn device(&self) -> String {
        format!("cuda:{}", self.gpu.ordinal())
    }

    fn config(&self) -> &TrackerConfig {
        &self.weights.config
    }

    fn crop(&mut self, frame: &Frame, target: &BBox, kind: CropKind) -> Result<Crop> {
        let (_, side) = kind.geometry(&self.weights.config);
        let win = self.place(frame, target, kind)?;
        self.crop_device(side, true)?;
        let s = self.gpu.stream();
        let n = side * side;
        Ok(Crop {
            side,
            pixels: download(s, &self.buf.pixels.slice(..n * 3))?,
            mask: download(s, &self.buf.mask.slice(..n))?,
            resize_factor: win.resize_factor(side),
        })
    }

    fn features(
        &mut self,
        crop: &Crop,
        stages: bool,
    ) -> Result<(Features, Option<BackboneStages>)> {
        let side = crop.side;
        let largest = self
            .weights
            .config
            .search_crop
            .max(self.weights.config.template_crop);
        if !side.is_multiple_of(FEATURE_STRIDE)
            || side > largest
            || crop.pixels.len() != side * side * 3
            || crop.mask.len() != side * side
        {
            return Err(Error::invalid(
                "crop",
                format!(
                    "side {side} with {} pixel bytes and {} mask bytes; expected a multiple of \
                     {FEATURE_STRIDE} up to {largest}, side^2 x 3 pixel and side^2 mask bytes",
                    crop.pixels.len(),
                    crop.mask.len()
                ),
            ));
        }
        // The crop as a frame of its own, cropped whole: the kernel's copy path.
        let whole = CropWindow {
            size: side,
            x1: 0,
            y1: 0,
            x1_pad: 0,
            x2_pad: 0,
            y1_pad: 0,
            y2_pad: 0,
        };
        self.upload_frame(&crop.pixels, side, side)?;
        let s = self.gpu.stream().clone();
        self.buf.window.write(&s, &whole, side, side)?;
        self.crop_device(side, false)?;
        let captured = self.backbone(side, stages, None)?;
        let n = side / FEATURE_STRIDE;
        let c = self.weights.d_model();
        let feat = download(&s, &self.buf.feat.slice(..n * n * c))?;
        Ok((
            Features {
                side: n,
                feat: feat.into_iter().map(T::to_f32).collect(),
                mask: crop.feature_mask(FEATURE_STRIDE),
            },
            captured,
        ))
    }

    fn set_template(&mut self, slot: usize, features: &Features) -> Result<()> {
        let t = self.weights.transformer.config.template_size;
        let c = self.weights.d_model();
        if slot > 1 || features.side != t || features.feat.len() != t * t * c {
            return Err(Error::invalid(
                "template",
                format!(
                    "slot {slot} of 2 with {0}x{0} features; expected {t}x{t}x{c}",
                    features.side
                ),
            ));
        }
        let s = self.gpu.stream().clone();
        let n = features.feat.len();
        s.memcpy_htod(
            &features.feat,
            &mut self.buf.templates.slice_mut(slot * n..(slot + 1) * n),
        )
        .cuda(|| "uploading a template".into())?;
        self.masks.0[slot] = features.mask.clone();
        Ok(())
    }

    fn predict(&mut self, search: &Features, resize_factor: f64) -> Result<SearchDetail> {
        let weights = self.weights.clone();
        let cfg = &weights.transformer.config;
        let (side, c) = (cfg.search_size, cfg.d_model);
        if search.side != side || search.feat.len() != side * side * c {
            return Err(Error::invalid(
                "search",
                format!("{0}x{0} features; expected {side}x{side}x{c}", search.side),
            ));
        }
        self.masks.0[2] = search.mask.clone();
        self.load_masks()?;
        let off = cfg.search_offset() * c;
        let s = self.gpu.stream().clone();
        {
            let tokens = self.engine.tokens_mut()?;
            s.memcpy_htod(
                &search.feat,
                &mut tokens.slice_mut(off..off + search.feat.len()),
            )
            .cuda(|| "uploading search features".into())?;
        }
        let mut timer = EventTimer::start(&s)?;
        self.transformer_and_heads(Some(&mut timer))?;
        self.host.fetch(&self.buf.corners, &self.buf.logit)?;
        let prediction = self.prediction(resize_factor)?;
        let times = stage_times(&timer.spans()?);
        let (_, hs) = self.engine.device_outputs()?;
        let hs = download(&s, &hs)?;
        Ok(SearchDetail {
            prediction,
            hs: Tensor {
                shape: vec![1, 1, c],
                data: hs,
            },
            transformer_ms: times.transformer,
            heads_ms: times.heads,
        })
    }

    fn init_templates(&mut self, frame: &Frame, target: &BBox) -> Result<()> {
        let side = self.weights.config.template_crop;
        let win = self.place(frame, target, CropKind::Template)?;
        self.template_step()?;
        self.masks.0[1] = sampled_mask(&win, side, FEATURE_STRIDE);
        // The features are still in `buf.feat`: template 1 from them too.
        let tokens = self.weights.transformer.config.template_tokens();
        self.widen_features(tokens, Dest::Template(0))?;
        self.masks.0[0] = self.masks.0[1].clone();
        self.prepare_search(frame, target)
    }

    /// The frame of the search just before is still in page-locked memory, and often on
    /// the device: uploaded again only when the next frame's upload replaced it, and that
    /// upload queued again after the template step. With the graph on, the template step
    /// is a graph replay.
    fn update_template(&mut self, frame: &Frame, target: &BBox) -> Result<()> {
        let side = self.weights.config.template_crop;
        let same_size = (frame.height, frame.width) == self.buf.frame_size;
        if !(same_size && self.host.restore_searched(frame, &mut self.buf.frame)?) {
            self.upload_frame(&frame.data, frame.height, frame.width)?;
        }
        let win = self.window(frame, target, CropKind::Template)?;
        if self.use_graph {
            let s = self.gpu.stream().clone();
            let graph = match self.template_graph.take() {
                Some(g) => g,
                None => Graph::capture(&s, || self.template_step())?,
            };
            graph.replay()?;
            self.template_graph = Some(graph);
        } else {
            self.template_step()?;
        }
        self.masks.0[1] = sampled_mask(&win, side, FEATURE_STRIDE);
        let size = self.buf.frame_size;
        self.host.restage(size, &mut self.buf.frame)
    }

    fn search(&mut self, frame: &Frame, state: &BBox) -> Result<Prediction> {
        self.search_ahead(frame, state, None)
    }

    /// The step queued, then `next` copied into page-locked memory (and its upload queued
    /// behind the step) while the GPU runs it, then the wait for the results.
    fn search_ahead(
        &mut self,
        frame: &Frame,
        state: &BBox,
        next: Option<&Frame>,
    ) -> Result<Prediction> {
        let side = self.weights.config.search_crop;
        let win = self.place_search(frame, state)?;
        let s = self.gpu.stream().clone();
        let mut timer = None;
        if self.use_graph && self.warm && !self.timing {
            let graph = match self.graph.take() {
                Some(g) => g,
                None => Graph::capture(&s, || self.step(None))?,
            };
            graph.replay()?;
            self.graph = Some(graph);
            self.stages = None;
        } else {
            // The eager step plans every convolution (cuDNN's benchmark), so a capture
            // after it only records launches.
            if self.timing {
                timer = Some(EventTimer::start(&s)?);
            }
            self.step(timer.as_mut())?;
            self.warm = true;
        }
        self.host.fetch(&self.buf.corners, &self.buf.logit)?;
        if let Some(next) = next {
            let same_size = (next.height, next.width) == self.buf.frame_size;
            let dst = same_size.then_some(&mut self.buf.frame);
            self.host.stage(next, dst)?;
        }
        let prediction = self.prediction(win.resize_factor(side))?;
        if let Some(t) = timer {
            self.stages = Some(stage_times(&t.spans()?));
        }
        Ok(prediction)
    }

    fn trace(&mut self, frame: &Frame, state: &BBox) -> Result<Vec<Span>> {
        let side = self.weights.config.search_crop;
        let win = self.place(frame, state, CropKind::Search)?;
        self.masks.0[2] = sampled_mask(&win, side, FEATURE_STRIDE);
        self.load_masks()?;
        let s = self.gpu.stream().clone();
        let mut timer = EventTimer::start(&s)?;
        self.step(Some(&mut timer))?;
        self.warm = true;
        self.gpu.sync()?;
        timer.spans()
    }

    fn profile_ops(&mut self, frame: &Frame, state: &BBox, reps: usize) -> Result<Vec<OpTiming>> {
        let side = self.weights.config.search_crop;
        let win = self.place(frame, state, CropKind::Search)?;
        self.masks.0[2] = sampled_mask(&win, side, FEATURE_STRIDE);
        self.load_masks()?;
        let s = self.gpu.stream().clone();
        self.k.profile = Some(Profiler::new(&s, reps));
        let ran = self.step(None);
        let rows = self.k.profile.take().map(Profiler::into_rows);
        ran?;
        self.gpu.sync()?;
        Ok(rows.unwrap_or_default())
    }

    fn stage_times(&self) -> Option<StageTimes> {
        self.stages
    }

    /// Stage timing records CUDA events between the stages, so steps run eagerly while it is
    /// on (a graph replays as one).
    fn set_stage_timing(&mut self, on: bool) {
        self.timing = on;
    }

    fn device_memory(&self) -> Option<usize> {
        let (free, total) = self.gpu.ctx().mem_get_info().ok()?;
        Some(total - free)
    }
}
