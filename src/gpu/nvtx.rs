//! NVTX ranges for nsys timelines and ncu's `--nvtx-include` filters: a no-op when the NVTX
//! library is absent.
//!
//! Push/pop ranges rather than start/end ones: nsys shows both, but ncu filters kernels by
//! push/pop ranges only. A push/pop range belongs to its thread, so [`Range`] is not `Send`
//! and pops on the thread that pushed it.

use std::ffi::CString;
use std::marker::PhantomData;
use std::sync::OnceLock;

use cudarc::nvtx::sys;

fn present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only probes whether the library can be loaded.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// An open NVTX range; it closes when dropped.
#[must_use = "the range closes when this is dropped"]
pub struct Range {
    pushed: bool,
    /// Not `Send`: the pop must happen on the pushing thread.
    _thread: PhantomData<*const ()>,
}

/// Opens a range named `name` (e.g. `layer 3/attention/head 5`) on this thread.
pub fn range(name: impl AsRef<str>) -> Range {
    let pushed = present() && {
        // A NUL would end the C string early; names are ours, so this never drops text.
        let name = CString::new(name.as_ref().replace('\0', " ")).unwrap_or_default();
        // SAFETY: the library is present and `name` is a valid C string for the call.
        unsafe { sys::nvtxRangePushA(name.as_ptr()) >= 0 }
    };
    Range {
        pushed,
        _thread: PhantomData,
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        if self.pushed {
            // SAFETY: pops the range this value pushed, on the same thread (not `Send`), and
            // ranges are dropped in reverse order of creation within a scope.
            unsafe { sys::nvtxRangePop() };
        }
    }
}
