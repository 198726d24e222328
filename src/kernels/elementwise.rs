//! Launchers for `kernels/elementwise.cu`: residual adds, the position embedding, ReLU and
//! its backward, a residual add and its ReLU in one (the adds and ReLUs in f32 or bf16), and rows scaled by their dot product with a vector (the tracker's corner head
//! input). Each works on the first `n` elements of its buffers.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::conv2d::Element;
use super::launch::{Args, by_dtype, elementwise, ptr, ptr_mut, vector_width, warp_rows};
use crate::error::Result;
use crate::gpu::{Gpu, Kernel};

/// The kernels of `kernels/elementwise.cu`, loaded once.
#[derive(Debug, Clone)]
pub struct ElementwiseKernels {
    add: [Kernel; 2],
    add_periodic: Kernel,
    relu: [Kernel; 2],
    relu_backward: [Kernel; 2],
    add_relu: [Kernel; 2],
    scale_by_dot_f32: Kernel,
    scale_by_dot_bf16: Kernel,
}

impl ElementwiseKernels {
    pub fn load(gpu: &Gpu) -> Result<ElementwiseKernels> {
        let k = |name| gpu.kernel(KernelModule::Elementwise, name);
        Ok(ElementwiseKernels {
            add: [k("add_f32")?, k("add_bf16")?],
            add_periodic: k("add_periodic_f32")?,
            relu: [k("relu_f32")?, k("relu_bf16")?],
            relu_backward: [k("relu_backward_f32")?, k("relu_backward_bf16")?],
            add_relu: [k("add_relu_f32")?, k("add_relu_bf16")?],
            scale_by_dot_f32: k("scale_by_dot_f32")?,
            scale_by_dot_bf16: k("scale_by_dot_bf16")?,
        })
    }

    /// `y[i] += x[i]` (f32 or bf16).
    pub fn add<T: Element>(
        &self,
        stream: &CudaStream,
        y: &mut impl DevicePtrMut<T>,
        x: &impl DevicePtr<T>,
        n: usize,
    ) -> Result<()> {
        let vec = vector_width::<T>(n, &[ptr_mut(y, stream), ptr(x, stream)]);
        let args = Args::new(by_dtype::<T>(&self.add), stream)
            .output("y", y, n)?
            .input("x", x, n)?
            .long(n)
            .int("vec", vec)?;
        // SAFETY: add_<dtype>(T* y, const T* x, long long n, int vec); both hold n; vec
        // divides n and both addresses' alignment in values.
        unsafe { args.launch(elementwise(n / vec)) }
    }

    /// `y[i] += pos[i % period]`.
    pub fn add_periodic(
        &self,
        stream: &CudaStream,
        y: &mut impl DevicePtrMut<f32>,
        pos: &impl DevicePtr<f32>,
        n: usize,
        period: usize,
    ) -> Result<()> {
        let args = Args::new(&self.add_periodic, stream)
            .output("y", y, n)?
            .input("pos", pos, period)?
            .long(n)
            .int("period", period)?;
        // SAFETY: add_periodic_f32(float* y, const float* pos, long long n, int period);
        // y holds n, pos one period.
        unsafe { args.launch(elementwise(n)) }
    }

    /// `y[i] = max(x[i], 0)` (f32 or bf16).
    pub fn relu<T: Element>(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
        n: usize,
    ) -> Result<()> {
        let args = Args::new(by_dtype::<T>(&self.relu), stream)
            .input("x", x, n)?
            .output("y", y, n)?
            .long(n);
        // SAFETY: relu_<dtype>(const T* x, T* y, long long n); both hold n.
        unsafe { args.launch(elementwise(n)) }
    }

    /// `dx[i] = 0` where `y[i] <= 0` (`y`: the ReLU's output; f32 or bf16).
    pub fn relu_backward<T: Element>(
        &self,
        stream: &CudaStream,
        dx: &mut impl DevicePtrMut<T>,
        y: &impl DevicePtr<T>,
        n: usize,
    ) -> Result<()> {
        let vec = vector_width::<T>(n, &[ptr_mut(dx, stream), ptr(y, stream)]);
        let args = Args::new(by_dtype::<T>(&self.relu_backward), stream)
            .output("dx", dx, n)?
            .input("y", y, n)?
            .long(n)
            .int("vec", vec)?;
        // SAFETY: relu_backward_<dtype>(T* dx, const T* y, long long n, int vec); both hold
        // n; vec divides n and both addresses' alignment in values.
        unsafe { args.launch(elementwise(n / vec)) }
    }

    /// `y[i] = max(a[i] + b[i], 0)` (f32 or bf16; `y` apart from `a` and `b`).
    pub fn add_relu<T: Element>(
        &self,
        stream: &CudaStream,
        a: &impl DevicePtr<T>,
        b: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
        n: usize,
    ) -> Result<()> {
        let vec = vector_width::<T>(n, &[ptr(a, stream), ptr(b, stream), ptr_mut(y, stream)]);
        let args = Args::new(by_dtype::<T>(&self.add_relu), stream)
            .input("a", a, n)?
            .input("b", b, n)?
            .output("y", y, n)?
            .long(n)
            .int("vec", vec)?;
        // SAFETY: add_relu_<dtype>(const T* a, const T* b, T* y, long long n, int vec); all
        // hold n; vec divides n and every address's alignment in values.
        unsafe { args.launch(elementwise(n / vec)) }
    }

    /// `y[r] = x[r] * dot(x[r], v)` over `rows` rows of `v.len()` values; `y` in `T` (f32,
    /// or bf16 rounded to nearest even).
    pub fn scale_by_dot<T: Element>(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<f32>,
        v: &impl DevicePtr<f32>,
        y: &mut impl DevicePtrMut<T>,
        rows: usize,
    ) -> Result<()> {
        let k = if T::NAME == "f32" {
            &self.scale_by_dot_f32
        } else {
            &self.scale_by_dot_bf16
        };
        let width = v.len();
        let args = Args::new(k, stream)
            .input("x", x, rows * width)?
            .input("v", v, width)?
            .output("y", y, rows * width)?
            .int("rows", rows)?
            .int("width", width)?;
        // SAFETY: scale_by_dot_<dtype>(const float* x, const float* v, T* y, int rows, int
        // width); one warp per row (warp_rows), x and y hold rows * width, v width.
        unsafe { args.launch(warp_rows(rows)) }
    }
}
