//! Latency statistics, one definition for every figure we report (`attnrt-infer`'s timings,
//! the engine bench).
//!
//! Percentiles are nearest-rank: the p-th percentile of n samples is the smallest sample with
//! at least p% of the samples at or below it, the sample of rank `ceil(p/100 * n)`. Every
//! figure is then a measured latency, never an interpolation between two.

use std::fmt;

/// A summary of latency samples, in the samples' unit (milliseconds throughout attnrt).
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyStats {
    /// How many samples.
    pub count: usize,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl LatencyStats {
    /// The summary of `samples`; `None` when there are none.
    pub fn new(samples: &[f64]) -> Option<LatencyStats> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(LatencyStats {
            count: v.len(),
            p10: rank(10.0),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    /// `per_pass` (frames, FLOPs) per second at the mean latency, for samples in
    /// milliseconds.
    pub fn per_second(&self, per_pass: f64) -> f64 {
        per_pass * 1e3 / self.mean
    }
}

/// `p50 1.234 ms  p90 1.300 ms  p99 1.402 ms  (mean 1.250, min 1.201, max 1.430)`.
impl fmt::Display for LatencyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  (mean {:.3}, min {:.3}, max {:.3})",
            self.p50, self.p90, self.p99, self.mean, self.min, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        // 1..=10 shuffled: p50 is the 5th sample, p90 the 9th, p99 and max the 10th.
        let s = LatencyStats::new(&[7.0, 3.0, 10.0, 1.0, 5.0, 9.0, 2.0, 8.0, 4.0, 6.0]).unwrap();
        assert_eq!(
            (s.p10, s.p50, s.p90, s.p99, s.min, s.max),
            (1.0, 5.0, 9.0, 10.0, 1.0, 10.0)
        );
        assert_eq!((s.count, s.mean), (10, 5.5));
        assert_eq!(s.per_second(2.0), 2.0 * 1e3 / 5.5);
    }

    #[test]
    fn one_sample_is_every_percentile_and_none_is_no_summary() {
        let s = LatencyStats::new(&[4.0]).unwrap();
        assert_eq!((s.p10, s.p50, s.p99, s.mean), (4.0, 4.0, 4.0, 4.0));
        assert!(LatencyStats::new(&[]).is_none());
    }

    #[test]
    fn an_even_count_takes_the_lower_middle_sample() {
        // Nearest-rank p50 of 300 samples is rank 150, where a rounded index took 151.
        let v: Vec<f64> = (1..=300).map(f64::from).collect();
        let s = LatencyStats::new(&v).unwrap();
        assert_eq!((s.p10, s.p50, s.p90, s.p99), (30.0, 150.0, 270.0, 297.0));
    }
}
