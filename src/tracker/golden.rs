//! Checking the tracker against a golden file of the original's (format
//! `cswintt-tracker`): one line per `expected.*` tensor.
//!
//! - Crops are ours, from the golden's frames and states, and may differ from the
//!   original's by one grey level (OpenCV builds round differently); pixel masks, feature
//!   masks, resize factors and template-update decisions must be exact.
//! - Everything downstream of a crop is computed from the golden's own crop (and the
//!   golden's states, teacher-forced as the golden was made), so a grey level in a crop
//!   does not blur the comparison of the network.
//! - Other tensors are held to a relative error `||ours - expected||_F / ||expected||_F`
//!   of `max(floor, 4 x the original's own f32 error)` for their family (metadata
//!   `f32_vs_f64_max_rel_err`), `floor` being the engine's tolerance (1e-5 in f32).
//! - The free-running states (`expected.free.frame.t.state`, the tracker left to itself
//!   from the first box, our own crops included) within 0.1 px.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::crop::Crop;
use super::frame::{BBox, Frame};
use super::posenc::PositionCache;
use super::track::{
    CLIP_MARGIN, CropKind, DEFAULT_UPDATE_INTERVAL, Features, Network, Tracker, UPDATE_CONFIDENCE,
    map_back, sigmoid,
};
use super::weights::FORMAT;
use crate::base::{Precision, TensorFile};
use crate::error::{Error, Result};

/// Grey levels a crop may differ by.
pub const CROP_GREY_LEVELS: f64 = 1.0;

/// Pixels a free-running state may differ by, in f32.
pub const FREE_STATE_PX: f64 = 0.1;

/// The same for tensor-core precisions: the chain feeds each box into the next crop, whose
/// size comes from `ceil`, so a few thousandths in the corners (tf32) or a few hundredths
/// (bf16) move later states by up to a few pixels.
pub const FREE_STATE_PX_TF32: f64 = 1.0;
pub const FREE_STATE_PX_BF16: f64 = 5.0;

/// Multiple of the original's own f32 error a family is held to.
pub const F32_ERROR_MULTIPLE: f64 = 4.0;

/// How a tensor was compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// `||ours - expected||_F / ||expected||_F`.
    RelErr,
    /// The largest difference in grey levels.
    GreyLevels,
    /// The number of values that differ (must be 0).
    Mismatches,
    /// The largest absolute difference in pixels.
    AbsPx,
}

/// One compared tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckLine {
    pub name: String,
    pub measure: Measure,
    /// The measured difference; infinite when the shapes differ.
    pub value: f64,
    pub tolerance: f64,
    /// Values compared.
    pub values: usize,
    /// For crops: how many values differ at all.
    pub differing: usize,
    pub ok: bool,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub golden: String,
    /// The engine that ran, as it describes itself.
    pub engine: String,
    pub lines: Vec<CheckLine>,
    /// `expected.*` tensors not compared (frames past the limit), by name.
    pub skipped: Vec<String>,
    /// Frames tracked, teacher-forced and free-running each.
    pub frames: usize,
}

impl CheckReport {
    pub fn failed(&self) -> usize {
        self.lines.iter().filter(|l| !l.ok).count()
    }

    pub fn passed(&self) -> bool {
        self.failed() == 0
    }
}

/// What to check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckOptions {
    /// The relative-error tolerance of the engine (1e-5 in f32); each family's is at least
    /// this.
    pub floor: f64,
    /// Pixels a free-running state may differ by.
    pub free_px: f64,
    /// Track at most this many frames after the first (all when `None`).
    pub frames: Option<usize>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions::for_precision(Precision::F32)
    }
}

impl CheckOptions {
    /// The tolerances of an engine computing in `precision`: its relative-error floor
    /// (`Precision::tolerance`) and its free-running pixels.
    pub fn for_precision(precision: Precision) -> CheckOptions {
        CheckOptions {
            floor: precision.tolerance(),
            free_px: match precision {
                Precision::F32 => FREE_STATE_PX,
                Precision::Tf32 => FREE_STATE_PX_TF32,
                Precision::Bf16 => FREE_STATE_PX_BF16,
            },
            frames: None,
        }
    }
}

/// The golden file's tensors, read as needed, and the tolerances from its metadata.
struct Golden {
    file: TensorFile,
    families: BTreeMap<String, f64>,
    floor: f64,
    free_px: f64,
    lines: Vec<CheckLine>,
    seen: BTreeSet<String>,
}

impl Golden {
    fn open(path: &Path, floor: f64, free_px: f64) -> Result<Golden> {
        let file = TensorFile::open(path)?;
        match file.meta_value("format") {
            Some(FORMAT) => {}
            other => {
                return Err(Error::invalid(
                    file.meta_context("format"),
                    format!(
                        "expected '{FORMAT}' (a tracker golden file), found {}",
                        other.map_or("none".into(), |f| format!("'{f}'"))
                    ),
                ));
            }
        }
        let families = match file.meta_value("f32_vs_f64_max_rel_err") {
            None => BTreeMap::new(),
            Some(v) => serde_json::from_str::<BTreeMap<String, f64>>(v).map_err(|e| {
                Error::invalid(
                    file.meta_context("f32_vs_f64_max_rel_err"),
                    format!("expected a JSON object of numbers: {e}"),
                )
            })?,
        };
        Ok(Golden {
            file,
            families,
            floor,
            free_px,
            lines: Vec::new(),
            seen: BTreeSet::new(),
        })
    }

    fn f64(&self, name: &str, len: usize) -> Result<Vec<f64>> {
        let (shape, data) = self.file.f64(name)?;
        if data.len() != len {
            return Err(Error::invalid(
                self.file.context(name),
                format!("expected {len} values, found shape {shape:?}"),
            ));
        }
        Ok(data)
    }

    fn bbox(&self, name: &str) -> Result<BBox> {
        let v = self.f64(name, 4)?;
        Ok(BBox::new(v[0], v[1], v[2], v[3]))
    }

    fn u8(&self, name: &str, len: usize) -> Result<Vec<u8>> {
        let (shape, data) = self.file.u8(name)?;
        if data.len() != len {
            return Err(Error::invalid(
                self.file.context(name),
                format!("expected {len} values, found shape {shape:?}"),
            ));
        }
        Ok(data)
    }

    /// The family tolerance of `name`: `max(floor, 4 x the original's f32 error)`.
    fn tolerance(&self, name: &str) -> f64 {
        let stem = name.rsplit('.').next().unwrap_or(name);
        let family = match name.find("backbone.") {
            Some(i) => name[i..].to_string(),
            None => stem.to_string(),
        };
        let own = self.families.get(&family).copied().unwrap_or(0.0);
        self.floor.max(F32_ERROR_MULTIPLE * own)
    }

    fn push(
        &mut self,
        name: &str,
        measure: Measure,
        value: f64,
        tolerance: f64,
        values: usize,
        differing: usize,
    ) {
        self.seen.insert(name.to_string());
        self.lines.push(CheckLine {
            name: name.to_string(),
            measure,
            value,
            tolerance,
            values,
            differing,
            ok: value <= tolerance,
        });
    }

    /// Relative error against tensor `name` (any float dtype; the same number of values).
    fn rel(&mut self, name: &str, ours: &[f64]) -> Result<()> {
        let (_, want) = self.file.f64(name)?;
        let err = if want.len() != ours.len() || ours.iter().any(|v| !v.is_finite()) {
            f64::INFINITY
        } else {
            let diff = ours
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt();
            let norm = want.iter().map(|b| b * b).sum::<f64>().sqrt();
            if norm > 0.0 { diff / norm } else { diff }
        };
        let tol = self.tolerance(name);
        self.push(name, Measure::RelErr, err, tol, want.len(), 0);
        Ok(())
    }

    fn rel32(&mut self, name: &str, ours: &[f32]) -> Result<()> {
        self.rel(name, &ours.iter().map(|&v| v as f64).collect::<Vec<_>>())
    }

    fn exact(&mut self, name: &str, ours: &[u8]) -> Result<()> {
        let (_, want) = self.file.u8(name)?;
        let bad = if want.len() == ours.len() {
            ours.iter().zip(&want).filter(|(a, b)| a != b).count()
        } else {
            want.len().max(1)
        };
        self.push(name, Measure::Mismatches, bad as f64, 0.0, want.len(), bad);
        Ok(())
    }

    fn exact_f64(&mut self, name: &str, ours: f64) -> Result<()> {
        let want = self.f64(name, 1)?[0];
        let bad = usize::from(ours != want);
        self.push(name, Measure::Mismatches, bad as f64, 0.0, 1, bad);
        Ok(())
    }

    fn grey(&mut self, name: &str, ours: &[u8]) -> Result<()> {
        let (_, want) = self.file.u8(name)?;
        let (max, differing) = if want.len() == ours.len() {
            let d: Vec<u8> = ours
                .iter()
                .zip(&want)
                .map(|(a, b)| a.abs_diff(*b))
                .collect();
            (
                d.iter().copied().max().unwrap_or(0) as f64,
                d.iter().filter(|&&x| x != 0).count(),
            )
        } else {
            (f64::INFINITY, want.len())
        };
        self.push(
            name,
            Measure::GreyLevels,
            max,
            CROP_GREY_LEVELS,
            want.len(),
            differing,
        );
        Ok(())
    }

    fn px(&mut self, name: &str, ours: &BBox) -> Result<()> {
        let want = self.bbox(name)?;
        let err = ours
            .to_array()
            .iter()
            .zip(want.to_array())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        self.push(
            name,
            Measure::AbsPx,
            if err.is_nan() { f64::INFINITY } else { err },
            self.free_px,
            4,
            0,
        );
        Ok(())
    }

    fn flag(&mut self, name: &str, ours: bool) -> Result<()> {
        self.exact(name, &[u8::from(ours)])
    }
}

/// Runs the golden file's frames through `net` (any engine, by its crop-level stages for the
/// teacher-forced frames, then as a [`Tracker`] left to itself) and compares every
/// `expected.*` tensor (see the module docs).
pub fn check_golden(
    path: &Path,
    mut net: Box<dyn Network>,
    options: CheckOptions,
) -> Result<CheckReport> {
    let mut g = Golden::open(path, options.floor, options.free_px)?;
    let (shape, data) = g.file.u8("input.frames")?;
    let [n, h, w, 3] = shape[..] else {
        return Err(Error::invalid(
            g.file.context("input.frames"),
            format!("expected shape [frames, height, width, 3], found {shape:?}"),
        ));
    };
    if n == 0 || h == 0 || w == 0 {
        return Err(Error::invalid(
            g.file.context("input.frames"),
            format!("holds no frame of at least one pixel (shape {shape:?})"),
        ));
    }
    let frames: Vec<Frame> = data
        .chunks_exact(h * w * 3)
        .map(|f| Frame::new(h, w, f.to_vec()))
        .collect::<Result<_>>()?;
    let interval = match g.file.meta_value("update_interval") {
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::invalid(
                    g.file.meta_context("update_interval"),
                    format!("expected a positive integer, found '{v}'"),
                )
            })?,
        None => net
            .config()
            .update_interval
            .unwrap_or(DEFAULT_UPDATE_INTERVAL),
    };
    let tracked = options.frames.map_or(n - 1, |m| m.min(n - 1));
    let cfg = net.config().clone();
    let init = g.bbox("input.init.box")?;
    let mut positions = PositionCache::default();

    // The first frame's template: our crop against the golden's, then everything from its.
    let (tc, sc) = (cfg.template_crop, cfg.search_crop);
    let ours = net.crop(&frames[0], &init, CropKind::Template)?;
    g.grey("input.init.template.crop", &ours.pixels)?;
    g.exact("input.init.template.mask", &ours.mask)?;
    let golden_crop = Crop {
        side: tc,
        pixels: g.u8("input.init.template.crop", tc * tc * 3)?,
        mask: g
            .u8("input.init.template.mask", tc * tc)?
            .iter()
            .map(|&m| u8::from(m != 0))
            .collect(),
        resize_factor: ours.resize_factor,
    };
    let (feat, stages) = net.features(&golden_crop, true)?;
    if let Some(st) = stages {
        g.rel32(
            "expected.init.template.backbone.stem",
            &st.stem.to_nchw().data,
        )?;
        for (i, l) in st.layers.iter().enumerate() {
            g.rel32(
                &format!("expected.init.template.backbone.layer{}", i + 1),
                &l.to_nchw().data,
            )?;
        }
    }
    template_lines(&mut g, &mut positions, "expected.init.template", &feat)?;
    net.set_template(0, &feat)?;
    net.set_template(1, &feat)?;

    // Teacher-forced frames.
    for (t, frame) in frames.iter().enumerate().take(tracked + 1).skip(1) {
        let p = format!("expected.frame.{t}");
        let state_in = g.bbox(&format!("input.frame.{t}.state_in"))?;
        let ours = net.crop(frame, &state_in, CropKind::Search)?;
        g.grey(&format!("{p}.search.crop"), &ours.pixels)?;
        g.exact(&format!("{p}.search.amask"), &ours.mask)?;
        g.exact_f64(&format!("{p}.search.resize_factor"), ours.resize_factor)?;
        let golden_crop = Crop {
            side: sc,
            pixels: g.u8(&format!("{p}.search.crop"), sc * sc * 3)?,
            mask: g
                .u8(&format!("{p}.search.amask"), sc * sc)?
                .iter()
                .map(|&m| u8::from(m != 0))
                .collect(),
            resize_factor: g.f64(&format!("{p}.search.resize_factor"), 1)?[0],
        };
        let (feat, _) = net.features(&golden_crop, false)?;
        g.rel32(&format!("{p}.search.feat"), &feat.feat)?;
        g.exact(&format!("{p}.search.mask"), &feat.mask)?;
        let pos = position_encoding(&mut positions, &feat);
        g.rel32(&format!("{p}.search.pos"), &pos)?;
        let detail = net.predict(&feat, golden_crop.resize_factor)?;
        g.rel32(&format!("{p}.hs"), &detail.hs.data)?;
        let pred = detail.prediction;
        g.rel(&format!("{p}.pred_box"), &pred.pred_box)?;
        g.rel(&format!("{p}.conf_logit"), &[pred.conf_logit])?;
        let unclipped = map_back(&pred, &state_in, sc as f64);
        g.rel(&format!("{p}.box"), &unclipped.to_array())?;
        g.rel(
            &format!("{p}.state"),
            &unclipped.clip(w, h, CLIP_MARGIN).to_array(),
        )?;
        let updated = t.is_multiple_of(interval) && sigmoid(pred.conf_logit) > UPDATE_CONFIDENCE;
        g.flag(&format!("{p}.template_updated"), updated)?;
        // Follow the golden's decision and state, so that later frames stay comparable.
        if g.u8(&format!("{p}.template_updated"), 1)?[0] != 0 {
            let state = g.bbox(&format!("{p}.state"))?;
            let ours = net.crop(frame, &state, CropKind::Template)?;
            g.grey(&format!("{p}.template.crop"), &ours.pixels)?;
            let golden_crop = Crop {
                pixels: g.u8(&format!("{p}.template.crop"), tc * tc * 3)?,
                ..ours
            };
            let (feat, _) = net.features(&golden_crop, false)?;
            template_lines(&mut g, &mut positions, &format!("{p}.template"), &feat)?;
            net.set_template(1, &feat)?;
        }
    }

    // Free-running from the first box, on our own crops.
    let mut tracker = Tracker::new(net, interval)?;
    tracker.initialise(&frames[0], init)?;
    for (t, frame) in frames.iter().enumerate().take(tracked + 1).skip(1) {
        let r = tracker.track(frame)?;
        g.px(&format!("expected.free.frame.{t}.state"), &r.bbox)?;
        g.flag(
            &format!("expected.free.frame.{t}.template_updated"),
            r.template_updated,
        )?;
    }

    let skipped = g
        .file
        .names()
        .into_iter()
        .filter(|n| n.starts_with("expected.") && !g.seen.contains(n))
        .collect();
    Ok(CheckReport {
        golden: path.display().to_string(),
        engine: tracker.network().describe(),
        lines: g.lines,
        skipped,
        frames: tracked,
    })
}

/// A template's `feat`, `pos` and `mask` lines.
fn template_lines(
    g: &mut Golden,
    positions: &mut PositionCache,
    prefix: &str,
    feat: &Features,
) -> Result<()> {
    g.rel32(&format!("{prefix}.feat"), &feat.feat)?;
    g.exact(&format!("{prefix}.mask"), &feat.mask)?;
    let pos = position_encoding(positions, feat);
    g.rel32(&format!("{prefix}.pos"), &pos)
}

/// The positional encoding of a crop's feature mask (`(side, side, d_model)`). The
/// transformer does not read it; the golden files record it, so it is checked, from the
/// host's cache, for every engine.
fn position_encoding(positions: &mut PositionCache, feat: &Features) -> Arc<Vec<f32>> {
    let c = feat.feat.len() / (feat.side * feat.side).max(1);
    positions.get(&feat.mask, feat.side, c)
}
