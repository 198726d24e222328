//! Raw device pointers for the kernels that take their arguments as one `#[repr(C)]` struct
//! (mirrored in the `.cu` file), which keeps long argument lists in one named place and lets
//! optional tensors be null.
//!
//! Taking the pointer drops cudarc's `SyncOnDrop` guard at once: that guard records
//! per-allocation events, and event tracking is off on our contexts (see `crate::gpu`), so
//! it does nothing. Ordering between streams is the caller's, as everywhere in the engine.

use cudarc::driver::{CudaStream, CudaView, DevicePtr, DevicePtrMut};

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
