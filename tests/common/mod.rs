//! Paths the integration tests need, valid both in a cargo checkout and on the device machine,
//! where the binaries are staged (`ATTNRT_BIN_DIR`, set by `scripts/run-gpu-tests.sh`) and the
//! build machine's absolute paths do not exist.
#![allow(dead_code)] // each test file uses a part of this module

use std::path::PathBuf;

/// A binary of this crate: `$ATTNRT_BIN_DIR/<name>` when set, else `cargo_path`
/// (pass `env!("CARGO_BIN_EXE_<name>")`).
pub fn bin(name: &str, cargo_path: &str) -> PathBuf {
    match std::env::var_os("ATTNRT_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => PathBuf::from(cargo_path),
    }
}

/// A file of the repository: under the crate's directory when that exists, else relative to
/// the working directory (the repository root on the device machine).
pub fn repo_file(rel: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    if built.exists() {
        built
    } else {
        PathBuf::from(rel)
    }
}
