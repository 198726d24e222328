//! The shared golden files (`NAME.weights.safetensors`, `NAME.golden.safetensors`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The golden files' names (without the `.weights`/`.golden` suffixes).
pub const GOLDEN_NAMES: [&str; 2] = ["tiny_s1", "tiny_pad_s2"];

/// Environment variable naming the golden directory.
pub const GOLDEN_DIR_ENV: &str = "ATTNRT_GOLDEN_DIR";

/// The golden directory: `$ATTNRT_GOLDEN_DIR`, else `<crate>/../shared/golden` (the
/// crate's source directory at build time), else `./shared/golden` and
/// `../shared/golden` relative to the working directory. An error lists where it looked.
pub fn golden_dir() -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(d) = std::env::var_os(GOLDEN_DIR_ENV) {
        let d = PathBuf::from(d);
        if d.is_dir() {
            return Ok(d);
        }
        return Err(Error::invalid(
            GOLDEN_DIR_ENV,
            format!("'{}' is not a directory", d.display()),
        ));
    }
    let candidates = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"),
        PathBuf::from("shared/golden"),
        PathBuf::from("../shared/golden"),
    ];
    for c in candidates {
        if c.is_dir() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(Error::invalid(
        "golden files",
        format!(
            "no golden directory found; set {GOLDEN_DIR_ENV} (looked in: {})",
            tried.join(", ")
        ),
    ))
}

/// `(weights, golden)` paths of golden set `name` (e.g. `tiny_s1`), checked to exist.
pub fn golden_pair(name: &str) -> Result<(PathBuf, PathBuf)> {
    let dir = golden_dir()?;
    let w = dir.join(format!("{name}.weights.safetensors"));
    let g = dir.join(format!("{name}.golden.safetensors"));
    for p in [&w, &g] {
        if !p.is_file() {
            return Err(Error::io(
                p.clone(),
                std::io::Error::new(std::io::ErrorKind::NotFound, "golden file not found"),
            ));
        }
    }
    Ok((w, g))
}

/// The weights file that goes with a golden file: `X.golden.safetensors` ->
/// `X.weights.safetensors` in the same directory.
pub fn weights_for_golden(golden: &Path) -> Option<PathBuf> {
    let name = golden.file_name()?.to_str()?;
    let stem = name.strip_suffix(".golden.safetensors")?;
    Some(golden.with_file_name(format!("{stem}.weights.safetensors")))
}
