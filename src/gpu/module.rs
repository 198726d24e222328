//! Named kernel handles and launches that put the kernel's name on any error.

use cudarc::driver::{CudaFunction, CudaStream, LaunchArgs, LaunchConfig, PushKernelArg};

use crate::error::{CudaContext as _, Result};

/// A kernel function loaded on one device, with its name for errors and profiles.
#[derive(Debug, Clone)]
pub struct Kernel {
    name: &'static str,
    func: CudaFunction,
}

impl Kernel {
    pub(super) fn new(name: &'static str, func: CudaFunction) -> Self {
        Kernel { name, func }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Lets launches of this kernel use up to `bytes` of dynamic shared memory: above 48 KB
    /// a kernel must opt in (the device's per-block limit still applies).
    pub fn allow_dynamic_shared(&self, bytes: usize) -> Result<()> {
        let attr = cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        self.func.set_attribute(attr, bytes as i32).cuda(|| {
            format!(
                "allowing kernel {} {bytes} bytes of shared memory",
                self.name
            )
        })
    }

    /// Starts a launch of this kernel on `stream`; push the arguments, then [`Launch::go`].
    pub fn on<'a>(&'a self, stream: &'a CudaStream) -> Launch<'a> {
        Launch {
            name: self.name,
            args: stream.launch_builder(&self.func),
        }
    }
}

/// A launch being built: the arguments in the kernel's order, then [`Launch::go`].
pub struct Launch<'a> {
    name: &'static str,
    args: LaunchArgs<'a>,
}

impl<'a> Launch<'a> {
    pub fn arg<T>(&mut self, value: T) -> &mut Self
    where
        LaunchArgs<'a>: PushKernelArg<T>,
    {
        self.args.arg(value);
        self
    }

    /// Submits the launch.
    ///
    /// # Safety
    /// The arguments must match the kernel's signature, and the buffers must be large enough
    /// for `cfg`: the typed launchers in `crate::kernels` check shapes before calling this.
    pub unsafe fn go(&mut self, cfg: LaunchConfig) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.args.launch(cfg) }
            .map(|_| ())
            .cuda(|| format!("kernel {}", self.name))
    }
}
