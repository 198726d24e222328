//! NVTX ranges for nsys timelines: a no-op when the NVTX library is absent.

use std::sync::OnceLock;

fn present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only probes whether the library can be loaded.
    *PRESENT.get_or_init(|| unsafe { cudarc::nvtx::sys::is_culib_present() })
}

/// An open NVTX range; it closes when dropped.
#[must_use = "the range closes when this is dropped"]
pub struct Range(#[allow(dead_code)] Option<cudarc::nvtx::Range>);

/// Opens a range named `name` (e.g. `layer 3/attention/head 5`).
pub fn range(name: impl AsRef<str>) -> Range {
    Range(present().then(|| cudarc::nvtx::scoped_range(name)))
}
