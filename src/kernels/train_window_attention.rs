//! Launchers for `kernels/train_window_attention.cu`: the backward of one head's cyclic-shift
//! window attention, on the ViT trainer's windowed head-major buffers.

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig};

use super::KernelModule;
use super::raw::{ptr, ptr_mut};
use super::shape::{check_at_least as check, elementwise};
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// One head of a launch: `n` images of `t` slots, window side `w` (a power of two whose
/// `w*w` divides `t`), `hd` channels; head `head` of `heads` in the buffers.
#[derive(Clone, Copy, Debug)]
pub struct WindowHead {
    pub n: usize,
    pub w: usize,
    pub t: usize,
    pub hd: usize,
    pub heads: usize,
    pub head: usize,
}

impl WindowHead {
    /// Checks the shape; returns the kernels' i32 arguments `n, log2 w, t, hd, heads, head`.
    fn args(&self, name: &str) -> Result<[i32; 6]> {
        let ww = self.w * self.w;
        if !self.w.is_power_of_two() || !self.t.is_multiple_of(ww) || self.head >= self.heads {
            return Err(Error::invalid(name, format!("bad head shape {self:?}")));
        }
        let lw = self.w.trailing_zeros() as usize;
        let a = [self.n, lw, self.t, self.hd, self.heads, self.head];
        let mut out = [0i32; 6];
        for (o, v) in out.iter_mut().zip(a) {
            *o = i32::try_from(v).map_err(|_| Error::invalid(name, "size over i32"))?;
        }
        Ok(out)
    }

    fn check_operands(&self, name: &str, ops: &[(&str, usize)], per_head: usize) -> Result<()> {
        ops.iter()
            .try_for_each(|(what, len)| check(name, what, *len, self.n * self.heads * per_head))
    }
}

/// The forward's saved operands and the output gradient, each `[n, heads, t, hd]` in each
/// head's slot order; `q` pre-scaled by `hd^-0.5`.
pub struct Saved<'a> {
    pub q: &'a CudaSlice<f32>,
    pub k: &'a CudaSlice<f32>,
    pub v: &'a CudaSlice<f32>,
    pub dout: &'a CudaSlice<f32>,
}

/// Recomputes head `h`'s probabilities into `p` and writes the score gradient `ds` (both
/// `[n, heads, t, t]`, query window `i` in row `i`). `sr`: the `w*w` table, for `w > 1`.
pub fn scores_bwd(
    gpu: &Gpu,
    stream: &CudaStream,
    h: &WindowHead,
    x: &Saved<'_>,
    sr: Option<&CudaSlice<f32>>,
    (p, ds): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
) -> Result<()> {
    const K: &str = "window_attention_scores_bwd_f32";
    let a = h.args(K)?;
    let (q, k, v, dout) = (x.q, x.k, x.v, x.dout);
    let lens = [
        ("q", q.len()),
        ("k", k.len()),
        ("v", v.len()),
        ("dout", dout.len()),
    ];
    h.check_operands(K, &lens, h.t * h.hd)?;
    h.check_operands(K, &[("p", p.len()), ("ds", ds.len())], h.t * h.t)?;
    match sr {
        Some(sr) => check(K, "sr", sr.len(), h.w * h.w)?,
        None if h.w > 1 => return Err(Error::invalid(K, "sr is required when w > 1")),
        None => {}
    }
    let kernel = gpu.kernel(KernelModule::TrainWindowAttention, K)?;
    let ptrs = [
        ptr(q, stream),
        ptr(k, stream),
        ptr(v, stream),
        ptr(dout, stream),
    ];
    let srp = sr.map_or(0, |s| ptr(s, stream));
    let (pp, dsp) = (ptr_mut(p, stream), ptr_mut(ds, stream));
    let rows = h.n * h.t / (h.w * h.w);
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = kernel.on(stream);
    for v in &ptrs {
        l.arg(v);
    }
    l.arg(&srp).arg(&pp).arg(&dsp);
    for v in &a {
        l.arg(v);
    }
    // SAFETY: argument types match the kernel's; every buffer covers the shape (checked).
    unsafe { l.go(cfg) }
}

/// Head `h`'s `dq` (of the pre-scaled q), `dk` and `dv` from `p` and `ds` of [`scores_bwd`],
/// written into the head's part of `[n, heads, t, hd]` buffers.
pub fn grads(
    gpu: &Gpu,
    stream: &CudaStream,
    h: &WindowHead,
    x: &Saved<'_>,
    (p, ds): (&CudaSlice<f32>, &CudaSlice<f32>),
    [dq, dk, dv]: [&mut CudaSlice<f32>; 3],
) -> Result<()> {
    const K: &str = "window_attention_grads_f32";
    let a = h.args(K)?;
    let lens = [
        ("q", x.q.len()),
        ("k", x.k.len()),
        ("dout", x.dout.len()),
        ("dq", dq.len()),
        ("dk", dk.len()),
        ("dv", dv.len()),
    ];
    h.check_operands(K, &lens, h.t * h.hd)?;
    h.check_operands(K, &[("p", p.len()), ("ds", ds.len())], h.t * h.t)?;
    let kernel = gpu.kernel(KernelModule::TrainWindowAttention, K)?;
    let ins = [x.q, x.k, x.dout, p, ds].map(|b| ptr(b, stream));
    let outs = [
        ptr_mut(dq, stream),
        ptr_mut(dk, stream),
        ptr_mut(dv, stream),
    ];
    let mut l = kernel.on(stream);
    for v in ins.iter().chain(&outs) {
        l.arg(v);
    }
    for v in &a {
        l.arg(v);
    }
    // SAFETY: argument types match the kernel's; every buffer covers the shape (checked).
    unsafe { l.go(elementwise(h.n * h.t * h.hd)) }
}
