//! The tracking loop (spec section 6): initialise on a frame and a box, then one box and a
//! confidence per frame, with the template update. The network behind it is a
//! [`Network`]: the CPU reference ([`super::cpu::CpuNetwork`]) or a GPU engine.

use serde::Serialize;

use super::crop::Crop;
use super::frame::{BBox, Frame};
use super::weights::TrackerConfig;
use crate::base::Tensor;
use crate::error::{Error, Result};
use crate::gpu::Span;

/// Margin of `clip_box`: a state is kept at least this many pixels wide, high and inside.
pub const CLIP_MARGIN: f64 = 10.0;

/// The update interval when neither the model nor the dataset names one.
pub const DEFAULT_UPDATE_INTERVAL: usize = 200;

/// A template is replaced only when the confidence exceeds this.
pub const UPDATE_CONFIDENCE: f64 = 0.5;

/// What the network predicts for one search crop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    /// `(cx, cy, w, h)` in units of the search crop's side (soft-argmax corners / side).
    pub pred_box: [f64; 4],
    /// The score head's logit; the confidence is its sigmoid.
    pub conf_logit: f64,
    /// `search_crop / crop_sz`: crop pixels per frame pixel.
    pub resize_factor: f64,
}

/// Milliseconds the last search spent in each stage, where an engine measures them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimes {
    pub crop: f64,
    pub backbone: f64,
    pub transformer: f64,
    pub heads: f64,
}

impl StageTimes {
    /// The stages as `(name, milliseconds)`, in order.
    pub fn named(&self) -> [(&'static str, f64); 4] {
        [
            ("crop", self.crop),
            ("backbone", self.backbone),
            ("transformer", self.transformer),
            ("heads", self.heads),
        ]
    }
}

/// One operation of a search step timed on its own ([`Network::profile_ops`], `attnrt-infer
/// --ops`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpTiming {
    /// `crop`, `stem`, `layer2.0.conv1`, `transformer`, `corner.1`, ...
    pub name: String,
    /// A convolution's shape and cuDNN's plan for it; empty for other operations.
    pub detail: String,
    /// A convolution's forward algorithms as cuDNN's benchmark timed them when planning,
    /// fastest first, and those passed over; empty for other operations.
    pub candidates: String,
    /// Floating-point operations (multiply-adds times two) of a convolution; 0 for others.
    pub flops: f64,
    /// GPU microseconds per call: the calls captured into one CUDA graph, one replay timed
    /// by CUDA events (what a step replayed as a graph pays).
    pub graph_us: f64,
    /// Host microseconds to queue one call eagerly (not waited for).
    pub host_us: f64,
    /// Wall-clock microseconds per call of eager calls, waited for (what an eager step
    /// pays: the larger of the host's and the GPU's time).
    pub eager_us: f64,
}

/// The stages of `spans` (a traced step's, see [`Network::trace`]): each stage's spans
/// are those named after it or `STAGE/...` (`backbone/layer1`, `heads/score`).
pub fn stage_times(spans: &[Span]) -> StageTimes {
    let ms = |stage: &str| -> f64 {
        spans
            .iter()
            .filter(|s| {
                s.name == stage
                    || s.name
                        .strip_prefix(stage)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .map(|s| s.end_ms - s.start_ms)
            .sum()
    };
    StageTimes {
        crop: ms("crop"),
        backbone: ms("backbone"),
        transformer: ms("transformer"),
        heads: ms("heads"),
    }
}

/// Which crop of a frame: the search region (factor and side `search_*`) or a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CropKind {
    Search,
    Template,
}

impl CropKind {
    /// `(factor, output side)` of this crop under `cfg`.
    pub fn geometry(self, cfg: &TrackerConfig) -> (f64, usize) {
        match self {
            CropKind::Search => (cfg.search_factor, cfg.search_crop),
            CropKind::Template => (cfg.template_factor, cfg.template_crop),
        }
    }
}

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

/// The predicted box `(cx, cy, w, h)` in units of the crop's side from the soft-argmax
/// corners `(x_tl, y_tl, x_br, y_br)` in crop pixels (`w`, `h` may come out negative).
pub fn corners_to_box(corners: [f64; 4], crop_side: f64) -> [f64; 4] {
    let [x0, y0, x1, y1] = corners.map(|v| v / crop_side);
    [(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0]
}

/// The network of a tracker: crops, backbone, transformer and heads. The tracking logic
/// (map back, clip, template updates) is [`Tracker`]'s, the same for every engine.
///
/// Two levels: the tracking step (`init_templates`, `update_template`, `search`: a frame in,
/// a prediction out, as fast as the engine goes) and its stages on given data (`crop`,
/// `features` of a given crop, `set_template`, `predict` on given features), which the
/// golden check feeds the golden's own crops through, the same way for every engine.
pub trait Network {
    /// One line for reports.
    fn describe(&self) -> String;
    /// `"cpu"` or `"cuda:N"`.
    fn device(&self) -> String;
    /// Crop sizes and factors.
    fn config(&self) -> &TrackerConfig;
    /// Crops `frame` around `target` as this engine crops.
    fn crop(&mut self, frame: &Frame, target: &BBox, kind: CropKind) -> Result<Crop>;
    /// Normalise, backbone, bottleneck and feature mask of `crop`; with `stages`, also the
    /// backbone's intermediate outputs.
    fn features(&mut self, crop: &Crop, stages: bool)
    -> Result<(Features, Option<BackboneStages>)>;
    /// Makes `features` template `slot` (0: the first frame's, 1: the dynamic one).
    fn set_template(&mut self, slot: usize, features: &Features) -> Result<()>;
    /// The transformer and the heads on a search crop's features, against the templates.
    fn predict(&mut self, search: &Features, resize_factor: f64) -> Result<SearchDetail>;
    /// Crops the template around `target` and makes it both templates (the first frame).
    fn init_templates(&mut self, frame: &Frame, target: &BBox) -> Result<()>;
    /// Crops a template around `target` and makes it the dynamic template (template 2).
    /// Called with the frame of the search just before it (the tracking loop's order), an
    /// engine may crop the copy of that frame it already holds: the frame must be unchanged.
    fn update_template(&mut self, frame: &Frame, target: &BBox) -> Result<()>;
    /// Crops the search region around `state` and predicts the box in it.
    fn search(&mut self, frame: &Frame, state: &BBox) -> Result<Prediction>;
    /// [`Network::search`], told the frame the next search will be given (see
    /// [`Tracker::track_ahead`]), which an engine may start moving to the device while
    /// this search runs. The prediction is `search`'s.
    fn search_ahead(
        &mut self,
        frame: &Frame,
        state: &BBox,
        next: Option<&Frame>,
    ) -> Result<Prediction> {
        let _ = next;
        self.search(frame, state)
    }
    /// One search of `frame` around `state`, run eagerly and timed: a span per stage
    /// (`crop`, `backbone/stem`, `backbone/layerN`, `backbone/bottleneck`, `transformer`,
    /// `heads/corners`, `heads/score`), for `--trace`. Engines that cannot time their
    /// stages say so.
    fn trace(&mut self, frame: &Frame, state: &BBox) -> Result<Vec<Span>> {
        let _ = (frame, state);
        Err(Error::invalid(
            "--trace",
            format!(
                "needs a GPU engine; {} does not time its stages",
                self.describe()
            ),
        ))
    }
    /// Every operation of one search of `frame` around `state`, each run `reps` times on
    /// its own and timed ([`OpTiming`]), in step order, for `--ops`. The search's results
    /// are discarded. Engines that cannot time their operations say so.
    fn profile_ops(&mut self, frame: &Frame, state: &BBox, reps: usize) -> Result<Vec<OpTiming>> {
        let _ = (frame, state, reps);
        Err(Error::invalid(
            "--ops",
            format!(
                "needs a GPU engine; {} does not time its operations",
                self.describe()
            ),
        ))
    }
    /// The last search's time per stage, when the engine measures it.
    fn stage_times(&self) -> Option<StageTimes> {
        None
    }
    /// Asks for (or stops) measuring every stage of each search. An engine that replays a
    /// whole step as one CUDA graph runs its steps eagerly meanwhile.
    fn set_stage_timing(&mut self, _on: bool) {}
    /// Bytes of device memory in use (the whole device's, as the driver reports it), for an
    /// engine on a GPU.
    fn device_memory(&self) -> Option<usize> {
        None
    }
}

impl<T: Network + ?Sized> Network for Box<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn device(&self) -> String {
        (**self).device()
    }
    fn config(&self) -> &TrackerConfig {
        (**self).config()
    }
    fn crop(&mut self, frame: &Frame, target: &BBox, kind: CropKind) -> Result<Crop> {
        (**self).crop(frame, target, kind)
    }
    fn features(
        &mut self,
        crop: &Crop,
        stages: bool,
    ) -> Result<(Features, Option<BackboneStages>)> {
        (**self).features(crop, stages)
    }
    fn set_template(&mut self, slot: usize, features: &Features) -> Result<()> {
        (**self).set_template(slot, features)
    }
    fn predict(&mut self, search: &Features, resize_factor: f64) -> Result<SearchDetail> {
        (**self).predict(search, resize_factor)
    }
    fn init_templates(&mut self, frame: &Frame, target: &BBox) -> Result<()> {
        (**self).init_templates(frame, target)
    }
    fn update_template(&mut self, frame: &Frame, target: &BBox) -> Result<()> {
        (**self).update_template(frame, target)
    }
    fn search(&mut self, frame: &Frame, state: &BBox) -> Result<Prediction> {
        (**self).search(frame, state)
    }
    fn search_ahead(
        &mut self,
        frame: &Frame,
        state: &BBox,
        next: Option<&Frame>,
    ) -> Result<Prediction> {
        (**self).search_ahead(frame, state, next)
    }
    fn trace(&mut self, frame: &Frame, state: &BBox) -> Result<Vec<Span>> {
        (**self).trace(frame, state)
    }
    fn profile_ops(&mut self, frame: &Frame, state: &BBox, reps: usize) -> Result<Vec<OpTiming>> {
        (**self).profile_ops(frame, state, reps)
    }
    fn stage_times(&self) -> Option<StageTimes> {
        (**self).stage_times()
    }
    fn set_stage_timing(&mut self, on: bool) {
        (**self).set_stage_timing(on)
    }
    fn device_memory(&self) -> Option<usize> {
        (**self).device_memory()
    }
}

/// One tracked frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tracked {
    /// The frame's box: the new state, clipped to the image.
    pub bbox: BBox,
    /// `sigmoid(conf_logit)`.
    pub confidence: f64,
    /// The box mapped back to the frame, before clipping.
    pub unclipped: BBox,
    /// Whether the dynamic template was replaced after this frame.
    pub template_updated: bool,
    pub prediction: Prediction,
}

/// The tracking loop over a [`Network`].
pub struct Tracker<N: Network> {
    net: N,
    update_interval: usize,
    state: Option<BBox>,
    /// Frames tracked since the first (the original's `frame_id`).
    frame_id: usize,
    /// `(width, height)` of the first frame; every later frame must match.
    size: (usize, usize),
}

impl<N: Network> Tracker<N> {
    /// A tracker that replaces the dynamic template every `update_interval` frames (when
    /// confident).
    pub fn new(net: N, update_interval: usize) -> Result<Tracker<N>> {
        if update_interval == 0 {
            return Err(Error::invalid("--update-interval", "must be at least 1"));
        }
        Ok(Tracker {
            net,
            update_interval,
            state: None,
            frame_id: 0,
            size: (0, 0),
        })
    }

    pub fn network(&self) -> &N {
        &self.net
    }

    pub fn network_mut(&mut self) -> &mut N {
        &mut self.net
    }

    /// The network back, for another sequence.
    pub fn into_network(self) -> N {
        self.net
    }

    pub fn update_interval(&self) -> usize {
        self.update_interval
    }

    /// The current state (the last frame's box), once initialised.
    pub fn state(&self) -> Option<BBox> {
        self.state
    }

    /// Frames tracked since [`Tracker::initialise`].
    pub fn frame_id(&self) -> usize {
        self.frame_id
    }

    /// Starts on `frame` with the target at `target`: both templates from it, state =
    /// `target`, frame count 0. The box must be valid and overlap the image.
    pub fn initialise(&mut self, frame: &Frame, target: BBox) -> Result<()> {
        target.check_initial(frame.width, frame.height, "initial box")?;
        self.net.init_templates(frame, &target)?;
        self.state = Some(target);
        self.frame_id = 0;
        self.size = (frame.width, frame.height);
        Ok(())
    }

    /// Sets the state the next frame's search is centred on (teacher forcing: the tests
    /// follow the golden files' states this way).
    pub fn set_state(&mut self, state: BBox) {
        self.state = Some(state);
    }

    /// Tracks the next frame: search around the state, map the prediction back to the
    /// frame, clip it, and replace the dynamic template when due and confident.
    pub fn track(&mut self, frame: &Frame) -> Result<Tracked> {
        self.track_ahead(frame, None)
    }

    /// [`Tracker::track`], told the frame that comes next: the network may copy `next`
    /// toward the device while this frame's step runs (the GPU network copies it into
    /// page-locked memory and queues its upload), taking that copy off the next step's
    /// critical path. The results are `track`'s. `next` must be the frame of the next call,
    /// unchanged: the network knows it again by its address and size only, so a different
    /// frame at the same address (one mutated in place, or a new one where the old one was
    /// freed) would be tracked as the staged one. A loop that moves each frame from `next`
    /// to the next call, as `attnrt-infer` does, keeps that.
    pub fn track_ahead(&mut self, frame: &Frame, next: Option<&Frame>) -> Result<Tracked> {
        let state = self
            .state
            .ok_or_else(|| Error::invalid("tracker", "track() before initialise()"))?;
        if (frame.width, frame.height) != self.size {
            return Err(Error::invalid(
                "frame",
                format!(
                    "{}x{}, but the sequence started with {}x{} frames; every frame of a \
                     sequence must have the same size",
                    frame.width, frame.height, self.size.0, self.size.1
                ),
            ));
        }
        self.frame_id += 1;
        let prediction = self.net.search_ahead(frame, &state, next)?;
        let crop = self.net.config().search_crop as f64;
        let unclipped = map_back(&prediction, &state, crop);
        let bbox = unclipped.clip(frame.width, frame.height, CLIP_MARGIN);
        self.state = Some(bbox);
        let confidence = sigmoid(prediction.conf_logit);
        let template_updated =
            self.frame_id.is_multiple_of(self.update_interval) && confidence > UPDATE_CONFIDENCE;
        if template_updated {
            self.net.update_template(frame, &bbox)?;
        }
        Ok(Tracked {
            bbox,
            confidence,
            unclipped,
            template_updated,
            prediction,
        })
    }
}

/// `1 / (1 + e^-x)`.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The prediction in frame pixels (spec tracking steps 3-4): `(cx, cy, w, h) * crop / r`,
/// offset by the search region's corner `state centre - crop / (2 r)`.
pub fn map_back(p: &Prediction, state: &BBox, search_crop: f64) -> BBox {
    let r = p.resize_factor;
    let [cx, cy, w, h] = p.pred_box.map(|v| v * search_crop / r);
    let (cx_prev, cy_prev) = state.center();
    let half = 0.5 * search_crop / r;
    let (cx_real, cy_real) = (cx + (cx_prev - half), cy + (cy_prev - half));
    BBox::new(cx_real - 0.5 * w, cy_real - 0.5 * h, w, h)
}
