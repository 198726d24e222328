//! The library's one error type. Library code returns it and never prints or exits;
//! the binaries turn it into a message and an exit code.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Input that is present but wrong: `context` names the file, tensor, field or flag,
    /// `problem` says what was expected and what was found.
    #[error("{context}: {problem}")]
    Invalid { context: String, problem: String },

    /// No usable GPU: no driver, no device, or the kernels were not compiled into this build.
    #[error("no usable GPU: {reason}")]
    NoGpu { reason: String },

    /// A CUDA driver call failed; `what` names the operation or the kernel.
    #[error("CUDA error in {what}: {source}")]
    Cuda {
        what: String,
        source: cudarc::driver::DriverError,
    },

    /// A cuBLAS call failed; `what` names the operation and its shape.
    #[error("cuBLAS error in {what}: {source}")]
    Blas {
        what: String,
        source: cudarc::cublas::result::CublasError,
    },

    /// A cuBLASLt call failed; `what` names the operation and its shape.
    #[error("cuBLASLt error in {what}: {source}")]
    BlasLt {
        what: String,
        source: cudarc::cublaslt::result::CublasError,
    },

    /// A cuDNN call failed; `what` names the operation and its shape.
    #[error("cuDNN error in {what}: {source}")]
    Cudnn {
        what: String,
        source: cudarc::cudnn::result::CudnnError,
    },

    /// A library loaded at run time is missing or unusable; `reason` says what was tried
    /// and how to get it.
    #[error("{library} is not available: {reason}")]
    MissingLibrary { library: String, reason: String },
}

impl Error {
    pub fn invalid(context: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Invalid {
            context: context.into(),
            problem: problem.into(),
        }
    }

    /// [`Error::invalid`] with a parser's message (TOML, serde), whose lines are joined into
    /// one so that the error stays one line.
    pub fn parse(context: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let message = message.to_string();
        let lines: Vec<&str> = message
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect();
        Error::invalid(context, lines.join(" "))
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Attaches what was being done to a CUDA driver error.
pub trait CudaContext<T> {
    fn cuda(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> CudaContext<T> for std::result::Result<T, cudarc::driver::DriverError> {
    fn cuda(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Cuda {
            what: what(),
            source,
        })
    }
}
