//! The whole tracker's parameters, read from a safetensors file with the released
//! checkpoint's names: the ResNet backbone, the `bottleneck`, the corner `box_head`, the
//! score `cls_head`, and the transformer (with `query_embed`) through
//! [`Weights`]. Frozen batch norms are folded into the convolution before them here, once:
//! `s = gamma / sqrt(running_var + 1e-5)`, weight `* s`, bias `(bias - running_mean) * s +
//! beta` (computed in f64, stored f32), so every engine runs plain convolutions.
//!
//! The configuration comes from the file's metadata where present, else from the shapes:
//! block counts and widths of the backbone, the heads' widths, the crop sizes
//! (`16 x` the transformer's token sides) and factors (5 and 2).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::base::TensorFile;
use crate::error::{Error, Result};
use crate::kernels::conv2d::Conv2dShape;
use crate::kernels::conv2d::cpu::{Conv2d, Layout};
use crate::model::weights::{Linear, Reader, Weights};

/// The metadata value of `format` in tracker files (weights and golden files).
pub const FORMAT: &str = "cswintt-tracker";

/// The backbone's stride: a feature cell covers 16 x 16 crop pixels.
pub const FEATURE_STRIDE: usize = 16;

/// Batch norm epsilon of the backbone's frozen norms and the head's eval-mode norms.
pub const BN_EPS: f64 = 1e-5;

/// The stride of each backbone stage (`layer1`, `layer2`, `layer3`): with the stem's 4
/// they make [`FEATURE_STRIDE`].
pub const STAGE_STRIDES: [usize; 3] = [1, 2, 2];

/// Checkpoint names.
pub mod names {
    /// The backbone's prefix.
    pub const BACKBONE: &str = "backbone.0.body.";
    /// The tensor whose presence marks a whole tracker.
    pub const STEM_CONV: &str = "backbone.0.body.conv1.weight";
    pub const BOTTLENECK: &str = "bottleneck";
    pub const BOX_HEAD: &str = "box_head";
    pub const CLS_HEAD: &str = "cls_head.layers";
}

/// Sizes of the crops and the search/template factors.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerConfig {
    /// Side of the search crop in pixels (384): `16 x search_size`.
    pub search_crop: usize,
    /// Side of the template crop in pixels (128): `16 x template_size`.
    pub template_crop: usize,
    /// The search region's side over the target's `sqrt(w h)` (5).
    pub search_factor: f64,
    /// The template's side over the target's `sqrt(w h)` (2).
    pub template_factor: f64,
    /// Frames between template updates, when the file says (`update_interval`).
    pub update_interval: Option<usize>,
}

impl TrackerConfig {
    /// The released tracker's: 384 and 128 pixels, factors 5 and 2, no interval.
    pub fn released() -> TrackerConfig {
        TrackerConfig {
            search_crop: 384,
            template_crop: 128,
            search_factor: 5.0,
            template_factor: 2.0,
            update_interval: None,
        }
    }

    /// Metadata keys and values, as [`TrackerWeights::from_file`] reads them.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("search_crop".into(), self.search_crop.to_string()),
            ("template_crop".into(), self.template_crop.to_string()),
            ("search_factor".into(), format!("{:?}", self.search_factor)),
            (
                "template_factor".into(),
                format!("{:?}", self.template_factor),
            ),
        ]);
        if let Some(n) = self.update_interval {
            m.insert("update_interval".into(), n.to_string());
        }
        m
    }
}

/// A convolution with its batch norm folded in: weight `(out, in, k, k)` and a bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv {
    /// The [`Conv2d`] call on a `(batch, in, h, w)` input.
    pub fn geometry(&self, batch: usize, h: usize, w: usize, relu: bool, layout: Layout) -> Conv2d {
        Conv2d {
            batch,
            in_channels: self.in_channels,
            height: h,
            width: w,
            out_channels: self.out_channels,
            kernel_h: self.kernel,
            kernel_w: self.kernel,
            stride: self.stride,
            pad: self.pad,
            groups: 1,
            relu,
            layout,
        }
    }

    /// The GPU op's shape on a `(1, h, w, in)` input.
    pub fn shape(&self, h: usize, w: usize) -> Conv2dShape {
        Conv2dShape::new(1, [h, w], self.in_channels, self.out_channels, self.kernel)
            .with_stride(self.stride)
            .with_pad(self.pad)
    }
}

/// A ResNet bottleneck block (v1.5: the stride on the 3x3): `conv1` 1x1, `conv2` 3x3,
/// `conv3` 1x1, and the projection shortcut of a stage's first block.
#[derive(Debug, Clone, PartialEq)]
pub struct Bottleneck {
    pub conv1: Conv,
    pub conv2: Conv,
    pub conv3: Conv,
    pub downsample: Option<Conv>,
}

/// ResNet up to `layer3`: the stem (7x7 stride 2, then a 3x3 stride-2 max pool) and three
/// stages of bottleneck blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Backbone {
    pub stem: Conv,
    pub stages: Vec<Vec<Bottleneck>>,
}

impl Backbone {
    /// Channels of the last stage's output (1024).
    pub fn out_channels(&self) -> usize {
        self.stages
            .last()
            .and_then(|s| s.last())
            .map_or(self.stem.out_channels, |b| b.conv3.out_channels)
    }
}

/// One branch of the corner head: conv 3x3 + BN + ReLU layers, then a 1x1 conv to one
/// score map.
#[derive(Debug, Clone, PartialEq)]
pub struct CornerBranch {
    pub convs: Vec<Conv>,
    pub score: Conv,
}

/// All of the tracker's parameters.
#[derive(Debug, Clone)]
pub struct TrackerWeights {
    pub config: TrackerConfig,
    /// The transformer, with `query_embed`.
    pub transformer: Arc<Weights>,
    pub backbone: Backbone,
    /// 1x1 conv, backbone channels -> `d_model`, with bias.
    pub bottleneck: Conv,
    /// `box_head` top-left and bottom-right branches.
    pub corner_tl: CornerBranch,
    pub corner_br: CornerBranch,
    /// `cls_head.layers.{0,1,2}`: linear, ReLU, linear, ReLU, linear.
    pub score_head: Vec<Linear>,
}

/// Whether the file holds a whole tracker rather than only a transformer: it has the
/// backbone's first convolution (the converter writes such files with format
/// `cswintt-tracker`).
pub fn is_tracker(file: &TensorFile) -> bool {
    file.contains(&format!("{}{}", prefix(file), names::STEM_CONV))
}

/// `"module."` when the file's names carry DataParallel's prefix.
fn prefix(file: &TensorFile) -> &'static str {
    let m = format!("module.{}", names::STEM_CONV);
    if !file.contains(names::STEM_CONV) && file.contains(&m) {
        "module."
    } else {
        ""
    }
}

/// The tracker's parts, read with the transformer's reader (the same `module.` handling).
impl Reader<'_> {
    /// The shape of tensor `n`; an error naming it when it is missing.
    fn required_shape(&self, n: &str) -> Result<Vec<usize>> {
        self.shape(n).map(<[usize]>::to_vec).ok_or_else(|| {
            Error::invalid(self.file.context(&self.name(n)), "missing from the file")
        })
    }

    /// Conv `conv` (`.weight`, `.bias` when `with_bias`) of `in_channels` (when known)
    /// with the batch norm `bn` (`.weight`, `.bias`, `.running_mean`, `.running_var`)
    /// folded in.
    fn conv_bn(
        &self,
        conv: &str,
        bn: Option<&str>,
        in_channels: Option<usize>,
        with_bias: bool,
        stride: usize,
    ) -> Result<Conv> {
        let wname = format!("{conv}.weight");
        let shape = self.required_shape(&wname)?;
        let ctx = || self.file.context(&self.name(&wname));
        let [out, inp, kh, kw] = shape[..] else {
            return Err(Error::invalid(
                ctx(),
                format!("expected a 4-D convolution weight [out, in, k, k], found {shape:?}"),
            ));
        };
        if kh != kw || kh.is_multiple_of(2) {
            return Err(Error::invalid(
                ctx(),
                format!("expected a square kernel of odd size, found {kh}x{kw}"),
            ));
        }
        if let Some(c) = in_channels
            && c != inp
        {
            return Err(Error::invalid(
                ctx(),
                format!("takes {inp} input channels, but the layer before gives {c}"),
            ));
        }
        let mut weight = self.get(&wname, &shape)?.data;
        let mut bias = if with_bias {
            self.get(&format!("{conv}.bias"), &[out])?.data
        } else {
            vec![0.0; out]
        };
        if let Some(bn) = bn {
            let p = |f: &str| Ok::<_, Error>(self.get(&format!("{bn}.{f}"), &[out])?.data);
            let (g, b, rm, rv) = (
                p("weight")?,
                p("bias")?,
                p("running_mean")?,
                p("running_var")?,
            );
            if let Some(i) = rv.iter().position(|&v| v < 0.0) {
                return Err(Error::invalid(
                    self.file.context(&self.name(&format!("{bn}.running_var"))),
                    format!("negative variance {} at index {i}", rv[i]),
                ));
            }
            let per_out = inp * kh * kw;
            for o in 0..out {
                let s = g[o] as f64 / (rv[o] as f64 + BN_EPS).sqrt();
                for w in &mut weight[o * per_out..(o + 1) * per_out] {
                    *w = (*w as f64 * s) as f32;
                }
                bias[o] = ((bias[o] as f64 - rm[o] as f64) * s + b[o] as f64) as f32;
            }
        }
        Ok(Conv {
            weight,
            bias,
            in_channels: inp,
            out_channels: out,
            kernel: kh,
            stride,
            pad: kh / 2,
        })
    }

    /// Linear layer `base` taking `inp` features, its width from the weight's shape.
    fn linear_of(&self, base: &str, inp: usize) -> Result<Linear> {
        let shape = self.required_shape(&format!("{base}.weight"))?;
        self.linear(base, shape.first().copied().unwrap_or(0), inp)
    }

    fn backbone(&self) -> Result<Backbone> {
        let b = names::BACKBONE;
        let stem = self.conv_bn(
            &format!("{b}conv1"),
            Some(&format!("{b}bn1")),
            Some(3),
            false,
            2,
        )?;
        let mut channels = stem.out_channels;
        let mut stages = Vec::new();
        for (l, &stride) in STAGE_STRIDES.iter().enumerate() {
            let layer = format!("{b}layer{}", l + 1);
            let count = (0..)
                .take_while(|i| self.has(&format!("{layer}.{i}.conv1.weight")))
                .count();
            if count == 0 {
                return Err(Error::invalid(
                    self.file
                        .context(&self.name(&format!("{layer}.0.conv1.weight"))),
                    "missing from the file (a tracker's backbone has layer1 to layer3)",
                ));
            }
            let mut blocks = Vec::with_capacity(count);
            for i in 0..count {
                let p = format!("{layer}.{i}");
                let s = if i == 0 { stride } else { 1 };
                let cb = |n: usize, inp: usize, s: usize| {
                    self.conv_bn(
                        &format!("{p}.conv{n}"),
                        Some(&format!("{p}.bn{n}")),
                        Some(inp),
                        false,
                        s,
                    )
                };
                let conv1 = cb(1, channels, 1)?;
                let conv2 = cb(2, conv1.out_channels, s)?;
                let conv3 = cb(3, conv2.out_channels, 1)?;
                let downsample = if self.has(&format!("{p}.downsample.0.weight")) {
                    let d = self.conv_bn(
                        &format!("{p}.downsample.0"),
                        Some(&format!("{p}.downsample.1")),
                        Some(channels),
                        false,
                        s,
                    )?;
                    if d.out_channels != conv3.out_channels {
                        return Err(Error::invalid(
                            self.file
                                .context(&self.name(&format!("{p}.downsample.0.weight"))),
                            format!(
                                "gives {} channels, but conv3 gives {}",
                                d.out_channels, conv3.out_channels
                            ),
                        ));
                    }
                    Some(d)
                } else {
                    if s != 1 || conv3.out_channels != channels {
                        return Err(Error::invalid(
                            self.file
                                .context(&self.name(&format!("{p}.downsample.0.weight"))),
                            format!(
                                "missing: the block changes the shape ({channels} -> {} channels, \
                                 stride {s}) and needs a projection shortcut",
                                conv3.out_channels
                            ),
                        ));
                    }
                    None
                };
                for c in [&conv1, &conv3] {
                    if c.kernel != 1 {
                        return Err(Error::invalid(
                            format!("{}: block {p}", self.file.path().display()),
                            format!(
                                "conv1 and conv3 must be 1x1, found {}x{}",
                                c.kernel, c.kernel
                            ),
                        ));
                    }
                }
                channels = conv3.out_channels;
                blocks.push(Bottleneck {
                    conv1,
                    conv2,
                    conv3,
                    downsample,
                });
            }
            stages.push(blocks);
        }
        Ok(Backbone { stem, stages })
    }

    fn corner_branch(&self, side: &str, d_model: usize) -> Result<CornerBranch> {
        let h = names::BOX_HEAD;
        let mut convs = Vec::new();
        let mut channels = d_model;
        for i in 1.. {
            let base = format!("{h}.conv{i}_{side}");
            if !self.has(&format!("{base}.0.weight")) {
                break;
            }
            let c = self.conv_bn(
                &format!("{base}.0"),
                Some(&format!("{base}.1")),
                Some(channels),
                true,
                1,
            )?;
            channels = c.out_channels;
            convs.push(c);
        }
        let last = format!("{h}.conv{}_{side}", convs.len() + 1);
        let score = self.conv_bn(&last, None, Some(channels), true, 1)?;
        if score.out_channels != 1 || score.kernel != 1 {
            return Err(Error::invalid(
                self.file.context(&self.name(&format!("{last}.weight"))),
                format!(
                    "expected the 1x1 score convolution [1, {channels}, 1, 1], found [{}, {}, {}, {}]",
                    score.out_channels, score.in_channels, score.kernel, score.kernel
                ),
            ));
        }
        Ok(CornerBranch { convs, score })
    }
}

impl TrackerWeights {
    /// Loads a whole tracker; a transformer-only file is an error that says so.
    pub fn load(path: impl AsRef<Path>) -> Result<TrackerWeights> {
        TrackerWeights::from_file(&TensorFile::open(path)?)
    }

    /// See [`TrackerWeights::load`].
    pub fn from_file(file: &TensorFile) -> Result<TrackerWeights> {
        if !is_tracker(file) {
            return Err(Error::invalid(
                file.path().display().to_string(),
                format!(
                    "holds only a transformer (no backbone: tensor '{}' is missing), so it \
                     cannot track; convert the whole tracker checkpoint (backbone, \
                     bottleneck, box_head, cls_head) with scripts/convert_checkpoint.py",
                    names::STEM_CONV
                ),
            ));
        }
        let transformer = Weights::from_file(file)?;
        let r = Reader {
            file,
            prefix: prefix(file),
        };
        let tcfg = &transformer.config;
        let c = tcfg.d_model;
        if transformer.query_embed.is_none() {
            return Err(Error::invalid(
                file.context(&r.name("query_embed.weight")),
                "missing from the file (the decoder's object query)",
            ));
        }
        let backbone = r.backbone()?;
        let bottleneck = r.conv_bn(
            names::BOTTLENECK,
            None,
            Some(backbone.out_channels()),
            true,
            1,
        )?;
        if bottleneck.out_channels != c || bottleneck.kernel != 1 {
            return Err(Error::invalid(
                file.context(&r.name("bottleneck.weight")),
                format!(
                    "expected a 1x1 convolution to d_model {c} channels, found [{}, {}, {}, {}]",
                    bottleneck.out_channels,
                    bottleneck.in_channels,
                    bottleneck.kernel,
                    bottleneck.kernel
                ),
            ));
        }
        let corner_tl = r.corner_branch("tl", c)?;
        let corner_br = r.corner_branch("br", c)?;
        let mut score_head = Vec::new();
        let mut width = c;
        for i in 0..3 {
            let l = r.linear_of(&format!("{}.{i}", names::CLS_HEAD), width)?;
            width = l.out_features();
            score_head.push(l);
        }
        if width != 1 {
            return Err(Error::invalid(
                file.context(&r.name(&format!("{}.2.weight", names::CLS_HEAD))),
                format!("expected one output (the confidence logit), found {width}"),
            ));
        }
        let config = tracker_config(file, tcfg.search_size, tcfg.template_size)?;
        Ok(TrackerWeights {
            config,
            transformer: Arc::new(transformer),
            backbone,
            bottleneck,
            corner_tl,
            corner_br,
            score_head,
        })
    }

    /// `d_model`.
    pub fn d_model(&self) -> usize {
        self.transformer.config.d_model
    }
}

/// The crop sizes, factors and update interval: metadata where present (checked against
/// the transformer's token sides), else the released tracker's values.
fn tracker_config(
    file: &TensorFile,
    search_size: usize,
    template_size: usize,
) -> Result<TrackerConfig> {
    let get = |key: &str| file.meta_value(key).map(str::trim);
    let int = |key: &str| -> Result<Option<usize>> {
        get(key)
            .map(|v| {
                v.parse::<usize>().map_err(|_| {
                    Error::invalid(
                        file.meta_context(key),
                        format!("expected a non-negative integer, found '{v}'"),
                    )
                })
            })
            .transpose()
    };
    let factor = |key: &str, default: f64| -> Result<f64> {
        match get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<f64>() {
                Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
                _ => Err(Error::invalid(
                    file.meta_context(key),
                    format!("expected a positive number, found '{v}'"),
                )),
            },
        }
    };
    let crop = |key: &str, tokens: usize| -> Result<usize> {
        let want = tokens * FEATURE_STRIDE;
        match int(key)? {
            Some(v) if v != want => Err(Error::invalid(
                file.meta_context(key),
                format!(
                    "{v} pixels, but the transformer's {tokens} tokens a side at stride \
                     {FEATURE_STRIDE} need {want}"
                ),
            )),
            _ => Ok(want),
        }
    };
    let released = TrackerConfig::released();
    let update_interval = int("update_interval")?;
    if update_interval == Some(0) {
        return Err(Error::invalid(
            file.meta_context("update_interval"),
            "must be at least 1",
        ));
    }
    Ok(TrackerConfig {
        search_crop: crop("search_crop", search_size)?,
        template_crop: crop("template_crop", template_size)?,
        search_factor: factor("search_factor", released.search_factor)?,
        template_factor: factor("template_factor", released.template_factor)?,
        update_interval,
    })
}
