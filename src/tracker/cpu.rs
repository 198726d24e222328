//! The CPU reference of the tracker's network: normalise, backbone, bottleneck, feature
//! mask and positional encoding, the transformer's CPU reference, the corner and score
//! heads, soft-argmax. f32 storage with f64 accumulation, like the transformer's; the
//! activations are NHWC (`(side, side, channels)`: token-major, as the transformer takes
//! them).

use std::sync::Arc;
use std::time::Instant;

use super::crop::{Crop, sample_target};
use super::frame::{BBox, Frame};
use super::posenc::PositionCache;
use super::track::{Network, Prediction, StageTimes};
use super::weights::{Backbone, Conv, CornerBranch, FEATURE_STRIDE, TrackerConfig, TrackerWeights};
use crate::base::Tensor;
use crate::cswintt::cpu::CpuReference;
use crate::cswintt::{Backend, Inputs};
use crate::error::{Error, Result};
use crate::kernels::conv2d::cpu::{Layout, conv2d};
use crate::kernels::linear::cpu::linear;
use crate::model::weights::Linear;

/// An NHWC activation of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// `(height, width, channels)`.
    pub data: Vec<f32>,
}

impl Activation {
    /// As PyTorch lays it out: `(1, channels, height, width)`.
    pub fn to_nchw(&self) -> Tensor {
        let (hw, c) = (self.height * self.width, self.channels);
        let mut data = vec![0.0f32; self.data.len()];
        for p in 0..hw {
            for ch in 0..c {
                data[ch * hw + p] = self.data[p * c + ch];
            }
        }
        Tensor {
            shape: vec![1, c, self.height, self.width],
            data,
        }
    }
}

/// The backbone's intermediate outputs (for checks): the stem after its ReLU (before the
/// max pool), and each stage's output.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneStages {
    pub stem: Activation,
    pub layers: Vec<Activation>,
}

/// A crop's features as the transformer takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Tokens a side (`crop side / 16`).
    pub side: usize,
    /// `(side, side, d_model)`, the bottleneck's output.
    pub feat: Vec<f32>,
    /// `(side, side)`, 1 = padded.
    pub mask: Vec<u8>,
}

/// A search crop's outputs beyond the prediction, for checks and timings.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchDetail {
    pub prediction: Prediction,
    /// The decoder's output `hs`, `(1, 1, d_model)`.
    pub hs: Tensor,
    /// Milliseconds in the transformer and in the heads.
    pub transformer_ms: f64,
    pub heads_ms: f64,
}

/// The CPU reference network, holding the two templates' features.
pub struct CpuNetwork {
    weights: Arc<TrackerWeights>,
    transformer: CpuReference,
    templates: [Option<Features>; 2],
    positions: PositionCache,
    stages: Option<StageTimes>,
}

impl CpuNetwork {
    pub fn new(weights: Arc<TrackerWeights>) -> Result<CpuNetwork> {
        let transformer = CpuReference::new(weights.transformer.clone())?;
        Ok(CpuNetwork {
            weights,
            transformer,
            templates: [None, None],
            positions: PositionCache::default(),
            stages: None,
        })
    }

    pub fn weights(&self) -> &Arc<TrackerWeights> {
        &self.weights
    }

    /// Normalise, backbone, bottleneck and feature mask of a crop; with `stages`, also the
    /// backbone's intermediate outputs.
    pub fn features(
        &self,
        crop: &Crop,
        stages: bool,
    ) -> Result<(Features, Option<BackboneStages>)> {
        if !crop.side.is_multiple_of(FEATURE_STRIDE) {
            return Err(Error::invalid(
                "crop",
                format!(
                    "side {} is not a multiple of the backbone's stride {FEATURE_STRIDE}",
                    crop.side
                ),
            ));
        }
        let x = Activation {
            height: crop.side,
            width: crop.side,
            channels: 3,
            data: crop.normalised(),
        };
        let (layer3, captured) = backbone(&self.weights.backbone, x, stages)?;
        let feat = conv(&self.weights.bottleneck, &layer3, false, None)?;
        Ok((
            Features {
                side: feat.height,
                feat: feat.data,
                mask: crop.feature_mask(FEATURE_STRIDE),
            },
            captured,
        ))
    }

    /// The positional encoding of a feature mask, `(side, side, d_model)` (cached by mask).
    pub fn positions(&mut self, features: &Features) -> Arc<Vec<f32>> {
        let c = self.weights.d_model();
        self.positions.get(&features.mask, features.side, c)
    }

    /// Makes `features` template `slot` (0: the first frame's, 1: the dynamic one).
    pub fn set_template(&mut self, slot: usize, features: Features) -> Result<()> {
        let t = self.weights.transformer.config.template_size;
        if slot > 1 || features.side != t {
            return Err(Error::invalid(
                "template",
                format!(
                    "slot {slot} of 2 with {0}x{0} features; expected {t}x{t}",
                    features.side
                ),
            ));
        }
        self.templates[slot] = Some(features);
        Ok(())
    }

    /// The transformer and the heads on a search crop's features, against the templates.
    pub fn predict(&self, search: &Features, resize_factor: f64) -> Result<SearchDetail> {
        let cfg = &self.weights.transformer.config;
        let c = cfg.d_model;
        let [Some(t1), Some(t2)] = &self.templates else {
            return Err(Error::invalid(
                "tracker",
                "search before the templates were set",
            ));
        };
        let (s, t) = (cfg.search_size, cfg.template_size);
        if search.side != s {
            return Err(Error::invalid(
                "search",
                format!("{0}x{0} features; expected {s}x{s}", search.side),
            ));
        }
        let tensor = |f: &Features, side: usize| Tensor {
            shape: vec![side, side, 1, c],
            data: f.feat.clone(),
        };
        let inputs = Inputs {
            batch: 1,
            template1: tensor(t1, t),
            template2: tensor(t2, t),
            search: tensor(search, s),
            template1_mask: t1.mask.clone(),
            template2_mask: t2.mask.clone(),
            search_mask: search.mask.clone(),
            query_embed: None,
        };
        let t0 = Instant::now();
        let out = self.transformer.forward(&inputs, false)?;
        let transformer_ms = ms(t0);
        let t0 = Instant::now();
        let hs = &out.hs.data;

        // att = S hs^T; opt = S * att, (s, s, c) NHWC.
        let opt: Vec<f32> = out
            .search_feat
            .data
            .chunks_exact(c)
            .flat_map(|row| {
                let att: f64 = row.iter().zip(hs).map(|(&a, &b)| a as f64 * b as f64).sum();
                row.iter().map(move |&v| (v as f64 * att) as f32)
            })
            .collect();
        let opt = Activation {
            height: s,
            width: s,
            channels: c,
            data: opt,
        };
        let crop = self.weights.config.search_crop as f64;
        let (x0, y0) = soft_argmax(&corner_scores(&self.weights.corner_tl, &opt)?, s);
        let (x1, y1) = soft_argmax(&corner_scores(&self.weights.corner_br, &opt)?, s);
        let [x0, y0, x1, y1] = [x0, y0, x1, y1].map(|v| v / crop);
        let pred_box = [(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0];
        let conf_logit = score_logit(&self.weights.score_head, hs);
        Ok(SearchDetail {
            prediction: Prediction {
                pred_box,
                conf_logit,
                resize_factor,
            },
            hs: out.hs,
            transformer_ms,
            heads_ms: ms(t0),
        })
    }

    fn crop(&self, frame: &Frame, target: &BBox, search: bool) -> Result<Crop> {
        let cfg = &self.weights.config;
        let (factor, side) = if search {
            (cfg.search_factor, cfg.search_crop)
        } else {
            (cfg.template_factor, cfg.template_crop)
        };
        sample_target(frame, target, factor, side)
    }
}

impl Network for CpuNetwork {
    fn describe(&self) -> String {
        self.transformer.describe()
    }

    fn device(&self) -> String {
        "cpu".into()
    }

    fn config(&self) -> &TrackerConfig {
        &self.weights.config
    }

    fn init_templates(&mut self, frame: &Frame, target: &BBox) -> Result<()> {
        let (f, _) = self.features(&self.crop(frame, target, false)?, false)?;
        self.set_template(1, f.clone())?;
        self.set_template(0, f)
    }

    fn update_template(&mut self, frame: &Frame, target: &BBox) -> Result<()> {
        let (f, _) = self.features(&self.crop(frame, target, false)?, false)?;
        self.set_template(1, f)
    }

    fn search(&mut self, frame: &Frame, state: &BBox) -> Result<Prediction> {
        let t0 = Instant::now();
        let crop = self.crop(frame, state, true)?;
        let crop_ms = ms(t0);
        let t0 = Instant::now();
        let (f, _) = self.features(&crop, false)?;
        let backbone_ms = ms(t0);
        let d = self.predict(&f, crop.resize_factor)?;
        self.stages = Some(StageTimes {
            crop: crop_ms,
            backbone: backbone_ms,
            transformer: d.transformer_ms,
            heads: d.heads_ms,
        });
        Ok(d.prediction)
    }

    fn stage_times(&self) -> Option<StageTimes> {
        self.stages
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// `relu?(conv(x) + residual)` in NHWC.
fn conv(c: &Conv, x: &Activation, relu: bool, residual: Option<&Activation>) -> Result<Activation> {
    let g = c.geometry(1, x.height, x.width, relu, Layout::Nhwc);
    let data = conv2d(
        &g,
        &x.data,
        &c.weight,
        Some(&c.bias),
        residual.map(|r| r.data.as_slice()),
    )?;
    Ok(Activation {
        height: g.out_height(),
        width: g.out_width(),
        channels: c.out_channels,
        data,
    })
}

/// 3x3 max pool, stride 2, padding 1 (padding never wins: PyTorch pads with -inf).
fn max_pool(x: &Activation) -> Activation {
    let (h, w, c) = (x.height, x.width, x.channels);
    let (oh, ow) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    let mut data = vec![f32::NEG_INFINITY; oh * ow * c];
    for oy in 0..oh {
        for ox in 0..ow {
            let out = &mut data[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
            for y in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                for xx in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                    let src = &x.data[(y * w + xx) * c..(y * w + xx + 1) * c];
                    for (o, &v) in out.iter_mut().zip(src) {
                        *o = o.max(v);
                    }
                }
            }
        }
    }
    Activation {
        height: oh,
        width: ow,
        channels: c,
        data,
    }
}

/// The backbone on a normalised crop: layer3's output, and with `capture` the stem's and
/// every stage's.
fn backbone(
    b: &Backbone,
    x: Activation,
    capture: bool,
) -> Result<(Activation, Option<BackboneStages>)> {
    let stem = conv(&b.stem, &x, true, None)?;
    let mut x = max_pool(&stem);
    let mut layers = Vec::new();
    for stage in &b.stages {
        for block in stage {
            let y = conv(&block.conv1, &x, true, None)?;
            let y = conv(&block.conv2, &y, true, None)?;
            let shortcut = match &block.downsample {
                Some(d) => conv(d, &x, false, None)?,
                None => x,
            };
            x = conv(&block.conv3, &y, true, Some(&shortcut))?;
        }
        if capture {
            layers.push(x.clone());
        }
    }
    Ok((x, capture.then_some(BackboneStages { stem, layers })))
}

/// One corner branch's score map, `side x side`.
fn corner_scores(branch: &CornerBranch, x: &Activation) -> Result<Vec<f32>> {
    let mut y = conv(&branch.convs[0], x, true, None)?;
    for c in &branch.convs[1..] {
        y = conv(c, &y, true, None)?;
    }
    Ok(conv(&branch.score, &y, false, None)?.data)
}

/// The expected corner of a score map in crop pixels: `softmax(scores)` over the cells,
/// each cell at `(16 col, 16 row)` (no half-cell offset).
fn soft_argmax(scores: &[f32], side: usize) -> (f64, f64) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = scores.iter().map(|&s| (s as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    let stride = FEATURE_STRIDE as f64;
    let (mut x, mut y) = (0.0, 0.0);
    for (i, p) in e.iter().enumerate() {
        x += p * stride * (i % side) as f64;
        y += p * stride * (i / side) as f64;
    }
    (x / sum, y / sum)
}

/// The score head on `hs`: linear layers with ReLU between them; the last gives the logit.
fn score_logit(layers: &[Linear], hs: &[f32]) -> f64 {
    let mut x = hs.to_vec();
    for (i, l) in layers.iter().enumerate() {
        let (m, k) = (l.out_features(), l.in_features());
        x = linear(&x, &l.weight.data, &l.bias.data, (1, m, k));
        if i + 1 < layers.len() {
            x.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
    x[0] as f64
}
