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

/// The shared tracker golden set: its golden file, its frames folder, and its weights, which
/// are not shipped but made from the golden file's recipe by `make_weights.py` (beside it),
/// once per test process, into a temporary folder.
pub struct TrackerGolden {
    pub golden: PathBuf,
    pub frames: PathBuf,
    pub weights: PathBuf,
    _dir: tempfile::TempDir,
}

/// [`TrackerGolden`] for `tracker_s1`; panics with the reason when the golden files or
/// Python are missing (the CPU tests need them).
pub fn tracker_golden() -> &'static TrackerGolden {
    static GOLDEN: std::sync::OnceLock<TrackerGolden> = std::sync::OnceLock::new();
    GOLDEN.get_or_init(|| {
        let dir = attnrt::model::golden::golden_dir()
            .unwrap_or_else(|e| panic!("golden files are required for the tracker tests: {e}"));
        let golden = dir.join("tracker_s1.golden.safetensors");
        let tmp = tempfile::tempdir().expect("temporary folder");
        let weights = tmp.path().join("tracker_s1.weights.safetensors");
        let out = std::process::Command::new("python3")
            .arg(dir.join("make_weights.py"))
            .arg(&golden)
            .arg(&weights)
            .output()
            .unwrap_or_else(|e| panic!("python3 is required to make the tracker weights: {e}"));
        assert!(
            out.status.success(),
            "make_weights.py failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        TrackerGolden {
            golden,
            frames: dir.join("tracker_s1_frames"),
            weights,
            _dir: tmp,
        }
    })
}

/// The synthetic sequences' frame: `w x h`, a bright 30 x 24 target at `(x, y)` on a
/// patterned background (the tracker tests on the CPU and the GPU track it).
pub fn synthetic_frame(w: usize, h: usize, x: usize, y: usize) -> attnrt::tracker::Frame {
    let mut data = vec![0u8; w * h * 3];
    for r in 0..h {
        for c in 0..w {
            for ch in 0..3 {
                let inside = (x..x + 30).contains(&c) && (y..y + 24).contains(&r);
                data[(r * w + c) * 3 + ch] = if inside {
                    230 - 40 * ch as u8
                } else {
                    ((r * 7 + c * 3 + ch * 50) % 97) as u8
                };
            }
        }
    }
    attnrt::tracker::Frame::new(h, w, data).unwrap()
}

/// The tiny synthetic tracker of `seed`, written into `dir`.
pub fn tiny_tracker_file(dir: &std::path::Path, seed: u64) -> PathBuf {
    use attnrt::tracker::synthetic::{SyntheticSpec, write_synthetic_tracker};
    let p = dir.join(format!("tiny{seed}.safetensors"));
    write_synthetic_tracker(&p, &SyntheticSpec::tiny(), seed).unwrap();
    p
}
