//! The CPU reference of the tracker's network: normalise, backbone, bottleneck, feature
//! mask and positional encoding, the transformer's CPU reference, the corner and score
//! heads, soft-argmax. f32 storage with f64 accumulation, like the transformer's; the
//! activations are NHWC (`(side, side, channels)`: token-major, as the transformer takes
//! them).

use std::sync::Arc;
use std::time::Instant;

use super::crop::{Crop, sample_target};
use super::frame::{BBox, Frame};
use super::track::{
    Activation, BackboneStages, CropKind, Features, Network, Prediction, SearchDetail, StageTimes,
    corners_to_box,
};
use super::weights::{Backbone, Conv, CornerBranch, FEATURE_STRIDE, TrackerConfig, TrackerWeights};
use crate::base::Tensor;
use crate::cswintt::cpu::CpuReference;
use crate::cswintt::{Backend, Inputs};
use crate::error::{Error, Result};
use crate::kernels::conv2d::cpu::{Layout, conv2d};
use crate::kernels::elementwise::cpu::scale_by_dot;
use crate::kernels::linear::cpu::linear;
use crate::kernels::pool::Pool2d;
use crate::kernels::soft_argmax::cpu::soft_argmax;
use crate::model::weights::Linear;

/// The CPU reference network, holding the two templates' features.
pub struct CpuNetwork {
    weights: Arc<TrackerWeights>,
    transformer: CpuReference,
    templates: [Option<Features>; 2],
    stages: Option<StageTimes>,
}

impl CpuNetwork {
    pub fn new(weights: Arc<TrackerWeights>) -> Result<CpuNetwork> {
        let transformer = CpuReference::new(weights.transformer.clone())?;
        Ok(CpuNetwork {
            weights,
            transformer,
            templates: [None, None],
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
        let opt = scale_by_dot(&out.search_feat.data, hs);
        let opt = Activation {
            height: s,
            width: s,
            channels: c,
            data: opt,
        };
        let crop = self.weights.config.search_crop as f64;
        let stride = FEATURE_STRIDE as f64;
        let (x0, y0) = soft_argmax(&corner_scores(&self.weights.corner_tl, &opt)?, s, stride);
        let (x1, y1) = soft_argmax(&corner_scores(&self.weights.corner_br, &opt)?, s, stride);
        let pred_box = corners_to_box([x0, y0, x1, y1], crop);
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

    fn crop(&mut self, frame: &Frame, target: &BBox, kind: CropKind) -> Result<Crop> {
        let (factor, side) = kind.geometry(&self.weights.config);
        sample_target(frame, target, factor, side)
    }

    fn features(
        &mut self,
        crop: &Crop,
        stages: bool,
    ) -> Result<(Features, Option<BackboneStages>)> {
        CpuNetwork::features(self, crop, stages)
    }

    fn set_template(&mut self, slot: usize, features: &Features) -> Result<()> {
        CpuNetwork::set_template(self, slot, features.clone())
    }

    fn predict(&mut self, search: &Features, resize_factor: f64) -> Result<SearchDetail> {
        CpuNetwork::predict(self, search, resize_factor)
    }

    fn init_templates(&mut self, frame: &Frame, target: &BBox) -> Result<()> {
        let crop = Network::crop(self, frame, target, CropKind::Template)?;
        let (f, _) = CpuNetwork::features(self, &crop, false)?;
        CpuNetwork::set_template(self, 1, f.clone())?;
        CpuNetwork::set_template(self, 0, f)
    }

    fn update_template(&mut self, frame: &Frame, target: &BBox) -> Result<()> {
        let crop = Network::crop(self, frame, target, CropKind::Template)?;
        let (f, _) = CpuNetwork::features(self, &crop, false)?;
        CpuNetwork::set_template(self, 1, f)
    }

    fn search(&mut self, frame: &Frame, state: &BBox) -> Result<Prediction> {
        let t0 = Instant::now();
        let crop = Network::crop(self, frame, state, CropKind::Search)?;
        let crop_ms = ms(t0);
        let t0 = Instant::now();
        let (f, _) = CpuNetwork::features(self, &crop, false)?;
        let backbone_ms = ms(t0);
        let d = CpuNetwork::predict(self, &f, crop.resize_factor)?;
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

/// 3x3 max pool, stride 2, padding 1 (the max_pool op's reference).
fn max_pool(x: &Activation) -> Result<Activation> {
    let pool = Pool2d {
        batch: 1,
        channels: x.channels,
        height: x.height,
        width: x.width,
        kernel: 3,
        stride: 2,
        pad: 1,
    };
    let [oh, ow] = pool.out_size();
    let (data, _) = crate::kernels::max_pool::cpu::max_pool(&pool, &x.data)?;
    Ok(Activation {
        height: oh,
        width: ow,
        channels: x.channels,
        data,
    })
}

/// The backbone on a normalised crop: layer3's output, and with `capture` the stem's and
/// every stage's.
fn backbone(
    b: &Backbone,
    x: Activation,
    capture: bool,
) -> Result<(Activation, Option<BackboneStages>)> {
    let stem = conv(&b.stem, &x, true, None)?;
    let mut x = max_pool(&stem)?;
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
