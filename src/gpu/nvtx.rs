//! NVTX ranges for nsys timelines and ncu's `--nvtx-include` filters: a no-op when no NVTX
//! library can be loaded.
//!
//! The library is loaded at run time, like the rest of CUDA. CUDA 13 no longer ships
//! `libnvToolsExt`; its NVTX library is `libnvtx3interop.so.1` (same entry points), which
//! is often not on the loader's path (pip's `nvidia-nvtx` puts it under
//! `site-packages/nvidia/cu13/lib`), so `ATTNRT_NVTX_LIB` may name the file. Either library
//! forwards the ranges to the profiler that started the process and does nothing otherwise.
//!
//! Push/pop ranges rather than start/end ones: nsys shows both, but ncu filters kernels by
//! push/pop ranges only. A push/pop range belongs to its thread, so [`Range`] is not `Send`
//! and pops on the thread that pushed it.

use std::ffi::{CString, c_char, c_int};
use std::marker::PhantomData;
use std::sync::OnceLock;

/// The environment variable that names the NVTX library to load.
pub const LIB_ENV: &str = "ATTNRT_NVTX_LIB";

/// The names tried after [`LIB_ENV`]: CUDA 12's and older, then CUDA 13's.
const LIB_NAMES: [&str; 4] = [
    "libnvToolsExt.so.1",
    "libnvToolsExt.so",
    "libnvtx3interop.so.1",
    "libnvtx3interop.so",
];

struct Api {
    push: unsafe extern "C" fn(*const c_char) -> c_int,
    pop: unsafe extern "C" fn() -> c_int,
    /// Keeps the functions loaded.
    _lib: libloading::Library,
}

fn load(path: &str) -> Option<Api> {
    // SAFETY: loading an NVTX library runs no initialisers with preconditions, and both
    // symbols have these C signatures in every NVTX version.
    unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let push = *lib
            .get::<unsafe extern "C" fn(*const c_char) -> c_int>(b"nvtxRangePushA\0")
            .ok()?;
        let pop = *lib
            .get::<unsafe extern "C" fn() -> c_int>(b"nvtxRangePop\0")
            .ok()?;
        Some(Api {
            push,
            pop,
            _lib: lib,
        })
    }
}

/// The loaded library, if any, and what the user should be told about the loading.
struct Loaded {
    api: Option<Api>,
    notices: Vec<String>,
}

fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        let mut notices = Vec::new();
        let named = std::env::var(LIB_ENV).ok();
        if let Some(n) = &named {
            if let Some(api) = load(n) {
                return Loaded {
                    api: Some(api),
                    notices,
                };
            }
            // The user asked for this library: say it was not used.
            notices.push(format!(
                "{LIB_ENV}={n} could not be loaded as an NVTX library (a missing file, or no \
                 nvtxRangePushA in it); trying {}",
                LIB_NAMES.join(", ")
            ));
        }
        let api = LIB_NAMES.into_iter().find_map(load);
        // A profiler that injects NVTX sets this; without a library its ranges would be
        // missing with no word why.
        if api.is_none() && std::env::var_os("NVTX_INJECTION64_PATH").is_some() {
            notices.push(format!(
                "no NVTX library found ({}), so the profile has no NVTX ranges; set {LIB_ENV} \
                 to the path of libnvtx3interop.so.1 (CUDA 13, pip's nvidia-nvtx) or \
                 libnvToolsExt.so.1",
                LIB_NAMES.join(", ")
            ));
        }
        Loaded { api, notices }
    })
}

fn api() -> Option<&'static Api> {
    loaded().api.as_ref()
}

/// Loads the NVTX library now (else at the first range) and returns what the user should be
/// told about it: a library named by [`LIB_ENV`] that could not be loaded, or a profiler
/// that injects NVTX with no library to send the ranges through. Binaries print these at
/// start; the library itself never prints.
pub fn notices() -> &'static [String] {
    &loaded().notices
}

/// An open NVTX range; it closes when dropped.
#[must_use = "the range closes when this is dropped"]
pub struct Range {
    api: Option<&'static Api>,
    /// Not `Send`: the pop must happen on the pushing thread.
    _thread: PhantomData<*const ()>,
}

/// Opens a range named `name` (e.g. `layer 3/attention/head 5`) on this thread.
pub fn range(name: impl AsRef<str>) -> Range {
    let api = api().filter(|a| {
        // A NUL would end the C string early; names are ours, so this never drops text.
        let name = CString::new(name.as_ref().replace('\0', " ")).unwrap_or_default();
        // SAFETY: `name` is a valid C string for the call's duration.
        unsafe { (a.push)(name.as_ptr()) >= 0 }
    });
    Range {
        api,
        _thread: PhantomData,
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        if let Some(a) = self.api {
            // SAFETY: pops the range this value pushed, on the same thread (not `Send`), and
            // ranges are dropped in reverse order of creation within a scope.
            unsafe { (a.pop)() };
        }
    }
}
