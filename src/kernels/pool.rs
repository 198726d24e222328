//! The geometry of a 2-D pooling window (PyTorch's `MaxPool2d` / `AvgPool2d`: square kernel,
//! one stride and padding for both axes, floor mode, no dilation) over an NHWC tensor, shared
//! by the pooling ops.

use crate::error::{Error, Result};

/// A `kernel x kernel` window moved by `stride`, over an input padded by `pad` on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2d {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Pool2d {
    /// Output height and width (0 where the window does not fit; [`Self::check`] refuses
    /// those).
    pub fn out_size(&self) -> [usize; 2] {
        let out = |size: usize| {
            let padded = size + 2 * self.pad;
            if self.stride == 0 || padded < self.kernel {
                0
            } else {
                (padded - self.kernel) / self.stride + 1
            }
        };
        [out(self.height), out(self.width)]
    }

    /// Elements of the input, `[batch][height][width][channels]`.
    pub fn input_len(&self) -> usize {
        self.batch * self.height * self.width * self.channels
    }

    /// Elements of the output, `[batch][out_h][out_w][channels]`.
    pub fn output_len(&self) -> usize {
        let [oh, ow] = self.out_size();
        self.batch * oh * ow * self.channels
    }

    /// The window of output position `o` along an axis of `size`: input positions
    /// `[start, end)`, clipped to the input.
    pub fn window(&self, o: usize, size: usize) -> (usize, usize) {
        let start = (o * self.stride) as isize - self.pad as isize;
        let end = (start + self.kernel as isize).min(size as isize);
        (start.max(0) as usize, end.max(0) as usize)
    }

    /// Fails unless every size is positive, the padding is at most half the kernel (as
    /// PyTorch requires: every window then holds an input value), the window fits the padded
    /// input, and every tensor fits 32-bit indexing.
    pub fn check(&self, op: &str) -> Result<()> {
        let bad = |problem: String| Err(Error::invalid(format!("{op} {self}"), problem));
        let sizes = [
            self.batch,
            self.channels,
            self.height,
            self.width,
            self.kernel,
            self.stride,
        ];
        if sizes.contains(&0) {
            return bad("every size, the kernel and the stride must be positive".into());
        }
        if 2 * self.pad > self.kernel {
            return bad(format!(
                "padding {} is more than half the kernel {}",
                self.pad, self.kernel
            ));
        }
        if self.out_size().contains(&0) {
            return bad("the window is larger than the padded input".into());
        }
        if self.input_len() > i32::MAX as usize {
            return bad(format!(
                "the input has {} elements, more than 2^31 - 1",
                self.input_len()
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Pool2d {
    /// `2x37x41x64 k3 s2 p1` (the input NHWC).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{}x{} k{} s{} p{}",
            self.batch, self.height, self.width, self.channels, self.kernel, self.stride, self.pad
        )
    }
}
