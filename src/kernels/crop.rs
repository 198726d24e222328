//! Launchers for `kernels/crop.cu`: a window of a `uint8` RGB frame, zero-padded, resized as
//! OpenCV resizes `uint8` images, normalised to f32 or bf16 NHWC, with its padding mask, in
//! one launch. [`cpu`] is the reference (bit for bit).
//!
//! The window is read from device memory ([`DeviceWindow`]), so a CUDA graph captured around
//! the launch crops wherever the host last put the window.

pub mod cpu;

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaViewMut, DevicePtr, DevicePtrMut};

use self::cpu::{CropWindow, MEAN, STD};
use super::KernelModule;
use super::conv2d::Element;
use super::launch::{Args, elementwise};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::{DeviceBuffer, Gpu, Kernel};

/// `crop_f32` and `crop_bf16`, loaded once.
#[derive(Debug, Clone)]
pub struct CropKernels {
    f32: Kernel,
    bf16: Kernel,
}

/// A crop window in device memory, checked against the frame size it was written for.
pub struct DeviceWindow {
    words: DeviceBuffer<i32>,
    /// `(width, height)` of the frames the window was checked against.
    frame: (usize, usize),
    window: Option<CropWindow>,
}

impl DeviceWindow {
    pub fn new(stream: &Arc<CudaStream>) -> Result<DeviceWindow> {
        Ok(DeviceWindow {
            words: stream
                .alloc_zeros::<i32>(7)
                .cuda(|| "allocating a crop window".into())?,
            frame: (0, 0),
            window: None,
        })
    }

    /// Writes `win` for frames of `width x height` (ordered on `stream`): an error unless
    /// every unpadded pixel lies in such a frame and the sizes fit the kernel's `int`s.
    pub fn write(
        &mut self,
        stream: &Arc<CudaStream>,
        win: &CropWindow,
        width: usize,
        height: usize,
    ) -> Result<()> {
        let limit = i32::MAX as i64;
        let words = [
            win.size as i64,
            win.x1,
            win.y1,
            win.x1_pad as i64,
            win.x2_pad as i64,
            win.y1_pad as i64,
            win.y2_pad as i64,
        ];
        if !win.fits(width, height) || words.iter().any(|w| w.abs() > limit) {
            return Err(Error::invalid(
                "crop window",
                format!("{win:?} does not fit a {width}x{height} frame in 32-bit indices"),
            ));
        }
        let words = words.map(|w| w as i32);
        stream
            .memcpy_htod(&words, &mut self.words)
            .cuda(|| "writing the crop window".into())?;
        self.frame = (width, height);
        self.window = Some(*win);
        Ok(())
    }

    /// The window written last.
    pub fn window(&self) -> Option<CropWindow> {
        self.window
    }
}

/// Where [`CropKernels::run`] writes besides the normalised crop.
#[derive(Default)]
pub struct CropExtras<'a> {
    /// The resized pixels, `output^2 x 3` bytes.
    pub pixels: Option<CudaViewMut<'a, u8>>,
    /// The padding mask, `output^2` bytes, 1 = padded.
    pub mask: Option<CudaViewMut<'a, u8>>,
}

impl CropKernels {
    pub fn load(gpu: &Gpu) -> Result<CropKernels> {
        let k = |name| gpu.kernel(KernelModule::Crop, name);
        Ok(CropKernels {
            f32: k("crop_f32")?,
            bf16: k("crop_bf16")?,
        })
    }

    /// `out` (`output x output x 3`, NHWC) = the normalised crop of `window` in `frame`
    /// (`height x width x 3` bytes); `extras` receive the pixels and the mask.
    #[allow(clippy::too_many_arguments)]
    pub fn run<T: Element>(
        &self,
        stream: &CudaStream,
        frame: &impl DevicePtr<u8>,
        (height, width): (usize, usize),
        window: &DeviceWindow,
        output: usize,
        out: &mut impl DevicePtrMut<T>,
        extras: CropExtras<'_>,
    ) -> Result<()> {
        let k = match T::NAME {
            "f32" => &self.f32,
            _ => &self.bf16,
        };
        if window.window.is_none() || window.frame != (width, height) {
            return Err(Error::invalid(
                k.name(),
                format!(
                    "the window was written for a {}x{} frame, the frame is {width}x{height}",
                    window.frame.0, window.frame.1
                ),
            ));
        }
        let pixels = output * output;
        let mut args = Args::new(k, stream)
            .input("frame", frame, height * width * 3)?
            .int("height", height)?
            .int("width", width)?
            .input("window", &window.words, 7)?
            .int("output", output)?;
        for v in MEAN.into_iter().chain(STD) {
            args = args.float(v);
        }
        args = args.output("out", out, pixels * 3)?;
        args = match extras.pixels {
            Some(mut p) => args.output("pixels", &mut p, pixels * 3)?,
            None => args.address(0),
        };
        args = match extras.mask {
            Some(mut m) => args.output("mask", &mut m, pixels)?,
            None => args.address(0),
        };
        // SAFETY: crop_<dtype>(const u8* frame, int height, int width, const int* window,
        // int output, float mean[3], float std[3], T* out, u8* pixels, u8* mask); every
        // buffer holds what its threads touch, and the window was checked against this
        // frame size when written (DeviceWindow::write), so every frame read is inside.
        unsafe { args.launch(elementwise(pixels)) }
    }
}
