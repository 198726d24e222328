//! The one launch path of every launcher: host-side checks that name the kernel and the buffer,
//! the grids the kernels are written for, raw device addresses, and [`Args`], which assembles
//! a launch argument by argument, checking each buffer against the elements the launch
//! touches, and submits it.
//!
//! Taking a buffer's address drops cudarc's `SyncOnDrop` guard at once: that guard records
//! per-allocation events, and event tracking is off on our contexts (see `crate::gpu`), so
//! it does nothing. Ordering between streams is the caller's, as everywhere in the engine.

use cudarc::driver::{CudaStream, CudaView, DevicePtr, DevicePtrMut, LaunchConfig};

use super::conv2d::Element;
use crate::error::{Error, Result};
use crate::gpu::Kernel;

/// Fails unless `len == want`.
pub(crate) fn check_len(kernel: &str, what: &str, len: usize, want: usize) -> Result<()> {
    if len == want {
        Ok(())
    } else {
        Err(Error::invalid(
            kernel,
            format!("{what} has {len} elements, expected {want}"),
        ))
    }
}

/// Fails unless `len >= need`: for buffers a launch reads or writes only a prefix of.
pub(crate) fn check_at_least(kernel: &str, what: &str, len: usize, need: usize) -> Result<()> {
    if len >= need {
        Ok(())
    } else {
        Err(Error::invalid(
            kernel,
            format!("{what} has {len} elements, needs at least {need}"),
        ))
    }
}

/// A grid for element-wise work over `n` items: 256 threads a block, at most 65,535 blocks
/// (the kernels stride over the rest).
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The values of `T` a thread of a vectorised element-wise kernel handles (`dtype.cuh`'s
/// `load_vec`): the largest of 8, 4 and 2 that divides `n` (the values a row must not split:
/// a batch norm's channels) and every address in `addrs` in values, else 1.
pub(crate) fn vector_width<T>(n: usize, addrs: &[u64]) -> usize {
    let elem = size_of::<T>();
    [8, 4, 2]
        .into_iter()
        .find(|&v| n.is_multiple_of(v) && addrs.iter().all(|a| a.is_multiple_of((v * elem) as u64)))
        .unwrap_or(1)
}

/// A grid for the kernels that give each of `rows` rows one warp: 8 rows a block.
pub(crate) fn warp_rows(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The kernel of a `[f32, bf16]` pair for activations of type `T`.
pub(crate) fn by_dtype<T: Element>(pair: &[Kernel; 2]) -> &Kernel {
    if T::NAME == "f32" { &pair[0] } else { &pair[1] }
}

/// The device address of `buf` (read).
pub(crate) fn ptr<T>(buf: &impl DevicePtr<T>, stream: &CudaStream) -> u64 {
    buf.device_ptr(stream).0
}

/// The device address of `buf` (write).
pub(crate) fn ptr_mut<T>(buf: &mut impl DevicePtrMut<T>, stream: &CudaStream) -> u64 {
    buf.device_ptr_mut(stream).0
}

/// The address of an optional tensor, null when absent.
pub(crate) fn opt_ptr<T>(buf: Option<&CudaView<'_, T>>, stream: &CudaStream) -> u64 {
    buf.map_or(0, |b| ptr(b, stream))
}

/// One kernel argument, by value: a device address (`T*`), `int`, `long long` or `float`.
#[derive(Clone, Copy, Debug)]
enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// A launch of `kernel` on `stream` being assembled: push the arguments in the kernel's order,
/// then [`Args::launch`]. Buffers are checked as they are pushed (at least `need` elements),
/// sizes are converted to the kernel's integer types with an error on overflow; every error
/// names the kernel.
pub(crate) struct Args<'a> {
    kernel: &'a Kernel,
    stream: &'a CudaStream,
    args: Vec<Arg>,
}

impl<'a> Args<'a> {
    pub(crate) fn new(kernel: &'a Kernel, stream: &'a CudaStream) -> Args<'a> {
        Args {
            kernel,
            stream,
            args: Vec::with_capacity(16),
        }
    }

    /// A buffer the kernel reads, of at least `need` elements.
    pub(crate) fn input<T>(
        mut self,
        what: &str,
        buf: &impl DevicePtr<T>,
        need: usize,
    ) -> Result<Self> {
        check_at_least(self.kernel.name(), what, buf.len(), need)?;
        self.args.push(Arg::Ptr(ptr(buf, self.stream)));
        Ok(self)
    }

    /// A buffer the kernel writes (and maybe reads), of at least `need` elements.
    pub(crate) fn output<T>(
        mut self,
        what: &str,
        buf: &mut impl DevicePtrMut<T>,
        need: usize,
    ) -> Result<Self> {
        check_at_least(self.kernel.name(), what, buf.len(), need)?;
        self.args.push(Arg::Ptr(ptr_mut(buf, self.stream)));
        Ok(self)
    }

    /// An optional buffer the kernel reads (null when absent), of at least `need` elements.
    pub(crate) fn optional<T>(
        self,
        what: &str,
        buf: Option<&impl DevicePtr<T>>,
        need: usize,
    ) -> Result<Self> {
        match buf {
            Some(b) => self.input(what, b, need),
            None => Ok(self.address(0)),
        }
    }

    /// A raw device address the caller vouches for (memory of another context).
    pub(crate) fn address(mut self, ptr: u64) -> Self {
        self.args.push(Arg::Ptr(ptr));
        self
    }

    /// An `int`: a size or index, `what` naming it in the error when it does not fit.
    pub(crate) fn int(mut self, what: &str, v: usize) -> Result<Self> {
        let v = i32::try_from(v)
            .map_err(|_| Error::invalid(self.kernel.name(), format!("{what} = {v} over i32")))?;
        self.args.push(Arg::I32(v));
        Ok(self)
    }

    /// A `long long` size or index.
    pub(crate) fn long(mut self, v: usize) -> Self {
        self.args.push(Arg::I64(v as i64));
        self
    }

    pub(crate) fn float(mut self, v: f32) -> Self {
        self.args.push(Arg::F32(v));
        self
    }

    /// Submits the launch.
    ///
    /// # Safety
    /// The arguments pushed must match the kernel's signature in order and type, and every
    /// buffer must cover what `cfg`'s threads read and write (the `need` of each push).
    pub(crate) unsafe fn launch(self, cfg: LaunchConfig) -> Result<()> {
        let mut launch = self.kernel.on(self.stream);
        for a in &self.args {
            match a {
                Arg::Ptr(v) => launch.arg(v),
                Arg::I32(v) => launch.arg(v),
                Arg::I64(v) => launch.arg(v),
                Arg::F32(v) => launch.arg(v),
            };
        }
        // SAFETY: forwarded to the caller.
        unsafe { launch.go(cfg) }
    }
}
