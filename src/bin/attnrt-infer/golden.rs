//! `attnrt-infer --check` of a transformer model against a golden file.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use attnrt::Result;
use attnrt::base::TensorFile;
use attnrt::cswintt::{Backend, check};
use attnrt::model::Config;

use super::args::Args;

/// `--check GOLDEN` of a transformer model: runs the golden file's inputs, compares every
/// output tensor, prints the result (a JSON line with `--json`); exit 1 when one is over the
/// tolerance.
pub fn check_golden(
    args: &Args,
    golden: &Path,
    cfg: &Config,
    model_desc: &str,
    backend: &mut dyn Backend,
) -> Result<ExitCode> {
    let file = TensorFile::open(golden)?;
    let warmup = args.warmup.unwrap_or(0);
    let run = check::run(backend, &file, cfg, warmup, args.graph)?;
    if let Some(p) = &args.output {
        run.outputs.save(p)?;
    }
    let c = &run.check;
    if args.json {
        let j = json!({
            "golden": golden.display().to_string(),
            "model": model_desc,
            "device": backend.device(),
            "engine": backend.describe(),
            "precision": backend.precision().to_string(),
            "tolerance": c.tolerance,
            "tensors": c.tensors,
            "skipped": c.skipped,
            "max_rel_err": c.max_rel_err(),
            "failed": c.failed(),
            "passed": c.passed(),
            "run_ms": run.run_ms,
        });
        println!("{j}");
    } else {
        println!("check:   {} against {model_desc}", golden.display());
        println!(
            "engine:  {} on {}, tolerance {:.0e} (relative error ||ours - expected||_F / ||expected||_F)",
            backend.describe(),
            backend.device(),
            c.tolerance
        );
        println!("{c}");
    }
    // 1: a tensor over the tolerance.
    Ok(ExitCode::from(u8::from(!c.passed())))
}
