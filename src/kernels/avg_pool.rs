//! `avg_pool`: PyTorch's `AvgPool2d` (floor mode, `count_include_pad`) and
//! `AdaptiveAvgPool2d` over NHWC tensors, forward and backward. [`cpu`] is the reference
//! (its [`Windows`](cpu::Windows) describe both kinds); [`AvgPoolKernels`] launches
//! `kernels/avg_pool.cu` on f32 or bf16 activations (f32 sums), described by [`AvgWindows`].

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::conv2d::Element;
use super::launch::{Args, by_dtype, elementwise};
use super::pool::Pool2d;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};

/// The windows of a GPU average pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AvgWindows {
    /// `AvgPool2d`'s.
    Fixed(Pool2d),
    /// `AdaptiveAvgPool2d((out_h, out_w))`'s over `[batch, height, width, channels]`.
    Adaptive { input: [usize; 4], out: [usize; 2] },
}

impl AvgWindows {
    /// `[batch, height, width, channels]` of the input.
    fn input(&self) -> [usize; 4] {
        match self {
            AvgWindows::Fixed(p) => [p.batch, p.height, p.width, p.channels],
            AvgWindows::Adaptive { input, .. } => *input,
        }
    }

    fn out_size(&self) -> [usize; 2] {
        match self {
            AvgWindows::Fixed(p) => p.out_size(),
            AvgWindows::Adaptive { out, .. } => *out,
        }
    }

    pub fn input_len(&self) -> usize {
        self.input().iter().product()
    }

    pub fn output_len(&self) -> usize {
        let [n, _, _, c] = self.input();
        let [oh, ow] = self.out_size();
        n * oh * ow * c
    }

    fn check(&self) -> Result<()> {
        match self {
            AvgWindows::Fixed(p) => p.check("avg_pool"),
            AvgWindows::Adaptive { input, out } => {
                if input.contains(&0) || out.contains(&0) || self.input_len() > i32::MAX as usize {
                    return Err(Error::invalid(
                        "adaptive_avg_pool",
                        format!(
                            "input {input:?} to {out:?}: sizes must be positive and the input under 2^31 values"
                        ),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Pushes the geometry arguments both kernels end with.
    fn push<'a>(&self, args: Args<'a>) -> Result<Args<'a>> {
        let [n, h, w, c] = self.input();
        let [oh, ow] = self.out_size();
        let (k, s, p, adaptive) = match self {
            AvgWindows::Fixed(p) => (p.kernel, p.stride, p.pad, 0),
            AvgWindows::Adaptive { .. } => (1, 1, 0, 1),
        };
        args.int("batch", n)?
            .int("height", h)?
            .int("width", w)?
            .int("channels", c)?
            .int("out height", oh)?
            .int("out width", ow)?
            .int("kernel", k)?
            .int("stride", s)?
            .int("pad", p)?
            .int("adaptive", adaptive)
    }
}

/// `avg_pool_<dtype>` and `avg_pool_backward_<dtype>`, loaded once.
#[derive(Debug, Clone)]
pub struct AvgPoolKernels {
    forward: [Kernel; 2],
    backward: [Kernel; 2],
}

impl AvgPoolKernels {
    pub fn load(gpu: &Gpu) -> Result<AvgPoolKernels> {
        let k = |name| gpu.kernel(KernelModule::AvgPool, name);
        Ok(AvgPoolKernels {
            forward: [k("avg_pool_f32")?, k("avg_pool_bf16")?],
            backward: [k("avg_pool_backward_f32")?, k("avg_pool_backward_bf16")?],
        })
    }

    /// `y` = the average of every window of `x`.
    pub fn forward<T: Element>(
        &self,
        stream: &CudaStream,
        windows: &AvgWindows,
        x: &impl DevicePtr<T>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        windows.check()?;
        let n = windows.output_len();
        let args = Args::new(by_dtype::<T>(&self.forward), stream)
            .input("x", x, windows.input_len())?
            .output("y", y, n)?;
        let args = windows.push(args)?;
        // SAFETY: avg_pool_<dtype>(const T* x, T* y, geometry); x holds the input, y one
        // value per output, and every window lies inside the input (clipped).
        unsafe { args.launch(elementwise(n)) }
    }

    /// `dx` = every output's gradient spread evenly over its window (gathered: deterministic).
    pub fn backward<T: Element>(
        &self,
        stream: &CudaStream,
        windows: &AvgWindows,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        windows.check()?;
        let n = windows.input_len();
        let args = Args::new(by_dtype::<T>(&self.backward), stream)
            .input("dy", dy, windows.output_len())?
            .output("dx", dx, n)?;
        let args = windows.push(args)?;
        // SAFETY: avg_pool_backward_<dtype>(const T* dy, T* dx, geometry); dy holds the
        // outputs, dx the inputs.
        unsafe { args.launch(elementwise(n)) }
    }
}
