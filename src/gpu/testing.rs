//! How GPU tests and benches get their device: they skip with a printed reason when there is no
//! usable GPU, and fail instead when `ATTNRT_REQUIRE_GPU=1` (as on the device machine).

use std::sync::Arc;

use super::Gpu;

pub const REQUIRE_GPU_VAR: &str = "ATTNRT_REQUIRE_GPU";

fn required() -> bool {
    std::env::var(REQUIRE_GPU_VAR).is_ok_and(|v| v == "1")
}

/// The GPU for `test` (a test's or a bench's name), or `None` after printing `skipped: <reason>`. Panics (failing the
/// test) when a GPU is required.
pub fn gpu_or_skip(test: &str) -> Option<Arc<Gpu>> {
    let reason = if !super::images::compiled() {
        "kernels were not compiled into this build (no nvcc at build time)".to_string()
    } else {
        match Gpu::open(0) {
            Ok(gpu) => return Some(gpu),
            Err(e) => e.to_string(),
        }
    };
    if required() {
        panic!("{test}: {REQUIRE_GPU_VAR}=1 but {reason}");
    }
    println!("{test}: skipped: {reason}");
    None
}
