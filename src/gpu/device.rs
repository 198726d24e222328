//! Device discovery and selection.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use cudarc::driver::{CudaContext, CudaModule, CudaSlice, CudaStream, sys};

use crate::error::{CudaContext as _, Error, Result};

use super::images::KernelModule;
use super::module::Kernel;

/// Number of CUDA devices, or [`Error::NoGpu`] saying why there are none usable.
pub fn device_count() -> Result<usize> {
    // SAFETY: only probes whether the driver library can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::NoGpu {
            reason: "the CUDA driver library (libcuda.so) was not found".into(),
        });
    }
    let n = CudaContext::device_count().map_err(|e| Error::NoGpu {
        reason: format!("the CUDA driver reports no usable device ({e})"),
    })?;
    if n <= 0 {
        return Err(Error::NoGpu {
            reason: "the CUDA driver reports 0 devices".into(),
        });
    }
    Ok(n as usize)
}

/// `--device auto`: what `gpu` made, or what `cpu` makes with the reason when the machine has
/// no usable GPU ([`Error::NoGpu`]: no driver, no device, no compiled kernels). Any other
/// failure (out of device memory, a missing cuDNN, a kernel that does not load) is returned:
/// a user with a GPU wants to know that it failed, not a CPU run a thousand times slower.
pub fn gpu_or_cpu<N>(
    gpu: Result<N>,
    cpu: impl FnOnce() -> Result<N>,
) -> Result<(N, Option<String>)> {
    match gpu {
        Ok(n) => Ok((n, None)),
        Err(Error::NoGpu { reason }) => Ok((cpu()?, Some(reason))),
        Err(e) => Err(e),
    }
}

/// One GPU: its context, a main stream, and the modules and kernels loaded on it so far.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    loaded: Mutex<Loaded>,
    /// [`Gpu::stream_scratch`]'s buffers by stream, while someone holds them.
    scratch: Mutex<HashMap<usize, Weak<CudaSlice<u8>>>>,
}

/// What [`Gpu::kernel`] has loaded: each module once, each kernel's function once, so a
/// launcher that looks its kernel up again pays a map lookup, not a driver call.
#[derive(Default)]
struct Loaded {
    modules: HashMap<KernelModule, Arc<CudaModule>>,
    kernels: HashMap<(KernelModule, &'static str), Kernel>,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu({})", self.ctx.ordinal())
    }
}

impl Gpu {
    /// Opens device `ordinal`, with cudarc's event tracking off (see the module docs).
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::NoGpu {
                reason: format!("device cuda:{ordinal} asked for, but only {count} present"),
            });
        }
        let ctx = CudaContext::new(ordinal).cuda(|| format!("opening device cuda:{ordinal}"))?;
        // SAFETY: called before any allocation or stream exists on this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .cuda(|| format!("creating a stream on cuda:{ordinal}"))?;
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            loaded: Mutex::new(Loaded::default()),
            scratch: Mutex::new(HashMap::new()),
        }))
    }

    pub fn ctx(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The main stream: work not forked elsewhere runs here.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// "NVIDIA H100 80GB HBM3 (sm_90)", for reports.
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        match self.ctx.compute_capability() {
            Ok((maj, min)) => format!("{name} (sm_{maj}{min})"),
            Err(_) => name,
        }
    }

    /// Streaming multiprocessors on this device (what grids are sized by).
    pub fn multiprocessors(&self) -> Result<usize> {
        let attr =
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
        self.ctx
            .attribute(attr)
            .map(|n| n.max(1) as usize)
            .cuda(|| "reading the multiprocessor count".into())
    }

    /// The named kernel of `module`, loading the module on this device the first time it is
    /// asked for and the kernel's function the first time it is named.
    pub fn kernel(&self, module: KernelModule, name: &'static str) -> Result<Kernel> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = loaded.kernels.get(&(module, name)) {
            return Ok(k.clone());
        }
        let m = match loaded.modules.get(&module) {
            Some(m) => m.clone(),
            None => {
                let image = module.image().ok_or_else(|| Error::NoGpu {
                    reason: not_compiled_reason(),
                })?;
                let m = self
                    .ctx
                    .load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec()))
                    .cuda(|| format!("loading kernels/{}.cu", module.name()))?;
                loaded.modules.insert(module, m.clone());
                m
            }
        };
        let func = m
            .load_function(name)
            .cuda(|| format!("finding kernel {name} in kernels/{}.cu", module.name()))?;
        let kernel = Kernel::new(name, func);
        loaded.kernels.insert((module, name), kernel.clone());
        Ok(kernel)
    }

    /// A scratch buffer of `bytes` shared by everyone who asks for one on `stream` while it
    /// is held (the last holder's drop frees it): work on one stream runs one launch at a
    /// time, so its users never need it at once. cuBLASLt's workspace is one: a CNN replica's
    /// convolutions and linear layers each hold a handle, and two private 32 MiB workspaces
    /// were a tenth of ResNet-50's bf16 peak at 32x32. A holder asking for more than the
    /// buffer has gets a new one, which later askers share.
    pub fn stream_scratch(
        &self,
        stream: &Arc<CudaStream>,
        bytes: usize,
        what: &str,
    ) -> Result<Arc<CudaSlice<u8>>> {
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let key = stream.cu_stream() as usize;
        if let Some(buf) = scratch.get(&key).and_then(Weak::upgrade)
            && buf.len() >= bytes
        {
            return Ok(buf);
        }
        let buf = Arc::new(
            stream
                .alloc_zeros::<u8>(bytes)
                .cuda(|| format!("allocating {what} ({bytes} bytes)"))?,
        );
        scratch.insert(key, Arc::downgrade(&buf));
        Ok(buf)
    }

    /// The most device memory in use at once since the last
    /// [`reset_memory_peak`](Self::reset_memory_peak), in bytes: the high-water mark of the
    /// memory pool that cudarc allocates every buffer from (`CU_MEMPOOL_ATTR_USED_MEM_HIGH`).
    /// Buffers a caller keeps for reuse count (the CNN walker's free-buffer pool), as PyTorch's
    /// `max_memory_reserved` counts its cached blocks: that is the comparable PyTorch figure,
    /// and `max_memory_allocated` a lower one. Counted for the
    /// device: every context of this process on it. `None` where allocations bypass the pool
    /// (no stream-ordered allocator).
    pub fn memory_peak(&self) -> Result<Option<u64>> {
        let Some(pool) = self.pool()? else {
            return Ok(None);
        };
        let mut bytes: u64 = 0;
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        // SAFETY: `pool` is the device's current pool; the attribute is a cuuint64_t.
        unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&raw mut bytes).cast()) }
            .result()
            .cuda(|| format!("reading cuda:{}'s peak memory", self.ordinal()))?;
        Ok(Some(bytes))
    }

    /// Starts [`memory_peak`](Self::memory_peak) again from the memory in use now.
    pub fn reset_memory_peak(&self) -> Result<()> {
        let Some(pool) = self.pool()? else {
            return Ok(());
        };
        let mut zero: u64 = 0;
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        // SAFETY: as in memory_peak; setting the high-water mark takes 0 only.
        unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&raw mut zero).cast()) }
            .result()
            .cuda(|| format!("resetting cuda:{}'s peak memory", self.ordinal()))
    }

    /// The device's current memory pool, where cudarc allocates from one.
    fn pool(&self) -> Result<Option<sys::CUmemoryPool>> {
        if !self.ctx.has_async_alloc() {
            return Ok(None);
        }
        let mut pool = std::ptr::null_mut();
        // SAFETY: a valid out-pointer and device.
        unsafe { sys::cuDeviceGetMemPool(&mut pool, self.ctx.cu_device()) }
            .result()
            .cuda(|| format!("finding cuda:{}'s memory pool", self.ordinal()))?;
        Ok(Some(pool))
    }

    /// Blocks until all work on the main stream is done.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().cuda(|| "synchronising".into())
    }

    /// Runs `f` and waits for its work with the profiler collecting, so a profiler started
    /// with collection off (`ncu --profile-from-start off`) sees only that work, not the
    /// set-up and warm-up around it. Without a profiler attached it just runs `f`.
    pub fn profiled<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        use cudarc::driver::sys;
        self.ctx
            .bind_to_thread()
            .cuda(|| "making the context current to start the profiler".into())?;
        // SAFETY: the context is current on this thread; both calls take no arguments.
        unsafe { sys::cuProfilerStart() }
            .result()
            .cuda(|| "starting the profiler".into())?;
        let out = f().and_then(|v| self.sync().map(|()| v));
        // SAFETY: as above; stopping is attempted even when `f` failed.
        let stopped = unsafe { sys::cuProfilerStop() }
            .result()
            .cuda(|| "stopping the profiler".into());
        let v = out?;
        stopped?;
        Ok(v)
    }
}

fn not_compiled_reason() -> String {
    "this build has no compiled CUDA kernels (nvcc was not found when it was built); \
     run scripts/setup-cuda.sh, then rebuild"
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_only_without_a_usable_gpu() {
        let none = Err(Error::NoGpu {
            reason: "the CUDA driver reports 0 devices".into(),
        });
        let (got, why) = gpu_or_cpu(none, || Ok("cpu")).unwrap();
        assert_eq!(
            (got, why.as_deref()),
            ("cpu", Some("the CUDA driver reports 0 devices"))
        );
        assert_eq!(gpu_or_cpu(Ok("gpu"), || Ok("cpu")).unwrap(), ("gpu", None));
        let failures = [
            Error::MissingLibrary {
                library: "cuDNN".into(),
                reason: "libcudnn.so.9 not found".into(),
            },
            Error::invalid("allocating 4096 tracker activations", "out of memory"),
        ];
        for failure in failures {
            let said = failure.to_string();
            let e = gpu_or_cpu::<&str>(Err(failure), || panic!("fell back")).unwrap_err();
            assert_eq!(e.to_string(), said);
        }
    }
}
