//! cuDNN, loaded at run time like the rest of CUDA, and a handle bound to one stream.
//!
//! cudarc's dynamic loading opens cuDNN by bare names (`libcudnn.so`, ..., `libcudnn.so.9`),
//! so it only finds a library on the loader's path. cuDNN usually lives elsewhere: pip's
//! `nvidia-cudnn-cu13` (which `scripts/setup-cuda.sh` installs into `.cuda/`, and which
//! PyTorch's environment holds) puts it under `site-packages/nvidia/cudnn/lib`. So
//! [`library`] first opens `libcudnn.so.9` by its full path and keeps it loaded; the dynamic
//! loader then answers cudarc's later `dlopen("libcudnn.so.9")` with that same object (a
//! loaded library matches its soname). The shim finds its sub-libraries (`libcudnn_cnn.so.9`,
//! the engines) and their cuBLAS next to itself through its `$ORIGIN` run path.
//!
//! The places tried, in order: [`LIB_ENV`] (a `libcudnn.so.9` or the folder holding it; when
//! set it is the only place tried), the folder recorded in `.cuda/cudnn-path` by
//! `scripts/setup-cuda.sh` (looked for above the running executable, then in the checkout
//! this crate was built from), then the loader's path. Without one, the error says how to
//! get it.

use std::ffi::{OsStr, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cudarc::cudnn::result::{self, CudnnError};
use cudarc::cudnn::sys;
use cudarc::driver::CudaStream;

use super::Gpu;
use crate::error::{CudaContext as _, Error, Result};

/// The environment variable naming the cuDNN library (or its folder) to load.
pub const LIB_ENV: &str = "ATTNRT_CUDNN_LIB";

/// The file, relative to a checkout, where `scripts/setup-cuda.sh` records cuDNN's folder.
pub const RECORD: &str = ".cuda/cudnn-path";

/// The library's file name: the API this crate binds is cuDNN 9's.
pub const SONAME: &str = "libcudnn.so.9";

/// How to get cuDNN, for the error when none is found.
const HOW_TO_GET: &str = "run scripts/setup-cuda.sh (installs nvidia-cudnn-cu13 into .cuda/ \
     and records it), or set ATTNRT_CUDNN_LIB to a libcudnn.so.9 or its folder; where PyTorch \
     is installed it holds one: ATTNRT_CUDNN_LIB=\"$(python3 -c 'import nvidia.cudnn; \
     print(nvidia.cudnn.__path__[0])')/lib\"";

/// The cuDNN in use: where it came from and its version (`major * 10000 + minor * 100 +
/// patch`, cuDNN's `cudnnGetVersion`).
#[derive(Debug)]
pub struct CudnnLibrary {
    /// `ATTNRT_CUDNN_LIB`, `.cuda/cudnn-path (FILE)` or `the loader's path`.
    pub source: String,
    /// The file opened, when opened by path.
    pub path: Option<PathBuf>,
    pub version: usize,
    /// Keeps a library opened by path loaded for cudarc to find.
    _lib: Option<libloading::Library>,
}

impl CudnnLibrary {
    /// `9.19.0`.
    pub fn version_string(&self) -> String {
        let v = self.version;
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    }
}

/// The process's cuDNN, found and loaded on first use (see the module docs), or
/// [`Error::MissingLibrary`] saying what was tried and how to get it.
pub fn library() -> Result<&'static CudnnLibrary> {
    static LIB: OnceLock<std::result::Result<CudnnLibrary, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let named = std::env::var_os(LIB_ENV).filter(|v| !v.is_empty());
        locate(named.as_deref(), &records())
    })
    .as_ref()
    .map_err(|reason| missing(reason.clone()))
}

fn missing(reason: String) -> Error {
    Error::MissingLibrary {
        library: format!("cuDNN ({SONAME})"),
        reason: format!("{reason}; {HOW_TO_GET}"),
    }
}

/// The `.cuda/cudnn-path` files that may exist: above the running executable (a binary in
/// a checkout's `target/`), then in the checkout this crate was built from.
fn records() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        found.extend(exe.ancestors().skip(1).map(|dir| dir.join(RECORD)));
    }
    found.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(RECORD));
    let mut seen = std::collections::HashSet::new();
    found.retain(|p| p.is_file() && seen.insert(p.clone()));
    found
}

/// Finds and loads cuDNN from `named` (the value of [`LIB_ENV`]), else the folders recorded
/// in `records`, else the loader's path; the error says what was tried and why it failed.
/// Loading one by path makes it the process's cuDNN: the caller keeps the result.
pub fn locate(
    named: Option<&OsStr>,
    records: &[PathBuf],
) -> std::result::Result<CudnnLibrary, String> {
    if let Some(named) = named {
        let path = library_file(Path::new(named));
        return open(&path)
            .map_err(|e| format!("{LIB_ENV}={}: {e}", named.to_string_lossy()))
            .and_then(|lib| checked(Some(lib), LIB_ENV.to_string(), Some(path)));
    }
    let mut tried = Vec::new();
    for record in records {
        let source = format!("{RECORD} ({})", record.display());
        let dir = match std::fs::read_to_string(record) {
            Ok(text) => PathBuf::from(text.trim()),
            Err(e) => {
                tried.push(format!("{source}: {e}"));
                continue;
            }
        };
        let path = library_file(&dir);
        match open(&path) {
            Ok(lib) => return checked(Some(lib), source, Some(path)),
            Err(e) => tried.push(format!("{source} names {}: {e}", dir.display())),
        }
    }
    // SAFETY: only tries to open the library under cudarc's names.
    if unsafe { sys::is_culib_present() } {
        return checked(None, "the loader's path".into(), None);
    }
    tried.push(format!(
        "{LIB_ENV} is not set and the loader's path has no {SONAME}"
    ));
    Err(tried.join("; "))
}

/// `path` itself, or `path/libcudnn.so.9` when it is a folder.
fn library_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(SONAME)
    } else {
        path.to_path_buf()
    }
}

fn open(path: &Path) -> std::result::Result<libloading::Library, String> {
    if !path.exists() {
        return Err(format!("{} does not exist", path.display()));
    }
    // SAFETY: cuDNN's initialisers only set up its own state.
    unsafe { libloading::Library::new(path) }.map_err(|e| {
        // libloading's message is "dlopen failed"; the loader's own reason is its source.
        match std::error::Error::source(&e) {
            Some(why) => format!("{e}: {why}"),
            None => e.to_string(),
        }
    })
}

/// Checks that cudarc's bindings reach the library just loaded (`lib`, when opened by path)
/// and that it is cuDNN 9.
fn checked(
    lib: Option<libloading::Library>,
    source: String,
    path: Option<PathBuf>,
) -> std::result::Result<CudnnLibrary, String> {
    type GetVersion = unsafe extern "C" fn() -> usize;
    if let Some(lib) = &lib {
        // SAFETY: `cudnnGetVersion` has this signature in every cuDNN; cudarc's `culib` finds
        // a library now, since one with cudarc's last name (its soname) is loaded.
        let (ours, cudarc) = unsafe {
            let ours = *lib
                .get::<GetVersion>(b"cudnnGetVersion\0")
                .map_err(|e| format!("{source}: not a cuDNN library ({e})"))?;
            if !sys::is_culib_present() {
                return Err(format!(
                    "{source}: loaded, but its soname is not {SONAME}, so cudarc cannot reach it"
                ));
            }
            let cudarc = *sys::culib()
                .get::<GetVersion>(b"cudnnGetVersion\0")
                .map_err(|e| format!("{source}: {e}"))?;
            (ours as *const c_void, cudarc as *const c_void)
        };
        if ours != cudarc {
            return Err(format!(
                "{source}: another cuDNN on the loader's path (libcudnn.so) shadows this one; \
                 remove one of the two from the loader's path"
            ));
        }
    }
    let version = result::get_version();
    if version / 10000 != 9 {
        return Err(format!(
            "{source}: cuDNN {version} found, this build needs cuDNN 9"
        ));
    }
    Ok(CudnnLibrary {
        source,
        path,
        version,
        _lib: lib,
    })
}

/// Attaches what was being done to a cuDNN status.
pub(crate) fn cudnn_error(what: impl FnOnce() -> String) -> impl FnOnce(CudnnError) -> Error {
    move |source| Error::Cudnn {
        what: what(),
        source,
    }
}

/// A cuDNN handle whose work goes to one stream of one GPU.
///
/// cuDNN handles may be used from any thread, one at a time: the owner uses this through
/// `&self` from the thread that holds it, and every call first makes the GPU's context
/// current on that thread (cuDNN allocates through the CUDA runtime, which uses the current
/// context).
pub struct CudnnHandle {
    raw: sys::cudnnHandle_t,
    gpu: Arc<Gpu>,
    stream: Arc<CudaStream>,
}

// SAFETY: see the type's docs: the handle is a host object used by one thread at a time.
unsafe impl Send for CudnnHandle {}

impl CudnnHandle {
    /// A handle on `stream` of `gpu`; loads cuDNN first ([`library`]).
    pub fn new(gpu: &Arc<Gpu>, stream: &Arc<CudaStream>) -> Result<CudnnHandle> {
        library()?;
        let what = || format!("creating a cuDNN handle on cuda:{}", gpu.ordinal());
        gpu.ctx().bind_to_thread().cuda(what)?;
        let raw = result::create_handle().map_err(cudnn_error(what))?;
        let handle = CudnnHandle {
            raw,
            gpu: gpu.clone(),
            stream: stream.clone(),
        };
        // SAFETY: both are live; the stream outlives the handle (held in it).
        unsafe { result::set_stream(raw, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(cudnn_error(what))?;
        Ok(handle)
    }

    /// The raw handle, after making its GPU's context current on this thread.
    pub fn bind(&self) -> Result<sys::cudnnHandle_t> {
        self.gpu
            .ctx()
            .bind_to_thread()
            .cuda(|| format!("binding cuda:{} for cuDNN", self.gpu.ordinal()))?;
        Ok(self.raw)
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The stream cuDNN's work goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl Drop for CudnnHandle {
    fn drop(&mut self) {
        // cuDNN frees the handle's device memory in the current context. Failures only leak,
        // and a drop cannot report them.
        let _ = self.gpu.ctx().bind_to_thread();
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { result::destroy_handle(self.raw) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_no_library_is_reported_with_the_loader_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SONAME), "not a library").unwrap();
        let e = locate(Some(dir.path().as_os_str()), &[]).unwrap_err();
        assert!(
            e.starts_with("ATTNRT_CUDNN_LIB=")
                && e.contains("dlopen failed: ")
                && e.contains(SONAME),
            "{e}"
        );
        // A record naming a folder without the library is skipped, and said so.
        let record = dir.path().join("cudnn-path");
        std::fs::write(&record, "/nonexistent/cudnn/lib\n").unwrap();
        if let Err(e) = locate(None, &[record]) {
            assert!(e.contains("/nonexistent/cudnn/lib"), "{e}");
        }
    }

    #[test]
    fn a_missing_library_names_what_was_tried_and_how_to_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = missing(locate(Some(dir.path().as_os_str()), &[]).unwrap_err()).to_string();
        for part in [
            "cuDNN (libcudnn.so.9)",
            "ATTNRT_CUDNN_LIB=",
            "libcudnn.so.9 does not exist",
            "scripts/setup-cuda.sh",
            "import nvidia.cudnn",
        ] {
            assert!(e.contains(part), "{part:?} missing from: {e}");
        }
    }
}
