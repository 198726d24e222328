//! Launchers for `kernels/smoke.cu`.

use cudarc::driver::{CudaStream, LaunchConfig};

use crate::error::{Error, Result};
use crate::gpu::{DeviceBuffer, Gpu};

use super::KernelModule;

/// `y = a * x + y`, elementwise.
pub fn axpy(
    gpu: &Gpu,
    stream: &CudaStream,
    a: f32,
    x: &DeviceBuffer<f32>,
    y: &mut DeviceBuffer<f32>,
) -> Result<()> {
    if x.len() != y.len() {
        return Err(Error::invalid(
            "axpy_f32",
            format!("x has {} elements but y has {}", x.len(), y.len()),
        ));
    }
    let n = x.len() as i64;
    let k = gpu.kernel(KernelModule::Smoke, "axpy_f32")?;
    let cfg = LaunchConfig::for_num_elems(x.len().max(1) as u32);
    // SAFETY: argument types match the kernel; both buffers hold n elements.
    unsafe { k.on(stream).arg(&a).arg(x).arg(y).arg(&n).go(cfg) }
}
