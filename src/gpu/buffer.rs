//! Typed device buffers (f32, and f16/bf16 through `half`) and the host transfers tests and
//! engines need.

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};

use crate::error::{CudaContext as _, Result};

/// A typed device allocation. cudarc's `CudaSlice` is exactly that; the alias names our use.
pub type DeviceBuffer<T> = CudaSlice<T>;

/// Copies `host` into a new device buffer, ordered on `stream`.
pub fn upload<T: DeviceRepr>(
    stream: &std::sync::Arc<CudaStream>,
    host: &[T],
) -> Result<DeviceBuffer<T>> {
    stream
        .clone_htod(host)
        .cuda(|| format!("uploading {} elements", host.len()))
}

/// Copies a device buffer back to the host; waits for `stream`.
pub fn download<T: DeviceRepr + Default + Clone, B: DevicePtr<T>>(
    stream: &std::sync::Arc<CudaStream>,
    buf: &B,
) -> Result<Vec<T>> {
    let v = stream
        .clone_dtoh(buf)
        .cuda(|| format!("downloading {} elements", buf.len()))?;
    stream
        .synchronize()
        .cuda(|| "synchronising after a download".into())?;
    Ok(v)
}

/// Fills a buffer with all-ones bytes, a NaN in f32, f16 and bf16 alike, so that an element a
/// kernel fails to write shows up in every comparison.
pub fn poison_nan<T, B: DevicePtrMut<T>>(stream: &CudaStream, buf: &mut B) -> Result<()> {
    let bytes = buf.num_bytes();
    let (ptr, _sync) = buf.device_ptr_mut(stream);
    // SAFETY: `ptr` addresses `bytes` bytes of this live allocation, ordered on `stream`.
    unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream()) }
        .cuda(|| format!("poisoning {bytes} bytes"))
}
