//! Timelines from [`crate::gpu::EventTimer`] spans: a Chrome-trace (Perfetto) JSON, and the
//! overlap of the per-head attention spans, the evidence that `streams` mode runs heads
//! at the same time.

use std::fmt;

use serde_json::{Value, json};

use crate::gpu::Span;

/// The spans as a Chrome trace: one complete (`"ph": "X"`) event per span, times in
/// microseconds, `tid` = lane (0 = main stream, `h + 1` = head `h`'s stream).
pub fn chrome_trace(spans: &[Span]) -> Value {
    let events: Vec<Value> = spans
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "ph": "X",
                "ts": s.start_ms * 1e3,
                "dur": (s.end_ms - s.start_ms) * 1e3,
                "pid": 0,
                "tid": s.lane,
            })
        })
        .collect();
    json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}

/// How much the head spans of the attention stages overlap.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Overlap {
    /// Sum of the head spans' durations, ms.
    pub busy_ms: f64,
    /// Length of the union of the head spans (time with at least one head running), ms.
    pub union_ms: f64,
    /// The most head spans running at one instant.
    pub max_concurrent: usize,
}

/// The figure in words: how long head kernels ran in total against the time any ran.
impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.max_concurrent == 0 {
            return f
                .write_str("no per-head spans (fused mode: one launch per layer runs every head)");
        }
        write!(
            f,
            "head kernels busy {:.3} ms within {:.3} ms: concurrency {:.2}, up to {} at once",
            self.busy_ms,
            self.union_ms,
            self.concurrency(),
            self.max_concurrent
        )
    }
}

impl Overlap {
    /// `busy / union`: 1.0 when heads never overlap, up to the head count when all do.
    pub fn concurrency(&self) -> f64 {
        if self.union_ms > 0.0 {
            self.busy_ms / self.union_ms
        } else {
            0.0
        }
    }
}

/// The overlap of the spans whose name contains `/head ` (the per-head attention stages).
pub fn head_overlap(spans: &[Span]) -> Overlap {
    let heads: Vec<&Span> = spans.iter().filter(|s| s.name.contains("/head ")).collect();
    // Sweep over start (+1) and end (-1) points; ends sort before starts at equal times so
    // back-to-back spans on one stream do not count as overlapping.
    let mut points: Vec<(f64, i32)> = heads
        .iter()
        .flat_map(|s| [(s.start_ms, 1), (s.end_ms, -1)])
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut active, mut max, mut union, mut since) = (0i32, 0i32, 0.0f64, 0.0f64);
    for (t, d) in points {
        if active == 0 && d > 0 {
            since = t;
        }
        active += d;
        max = max.max(active);
        if active == 0 {
            union += t - since;
        }
    }
    Overlap {
        busy_ms: heads.iter().map(|s| s.end_ms - s.start_ms).sum(),
        union_ms: union,
        max_concurrent: max as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, lane: usize, start_ms: f64, end_ms: f64) -> Span {
        Span {
            name: name.into(),
            lane,
            start_ms,
            end_ms,
        }
    }

    #[test]
    fn overlap_counts_concurrent_heads_only() {
        let spans = [
            span("encoder 0/qkv", 0, 0.0, 1.0),
            span("encoder 0/attention/head 0", 1, 1.0, 3.0),
            span("encoder 0/attention/head 1", 2, 2.0, 4.0),
            span("encoder 0/attention/head 2", 3, 4.0, 5.0),
        ];
        let o = head_overlap(&spans);
        assert_eq!(o.max_concurrent, 2);
        assert!((o.busy_ms - 5.0).abs() < 1e-12);
        assert!((o.union_ms - 4.0).abs() < 1e-12);
        assert!((o.concurrency() - 1.25).abs() < 1e-12);
        let trace = chrome_trace(&spans);
        assert_eq!(trace["traceEvents"].as_array().unwrap().len(), 4);
        assert_eq!(trace["traceEvents"][1]["ts"], 1000.0);
        assert_eq!(trace["traceEvents"][1]["tid"], 1);
    }
}
