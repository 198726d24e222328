//! How GPU tests and benches get their devices: they skip with a printed reason when the
//! machine lacks them, and fail instead when `ATTNRT_REQUIRE_GPU=1` (as on the device
//! machine), so a GPU run never passes by skipping.
//!
//! A test that needs N GPUs on a machine with fewer prints `skipped: needs N GPUs` and, under
//! `ATTNRT_REQUIRE_GPU=1`, fails unless the runner states that the machine has fewer
//! (`ATTNRT_GPUS=1` on a one-GPU machine): the runner, not the test, knows what the machine
//! should have, so a GPU that went missing is a failure, not a skip.

use std::sync::Arc;

use super::{Gpu, device_count};

pub const REQUIRE_GPU_VAR: &str = "ATTNRT_REQUIRE_GPU";

/// The number of GPUs the runner says the machine has (for tests that need several).
pub const GPUS_VAR: &str = "ATTNRT_GPUS";

fn required() -> bool {
    std::env::var(REQUIRE_GPU_VAR).is_ok_and(|v| v == "1")
}

/// Why no GPU can be used, or `None` when GPU 0 opens with compiled kernels.
fn unusable() -> Option<String> {
    if !super::images::compiled() {
        return Some("kernels were not compiled into this build (no nvcc at build time)".into());
    }
    Gpu::open(0).err().map(|e| e.to_string())
}

/// The GPU for `test` (a test's or a bench's name), or `None` after printing
/// `skipped: <reason>`. Panics (failing the test) when a GPU is required.
pub fn gpu_or_skip(test: &str) -> Option<Arc<Gpu>> {
    match unusable() {
        None => Gpu::open(0).ok(),
        Some(reason) => skip(test, &reason, true),
    }
}

/// GPUs 0..n for `test`, or `None` after printing `skipped: needs n GPUs ...`. Under
/// `ATTNRT_REQUIRE_GPU=1` a missing GPU fails the test unless [`GPUS_VAR`] says the machine
/// has fewer than `n`.
pub fn gpus_or_skip(test: &str, n: usize) -> Option<Vec<Arc<Gpu>>> {
    if let Some(reason) = unusable() {
        return skip(test, &reason, true);
    }
    let count = device_count().unwrap_or(0);
    if count < n {
        let declared = std::env::var(GPUS_VAR)
            .ok()
            .and_then(|v| v.parse::<usize>().ok());
        let known_fewer = declared.is_some_and(|d| d < n);
        let reason = format!("needs {n} GPUs, the machine has {count}");
        return skip(test, &reason, !known_fewer);
    }
    (0..n).map(|o| Gpu::open(o).ok()).collect()
}

fn skip<T>(test: &str, reason: &str, fail_if_required: bool) -> Option<T> {
    if fail_if_required && required() {
        panic!(
            "{test}: {REQUIRE_GPU_VAR}=1 but {reason} (set {GPUS_VAR} to the machine's GPU \
             count when it is known to have fewer)"
        );
    }
    println!("{test}: skipped: {reason}");
    None
}
