//! NVTX ranges with `ATTNRT_NVTX_LIB` naming a file that is not there: the library is not
//! used (a notice, which the binaries print, names it), the standard names are tried, and
//! ranges open and close whether or not one loads. Its own test binary, so the variable is set before the
//! first range of the process.

use attnrt::gpu::nvtx;

#[test]
fn a_missing_named_library_leaves_ranges_usable() {
    // SAFETY: the only test in this binary, so no other thread reads the environment.
    unsafe { std::env::set_var(nvtx::LIB_ENV, "/nonexistent/libnvtx-missing.so") };
    let outer = nvtx::range("outer");
    {
        let _inner = nvtx::range(format!("inner {}", 1));
    }
    drop(outer);
    let notices = nvtx::notices();
    assert!(
        notices.iter().any(|n| n.contains(&format!(
            "{}=/nonexistent/libnvtx-missing.so could not be loaded",
            nvtx::LIB_ENV
        ))),
        "{notices:?}"
    );
}
