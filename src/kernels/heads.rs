//! Launchers for `kernels/heads.cu`: the copies between row-major activations and the
//! head-major operands of attention, gathering each head's slots in its window partition.

pub mod cpu;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::KernelModule;
use super::launch::{Args, elementwise};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};

/// Shape of a head split: `n` images, `t` tokens, `h` heads of `dh`, in rows of `stride`
/// values starting at column `offset`. Head-major is `[n * h, t, dh]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub n: usize,
    pub t: usize,
    pub h: usize,
    pub dh: usize,
    pub stride: usize,
    pub offset: usize,
}

impl Heads {
    /// Values of the head-major side.
    pub fn heads_len(&self) -> usize {
        self.n * self.h * self.t * self.dh
    }

    /// Values the row-major side spans.
    pub fn rows_len(&self) -> usize {
        self.n * self.t * self.stride
    }
}

/// How head-major slots map to row tokens: `slot_token` (`[h, t]`, each head's window
/// partition) or the identity, and a factor applied on the way.
#[derive(Clone, Copy)]
pub struct SlotOrder<'a> {
    pub slot_token: Option<&'a CudaSlice<u32>>,
    pub scale: f32,
}

impl SlotOrder<'_> {
    /// Slot = token, unscaled.
    pub const IDENTITY: SlotOrder<'static> = SlotOrder {
        slot_token: None,
        scale: 1.0,
    };
}

/// `heads_from_rows_f32` and `heads_to_rows_f32`, loaded once.
#[derive(Debug, Clone)]
pub struct HeadsKernels {
    from_rows: Kernel,
    to_rows: Kernel,
}

impl HeadsKernels {
    pub fn load(gpu: &Gpu) -> Result<HeadsKernels> {
        let k = |name| gpu.kernel(KernelModule::Heads, name);
        Ok(HeadsKernels {
            from_rows: k("heads_from_rows_f32")?,
            to_rows: k("heads_to_rows_f32")?,
        })
    }

    /// Row-major columns -> head-major `[n*h, t, dh]`, slots gathered in `order`.
    pub fn from_rows(
        &self,
        stream: &CudaStream,
        rows: &impl DevicePtr<f32>,
        heads: &mut impl DevicePtrMut<f32>,
        s: Heads,
        order: SlotOrder<'_>,
    ) -> Result<()> {
        let k = &self.from_rows;
        let args = Args::new(k, stream)
            .input("src", rows, s.rows_len())?
            .output("dst", heads, s.heads_len())?;
        launch(k, args, s, order)
    }

    /// Head-major `[n*h, t, dh]` -> row-major columns, slots put back in `order`.
    pub fn to_rows(
        &self,
        stream: &CudaStream,
        heads: &impl DevicePtr<f32>,
        rows: &mut impl DevicePtrMut<f32>,
        s: Heads,
        order: SlotOrder<'_>,
    ) -> Result<()> {
        let k = &self.to_rows;
        let args = Args::new(k, stream)
            .input("src", heads, s.heads_len())?
            .output("dst", rows, s.rows_len())?;
        launch(k, args, s, order)
    }
}

/// The rest of both kernels' arguments after `src` and `dst`, checked, and the launch.
fn launch(kernel: &Kernel, args: Args<'_>, s: Heads, order: SlotOrder<'_>) -> Result<()> {
    if s.offset + s.h * s.dh > s.stride {
        return Err(Error::invalid(
            kernel.name(),
            format!("{s:?}: columns beyond the row"),
        ));
    }
    // The kernel's index maths is 32-bit.
    if s.heads_len().max(s.rows_len()) > u32::MAX as usize {
        return Err(Error::invalid(
            kernel.name(),
            format!("{s:?}: more than 2^32 elements"),
        ));
    }
    let args = args
        .optional("slot_token", order.slot_token, s.h * s.t)?
        .float(order.scale)
        .int("n", s.n)?
        .int("t", s.t)?
        .int("h", s.h)?
        .int("dh", s.dh)?
        .int("stride", s.stride)?
        .int("offset", s.offset)?;
    // SAFETY: heads_{from,to}_rows_f32(const float* src, float* dst, const unsigned*
    // slot_token, float scale, int n, int t, int h, int dh, int stride, int offset); sizes
    // checked (every table entry is below `t`: the tables are permutations built on the host).
    unsafe { args.launch(elementwise(s.heads_len())) }
}
