//! One-pass evaluation as pytracking's analysis computes it (`extract_results.py`):
//!
//! - success: the fraction of frames whose IoU with the ground truth exceeds each threshold
//!   0, 0.05, ..., 1 (21 thresholds); its mean over the thresholds is the success AUC;
//! - precision: the fraction of frames whose centre lies within 20 pixels of the ground
//!   truth's;
//! - normalised precision: the same with each centre divided by the ground-truth box's
//!   width and height, within 0.2.
//!
//! Boxes use pytracking's pixel convention: a box covers pixels `x .. x + w - 1`, so its
//! centre is `x + (w - 1) / 2` and IoU counts inclusive pixel spans.
//!
//! Which frames count: every frame whose ground truth holds the target (finite, positive
//! width and height), the first frame included (its prediction is the initial box, as
//! pytracking sets it). Frames without the target (NaN or non-positive sizes, as LaSOT and
//! UAV123 mark them) are left out of both numerator and denominator (pytracking's
//! `exclude_invalid_frames=True`). Several sequences: every curve is the mean of the
//! sequences' curves, as pytracking averages them.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::frame::BBox;
use crate::error::{Error, Result};

/// IoU thresholds of the success curve: 0 to 1 in steps of 0.05.
pub const SUCCESS_THRESHOLDS: usize = 21;

/// Centre distance (pixels) of the precision score.
pub const PRECISION_PX: f64 = 20.0;

/// Normalised centre distance of the normalised precision score.
pub const NORM_PRECISION: f64 = 0.2;

/// One sequence's (or the mean of several) scores, as fractions in `[0, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Frames that counted (for a mean: the sum over the sequences).
    pub frames: usize,
    /// Success rate at each IoU threshold `0.05 k`.
    pub success: Vec<f64>,
    /// The mean of `success`: the success AUC.
    pub auc: f64,
    /// Fraction within 20 pixels.
    pub precision: f64,
    /// Fraction within 0.2 of the box size.
    pub norm_precision: f64,
    /// Mean IoU.
    pub mean_iou: f64,
}

/// pytracking's IoU: inclusive pixel spans.
pub fn iou(a: &BBox, b: &BBox) -> f64 {
    let span = |a0: f64, aw: f64, b0: f64, bw: f64| {
        ((a0 + aw - 1.0).min(b0 + bw - 1.0) - a0.max(b0) + 1.0).max(0.0)
    };
    let inter = span(a.x, a.w, b.x, b.w) * span(a.y, a.h, b.y, b.h);
    inter / (a.w * a.h + b.w * b.h - inter)
}

fn center(b: &BBox) -> (f64, f64) {
    (b.x + 0.5 * (b.w - 1.0), b.y + 0.5 * (b.h - 1.0))
}

/// Scores of `predicted` (one box per frame, the first the initial box) against
/// `truth` (`None` where the target is absent). `None` when no frame counts.
pub fn evaluate(predicted: &[BBox], truth: &[Option<BBox>]) -> Option<Metrics> {
    let mut ious = Vec::new();
    let (mut near, mut near_norm) = (0usize, 0usize);
    for (p, t) in predicted.iter().zip(truth) {
        let Some(t) = t else { continue };
        ious.push(iou(p, t));
        let ((px, py), (tx, ty)) = (center(p), center(t));
        near += usize::from(((px - tx).powi(2) + (py - ty).powi(2)).sqrt() <= PRECISION_PX);
        let d = ((px / t.w - tx / t.w).powi(2) + (py / t.h - ty / t.h).powi(2)).sqrt();
        near_norm += usize::from(d <= NORM_PRECISION);
    }
    let n = ious.len();
    if n == 0 {
        return None;
    }
    let success: Vec<f64> = (0..SUCCESS_THRESHOLDS)
        .map(|k| {
            let thr = k as f64 * 0.05;
            ious.iter().filter(|&&v| v > thr).count() as f64 / n as f64
        })
        .collect();
    Some(Metrics {
        frames: n,
        auc: success.iter().sum::<f64>() / SUCCESS_THRESHOLDS as f64,
        success,
        precision: near as f64 / n as f64,
        norm_precision: near_norm as f64 / n as f64,
        mean_iou: ious.iter().sum::<f64>() / n as f64,
    })
}

/// The mean over sequences (each sequence weighs the same, as in pytracking).
pub fn mean(all: &[Metrics]) -> Option<Metrics> {
    let n = all.len();
    if n == 0 {
        return None;
    }
    let avg = |f: fn(&Metrics) -> f64| all.iter().map(f).sum::<f64>() / n as f64;
    let success: Vec<f64> = (0..SUCCESS_THRESHOLDS)
        .map(|k| all.iter().map(|m| m.success[k]).sum::<f64>() / n as f64)
        .collect();
    Some(Metrics {
        frames: all.iter().map(|m| m.frames).sum(),
        auc: success.iter().sum::<f64>() / SUCCESS_THRESHOLDS as f64,
        success,
        precision: avg(|m| m.precision),
        norm_precision: avg(|m| m.norm_precision),
        mean_iou: avg(|m| m.mean_iou),
    })
}

/// Draws the success plot (success rate against the IoU threshold) as SVG: one curve per
/// `(label, metrics)`, the AUC in each label.
pub fn success_plot(path: &Path, curves: &[(String, &Metrics)]) -> Result<()> {
    let fail = |e: String| Error::invalid(format!("--plot {}", path.display()), e);
    let root = SVGBackend::new(path, (720, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Success plot (one-pass evaluation)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0f64..1.0, 0.0f64..1.0)
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("overlap threshold (IoU)")
        .y_desc("success rate")
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    for (i, (label, m)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = m
            .success
            .iter()
            .enumerate()
            .map(|(k, &s)| (k as f64 * 0.05, s));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| fail(e.to_string()))?
            .label(format!("{label} [AUC {:.1}]", 100.0 * m.auc))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytracking_pixel_convention() {
        let a = BBox::new(0.0, 0.0, 10.0, 10.0);
        assert_eq!(iou(&a, &a), 1.0);
        // Overlap columns 5..9 (5 pixels) of 10: 50 / (100 + 100 - 50).
        let b = BBox::new(5.0, 0.0, 10.0, 10.0);
        assert!((iou(&a, &b) - 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(iou(&a, &BBox::new(10.0, 0.0, 10.0, 10.0)), 0.0);
    }

    #[test]
    fn scores_and_absent_frames() {
        let t = BBox::new(10.0, 10.0, 20.0, 20.0);
        let pred = [
            t,
            BBox::new(15.0, 10.0, 20.0, 20.0),
            BBox::new(100.0, 100.0, 20.0, 20.0),
            t,
        ];
        let truth = [Some(t), Some(t), Some(t), None];
        let m = evaluate(&pred, &truth).unwrap();
        assert_eq!(m.frames, 3);
        // IoUs 1, 300/500 = 0.6, 0: above 0 for two frames, above 0.6 for one.
        assert!((m.success[0] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.success[12] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.success[20], 0.0);
        // Centres 0, 5 and 127 px away; normalised 0, 0.25, 6.4.
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.norm_precision - 1.0 / 3.0).abs() < 1e-12);
        assert!(evaluate(&pred[3..], &truth[3..]).is_none());
        let avg = mean(&[m.clone(), m.clone()]).unwrap();
        assert_eq!((avg.auc, avg.frames), (m.auc, 6));
    }
}
