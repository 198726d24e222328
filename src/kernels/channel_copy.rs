//! `channel_copy`: the copies of the CNNs' channel plumbing (DenseNet's concatenation,
//! ShuffleNet's channel split and shuffle, the NHWC-to-PyTorch flatten, and their
//! backwards, and the CNN filters' layout change from the f32 parameters), as one strided,
//! optionally transposing copy (`kernels/channel_copy.cu`) from f32 or bf16 to f32 or bf16.
//! [`cpu`] is its reference; [`Copy2d`] describes one copy.

pub mod cpu;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig};

use super::KernelModule;
use super::conv2d::Element;
use super::launch::{Args, check_at_least, elementwise, ptr, ptr_mut};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};

pub use cpu::Copy2d;

/// The side of `channel_copy_tiled`'s tiles (`TILE` in `kernels/channel_copy.cu`) and the
/// rows of a tile its block covers at once (`TILE_ROWS`).
const TILE: usize = 32;
const TILE_ROWS: usize = 8;

/// The `channel_copy` kernels, loaded once: `[element-wise, tiled]`, each variant at
/// `2 * bf16(source) + bf16(destination)`.
#[derive(Debug, Clone)]
pub struct ChannelCopyKernels {
    kernels: [[Kernel; 4]; 2],
}

impl ChannelCopyKernels {
    pub fn load(gpu: &Gpu) -> Result<ChannelCopyKernels> {
        let k = |name| gpu.kernel(KernelModule::ChannelCopy, name);
        Ok(ChannelCopyKernels {
            kernels: [
                [
                    k("channel_copy_f32")?,
                    k("channel_copy_f32_to_bf16")?,
                    k("channel_copy_bf16_to_f32")?,
                    k("channel_copy_bf16")?,
                ],
                [
                    k("channel_copy_tiled_f32")?,
                    k("channel_copy_tiled_f32_to_bf16")?,
                    k("channel_copy_tiled_bf16_to_f32")?,
                    k("channel_copy_tiled_bf16")?,
                ],
            ],
        })
    }

    /// `copy` from `x` into `y` (added to `y` when `accumulate`), converting from `X` to `Y`
    /// (rounded to nearest even, as [`crate::kernels::cast`]).
    pub fn run<X: Element, Y: Element>(
        &self,
        stream: &CudaStream,
        copy: &Copy2d,
        x: &impl DevicePtr<X>,
        y: &mut impl DevicePtrMut<Y>,
        accumulate: bool,
    ) -> Result<()> {
        let name = self.kernel::<X, Y>(false).name();
        check_at_least(name, "x", x.len(), copy.x_len())?;
        check_at_least(name, "y", y.len(), copy.y_len())?;
        let (x, y) = (ptr(x, stream), ptr_mut(y, stream));
        // SAFETY: x and y were checked to hold the values the copy covers.
        unsafe { self.run_at::<X, Y>(stream, copy, x, y, accumulate) }
    }

    /// [`Self::run`] on raw device addresses, for launchers that hold their buffers as
    /// addresses (the convolutions' channel-major path, [`super::conv2d`]).
    ///
    /// # Safety
    /// `x` and `y` must address at least `copy.x_len()` values of `X` and `copy.y_len()` of
    /// `Y` on `stream`'s device, live until the copy has run.
    pub(crate) unsafe fn run_at<X: Element, Y: Element>(
        &self,
        stream: &CudaStream,
        copy: &Copy2d,
        x: u64,
        y: u64,
        accumulate: bool,
    ) -> Result<()> {
        // A transpose whose sides both fill half a tile or more goes through shared memory
        // (coalesced reads and writes); a thinner one (ShuffleNet's shuffle of 2 groups, a
        // 3-channel image, a plain copy) would leave most of a tile's threads idle, and the
        // element-wise kernel's strided reads span little memory there.
        let tiled = copy.a >= TILE / 2 && copy.b >= TILE / 2;
        let kernel = self.kernel::<X, Y>(tiled);
        copy.check().map_err(|p| Error::invalid(kernel.name(), p))?;
        let grid = if tiled {
            let tiles = copy.a.div_ceil(TILE) * copy.b.div_ceil(TILE);
            LaunchConfig {
                // `check` keeps a x b, so the tiles, below 2^31.
                grid_dim: (tiles as u32, copy.rows.min(65_535) as u32, 1),
                block_dim: (TILE as u32, TILE_ROWS as u32, 1),
                shared_mem_bytes: 0,
            }
        } else {
            elementwise(copy.rows * copy.a * copy.b)
        };
        let args = Args::new(kernel, stream)
            .address(x)
            .address(y)
            .long(copy.rows)
            .int("x stride", copy.x_stride)?
            .int("x offset", copy.x_off)?
            .int("y stride", copy.y_stride)?
            .int("y offset", copy.y_off)?
            .int("a", copy.a)?
            .int("b", copy.b)?
            .int("accumulate", usize::from(accumulate))?;
        // SAFETY: channel_copy{,_tiled}_<variant>(const X* x, Y* y, long long rows, int
        // x_stride, int x_off, int y_stride, int y_off, int a, int b, int accumulate); check
        // keeps every block inside its row, and x and y hold the rows (the caller's promise);
        // the tiled kernel is written for the block and grid above.
        unsafe { args.launch(grid) }
    }

    /// The variant from `X` to `Y`, element-wise or `tiled`.
    fn kernel<X: Element, Y: Element>(&self, tiled: bool) -> &Kernel {
        let bf16 = |name: &str| usize::from(name == "bf16");
        &self.kernels[usize::from(tiled)][2 * bf16(X::NAME) + bf16(Y::NAME)]
    }
}
