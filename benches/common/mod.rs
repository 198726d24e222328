//! What the benches share: for the criterion GPU benches, short default times and the
//! released-size synthetic model; for those with their own timing loop, their flags
//! (`flags`). Each bench uses part of it, so each declares it `#[allow(dead_code)]`.

use std::time::Duration;

use attnrt::model::Config;
use attnrt::model::Weights;
use attnrt::model::synthetic::synthetic_weights;
use criterion::Criterion;

/// Criterion with defaults short enough for both GPU benches to run in about two minutes on
/// an H100 (0.5 s warm-up, 1 s measurement, 50 samples per bench); `--warm-up-time`,
/// `--measurement-time`, `--sample-size` and the other criterion flags override them.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(50)
        .configure_from_args()
}

/// The released model's shape with synthetic weights (the seed `benches/engine.rs` uses):
/// time does not depend on the values.
pub fn released_weights() -> Weights {
    synthetic_weights(&Config::released(), 2022)
}

pub mod flags;
