//! NVTX ranges with `ATTNRT_NVTX_LIB` naming a file that is not there: the library is not
//! used, a notice names the file for the binaries to print, the standard names are tried, and
//! ranges open and close whether or not one loads. Its own test binary, so the variable is set
//! before the first range of the process.

use attnrt::gpu::nvtx;

#[test]
fn a_missing_named_library_is_noticed_and_leaves_ranges_usable() {
    const MISSING: &str = "/nonexistent/libnvtx-missing.so";
    // SAFETY: the only test in this binary, so no other thread reads the environment.
    unsafe { std::env::set_var(nvtx::LIB_ENV, MISSING) };
    let notices = nvtx::notices();
    assert!(
        notices
            .iter()
            .any(|n| n.contains(&format!("{}={MISSING}", nvtx::LIB_ENV))
                && n.contains("could not be loaded")),
        "no notice names {MISSING}: {notices:?}"
    );
    let outer = nvtx::range("outer");
    {
        let _inner = nvtx::range(format!("inner {}", 1));
    }
    drop(outer);
}
