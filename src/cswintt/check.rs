//! An engine against a golden file: every `expected.*` tensor the run produced, by relative
//! error `||ours - expected||_F / ||expected||_F` against the engine's tolerance. This is what
//! `attnrt-infer --check` prints and what the golden tests assert.

use std::fmt;
use std::time::Instant;

use serde::Serialize;

use super::{Backend, EXPECTED_PREFIX, Inputs, Outputs};
use crate::base::{TensorFile, relative_error};
use crate::error::{Error, Result};
use crate::model::Config;

/// One `expected.*` tensor against ours. Serialized as `name`, `shape`, `rel_err` (`null`
/// when infinite) and `ok`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorCheck {
    /// The golden file's name, `expected.` included.
    pub name: String,
    /// Our tensor's shape.
    pub shape: Vec<usize>,
    /// The golden tensor's shape.
    #[serde(skip)]
    pub expected_shape: Vec<usize>,
    /// The relative error; infinite when the shapes differ or ours holds a non-finite value.
    pub rel_err: f64,
    /// `rel_err` is within the tolerance.
    pub ok: bool,
}

/// Every `expected.*` tensor of a golden file against one run.
#[derive(Clone, Debug, PartialEq)]
pub struct GoldenCheck {
    pub tolerance: f64,
    /// The tensors the run produced, in the file's (sorted) order.
    pub tensors: Vec<TensorCheck>,
    /// The `expected.*` tensors the run did not produce (an engine without intermediates).
    pub skipped: Vec<String>,
}

impl GoldenCheck {
    /// How many tensors are over the tolerance.
    pub fn failed(&self) -> usize {
        self.tensors.iter().filter(|t| !t.ok).count()
    }

    pub fn passed(&self) -> bool {
        self.failed() == 0
    }

    /// The largest relative error (0 when nothing was compared).
    pub fn max_rel_err(&self) -> f64 {
        self.tensors.iter().map(|t| t.rel_err).fold(0.0, f64::max)
    }

    /// `"NAME: ERR"` for each tensor over the tolerance, for test messages.
    pub fn failures(&self) -> Vec<String> {
        self.tensors
            .iter()
            .filter(|t| !t.ok)
            .map(|t| format!("{}: {:.3e}", t.name, t.rel_err))
            .collect()
    }
}

/// One line per tensor (its relative error and verdict, or the shapes that differ), one per
/// skipped tensor, then the verdict: `PASS: 15 tensors, 0 over tolerance, max rel err 1.1e-7`.
impl fmt::Display for GoldenCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tensors {
            let (n, s, e) = (&t.name, &t.shape, t.rel_err);
            if t.shape != t.expected_shape {
                writeln!(
                    f,
                    "{n:<40} shape {s:?}, expected {:?}  FAIL",
                    t.expected_shape
                )?;
            } else {
                writeln!(
                    f,
                    "{n:<40} rel err {e:.3e}  {}",
                    if t.ok { "ok" } else { "FAIL" }
                )?;
            }
        }
        for n in &self.skipped {
            writeln!(f, "{n:<40} skipped (not produced by this engine)")?;
        }
        write!(
            f,
            "{}: {} tensors, {} over tolerance, max rel err {:.3e}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.tensors.len(),
            self.failed(),
            self.max_rel_err()
        )
    }
}

/// Compares `outputs` with every `expected.*` tensor of `golden`. An error when the file holds
/// none that `outputs` has, or when a golden tensor cannot be read.
pub fn compare(golden: &TensorFile, outputs: &Outputs, tolerance: f64) -> Result<GoldenCheck> {
    let mut tensors = Vec::new();
    let mut skipped = Vec::new();
    for name in golden.names() {
        if !name.starts_with(EXPECTED_PREFIX) {
            continue;
        }
        let Some(ours) = outputs.get(&name) else {
            skipped.push(name);
            continue;
        };
        let want = golden.f32(&name)?;
        let rel_err = if ours.shape == want.shape {
            relative_error(&ours.data, &want.data).unwrap_or(f64::INFINITY)
        } else {
            f64::INFINITY
        };
        tensors.push(TensorCheck {
            name,
            shape: ours.shape.clone(),
            expected_shape: want.shape,
            rel_err,
            ok: rel_err <= tolerance,
        });
    }
    if tensors.is_empty() {
        return Err(Error::invalid(
            golden.path().display().to_string(),
            "holds no expected.* tensor this engine produces",
        ));
    }
    Ok(GoldenCheck {
        tolerance,
        tensors,
        skipped,
    })
}

/// A golden file's run through an engine and its comparison.
pub struct GoldenRun {
    /// The outputs compared (with intermediates).
    pub outputs: Outputs,
    pub check: GoldenCheck,
    /// The wall time of the compared run, in milliseconds.
    pub run_ms: f64,
}

/// Runs `golden`'s `input.*` through `backend` (after `warmup` untimed runs) with
/// intermediates and compares them at the backend's tolerance. With `graph`, `search_feat`
/// and `hs` come from a second run, a CUDA-graph replay (intermediates need an eager run).
pub fn run(
    backend: &mut dyn Backend,
    golden: &TensorFile,
    config: &Config,
    warmup: usize,
    graph: bool,
) -> Result<GoldenRun> {
    let inputs = Inputs::from_file(golden, config)?;
    for _ in 0..warmup {
        backend.run(&inputs, false)?;
    }
    let t0 = Instant::now();
    let mut outputs = backend.run(&inputs, true)?;
    let run_ms = t0.elapsed().as_secs_f64() * 1e3;
    if graph {
        let replayed = backend.run(&inputs, false)?;
        outputs.search_feat = replayed.search_feat;
        outputs.hs = replayed.hs;
    }
    let check = compare(golden, &outputs, backend.tolerance())?;
    Ok(GoldenRun {
        outputs,
        check,
        run_ms,
    })
}
