//! Launchers for `kernels/train_vit.cu`. Every launcher checks its buffers' lengths against the
//! shapes before launching.

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::error::{Error, Result};
use crate::gpu::Gpu;

use super::KernelModule;
use super::raw::{ptr, ptr_mut};
use super::shape::{check_at_least as check, elementwise, pointwise};

/// One warp per row, 8 rows per block.
fn warp_rows(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Images `[n, c, s, s]` to patch rows `[n * (s/p)^2, c*p*p]`.
#[allow(clippy::too_many_arguments)]
pub fn patchify<X: DevicePtr<f32>, O: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    x: &X,
    out: &mut O,
    n: usize,
    c: usize,
    s: usize,
    p: usize,
) -> Result<()> {
    const K: &str = "patchify_f32";
    let total = n * c * s * s;
    check(K, "x", x.len(), total)?;
    check(K, "out", out.len(), total)?;
    let k = gpu.kernel(KernelModule::TrainVit, K)?;
    let (xp, _x) = x.device_ptr(stream);
    let (op, _o) = out.device_ptr_mut(stream);
    let a = [n as i32, c as i32, s as i32, p as i32];
    // SAFETY: argument types match; sizes checked.
    unsafe {
        k.on(stream)
            .arg(&xp)
            .arg(&op)
            .arg(&a[0])
            .arg(&a[1])
            .arg(&a[2])
            .arg(&a[3])
            .go(elementwise(total))
    }
}

/// `y[i] += pos[i % period]` for the first `n` elements.
pub fn add_periodic<Y: DevicePtrMut<f32>, P: DevicePtr<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    y: &mut Y,
    pos: &P,
    n: usize,
    period: usize,
) -> Result<()> {
    const K: &str = "add_periodic_f32";
    check(K, "y", y.len(), n)?;
    check(K, "pos", pos.len(), period)?;
    let k = gpu.kernel(KernelModule::TrainVit, K)?;
    let (yp, _y) = y.device_ptr_mut(stream);
    let (pp, _p) = pos.device_ptr(stream);
    let (n64, per) = (n as i64, period as i32);
    // SAFETY: argument types match; sizes checked.
    unsafe {
        k.on(stream)
            .arg(&yp)
            .arg(&pp)
            .arg(&n64)
            .arg(&per)
            .go(elementwise(n))
    }
}

/// `y[i] += x[i]` for the first `n` elements.
pub fn add<Y: DevicePtrMut<f32>, X: DevicePtr<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    y: &mut Y,
    x: &X,
    n: usize,
) -> Result<()> {
    let a = ("y", y.len(), ptr_mut(y, stream));
    let b = ("x", x.len(), ptr(x, stream));
    pointwise(gpu, stream, KernelModule::TrainVit, "add_f32", a, b, n)
}

/// LayerNorm forward over `rows x d`; writes `y`, `xhat` and `rstd` (one per row).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd<
    X: DevicePtr<f32>,
    G: DevicePtr<f32>,
    B: DevicePtr<f32>,
    Y: DevicePtrMut<f32>,
    H: DevicePtrMut<f32>,
    R: DevicePtrMut<f32>,
>(
    gpu: &Gpu,
    stream: &CudaStream,
    x: &X,
    gamma: &G,
    beta: &B,
    y: &mut Y,
    xhat: &mut H,
    rstd: &mut R,
    rows: usize,
    d: usize,
) -> Result<()> {
    const K: &str = "layernorm_fwd_f32";
    for (what, len) in [("x", x.len()), ("y", y.len()), ("xhat", xhat.len())] {
        check(K, what, len, rows * d)?;
    }
    check(K, "gamma", gamma.len(), d)?;
    check(K, "beta", beta.len(), d)?;
    check(K, "rstd", rstd.len(), rows)?;
    let k = gpu.kernel(KernelModule::TrainVit, K)?;
    let (xp, _g1) = x.device_ptr(stream);
    let (gp, _g2) = gamma.device_ptr(stream);
    let (bp, _g3) = beta.device_ptr(stream);
    let (yp, _g4) = y.device_ptr_mut(stream);
    let (hp, _g5) = xhat.device_ptr_mut(stream);
    let (rp, _g6) = rstd.device_ptr_mut(stream);
    let (r, dd) = (rows as i32, d as i32);
    // SAFETY: argument types match; sizes checked.
    unsafe {
        k.on(stream)
            .arg(&xp)
            .arg(&gp)
            .arg(&bp)
            .arg(&yp)
            .arg(&hp)
            .arg(&rp)
            .arg(&r)
            .arg(&dd)
            .go(warp_rows(rows))
    }
}

/// LayerNorm backward over `rows x d`: `dx` (added to when `add`), and `dyxhat = dy * xhat`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd<
    D: DevicePtr<f32>,
    H: DevicePtr<f32>,
    R: DevicePtr<f32>,
    G: DevicePtr<f32>,
    X: DevicePtrMut<f32>,
    P: DevicePtrMut<f32>,
>(
    gpu: &Gpu,
    stream: &CudaStream,
    dy: &D,
    xhat: &H,
    rstd: &R,
    gamma: &G,
    dx: &mut X,
    dyxhat: &mut P,
    rows: usize,
    d: usize,
    add: bool,
) -> Result<()> {
    const K: &str = "layernorm_bwd_f32";
    for (what, len) in [
        ("dy", dy.len()),
        ("xhat", xhat.len()),
        ("dx", dx.len()),
        ("dyxhat", dyxhat.len()),
    ] {
        check(K, what, len, rows * d)?;
    }
    check(K, "gamma", gamma.len(), d)?;
    check(K, "rstd", rstd.len(), rows)?;
    let k = gpu.kernel(KernelModule::TrainVit, K)?;
    let (dp, _g1) = dy.device_ptr(stream);
    let (hp, _g2) = xhat.device_ptr(stream);
    let (rp, _g3) = rstd.device_ptr(stream);
    let (gp, _g4) = gamma.device_ptr(stream);
    let (xp, _g5) = dx.device_ptr_mut(stream);
    let (pp, _g6) = dyxhat.device_ptr_mut(stream);
    let (r, dd, a) = (rows as i32, d as i32, i32::from(add));
    // SAFETY: argument types match; sizes checked.
    unsafe {
        k.on(stream)
            .arg(&dp)
            .arg(&hp)
            .arg(&rp)
            .arg(&gp)
            .arg(&xp)
            .arg(&pp)
            .arg(&r)
            .arg(&dd)
            .arg(&a)
            .go(warp_rows(rows))
    }
}

/// `y = gelu(x)` for the first `n` elements.
pub fn gelu_fwd<X: DevicePtr<f32>, Y: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    x: &X,
    y: &mut Y,
    n: usize,
) -> Result<()> {
    let a = ("x", x.len(), ptr(x, stream));
    let b = ("y", y.len(), ptr_mut(y, stream));
    pointwise(gpu, stream, KernelModule::TrainVit, "gelu_fwd_f32", a, b, n)
}

/// `d *= gelu'(x)` for the first `n` elements.
pub fn gelu_bwd<X: DevicePtr<f32>, D: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    x: &X,
    d: &mut D,
    n: usize,
) -> Result<()> {
    let a = ("x", x.len(), ptr(x, stream));
    let b = ("d", d.len(), ptr_mut(d, stream));
    pointwise(gpu, stream, KernelModule::TrainVit, "gelu_bwd_f32", a, b, n)
}

/// Shape of a head split: `n` images, `t` tokens, `h` heads of `dh`, in rows of `stride`
/// values starting at column `offset`.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n: usize,
    pub t: usize,
    pub h: usize,
    pub dh: usize,
    pub stride: usize,
    pub offset: usize,
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

fn heads_launch<S: DevicePtr<f32>, D: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    name: &'static str,
    (src, dst): (&S, &mut D),
    s: Heads,
    order: SlotOrder<'_>,
    rows_side_is_src: bool,
) -> Result<()> {
    let heads = s.n * s.h * s.t * s.dh;
    let rows = s.n * s.t * s.stride;
    if s.offset + s.h * s.dh > s.stride {
        return Err(Error::invalid(
            name,
            format!("{s:?}: columns beyond the row"),
        ));
    }
    // The kernel's index maths is 32-bit.
    if heads.max(rows) > u32::MAX as usize {
        return Err(Error::invalid(
            name,
            format!("{s:?}: more than 2^32 elements"),
        ));
    }
    let (src_need, dst_need) = if rows_side_is_src {
        (rows, heads)
    } else {
        (heads, rows)
    };
    check(name, "src", src.len(), src_need)?;
    check(name, "dst", dst.len(), dst_need)?;
    if let Some(table) = order.slot_token {
        check(name, "slot_token", table.len(), s.h * s.t)?;
    }
    let k = gpu.kernel(KernelModule::TrainVit, name)?;
    let (sp, _s) = src.device_ptr(stream);
    let (dp, _d) = dst.device_ptr_mut(stream);
    let tp = order.slot_token.map_or(0, |t| ptr(t, stream));
    let a = [s.n, s.t, s.h, s.dh, s.stride, s.offset].map(|v| v as i32);
    let mut l = k.on(stream);
    l.arg(&sp).arg(&dp).arg(&tp).arg(&order.scale);
    for v in &a {
        l.arg(v);
    }
    // SAFETY: argument types match; sizes checked (every table entry is below `t`: the
    // tables are permutations built on the host).
    unsafe { l.go(elementwise(heads)) }
}

/// Row-major columns -> head-major `[n*h, t, dh]`, slots gathered in `order`.
pub fn rows_to_heads<S: DevicePtr<f32>, D: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    src: &S,
    dst: &mut D,
    s: Heads,
    order: SlotOrder<'_>,
) -> Result<()> {
    heads_launch(gpu, stream, "rows_to_heads_f32", (src, dst), s, order, true)
}

/// Head-major `[n*h, t, dh]` -> row-major columns, slots put back in `order`.
pub fn heads_to_rows<S: DevicePtr<f32>, D: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    src: &S,
    dst: &mut D,
    s: Heads,
    order: SlotOrder<'_>,
) -> Result<()> {
    heads_launch(
        gpu,
        stream,
        "heads_to_rows_f32",
        (src, dst),
        s,
        order,
        false,
    )
}

/// Softmax of each row of `rows x cols`, in place.
pub fn softmax_rows<S: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    s: &mut S,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const K: &str = "softmax_rows_f32";
    check(K, "s", s.len(), rows * cols)?;
    let k = gpu.kernel(KernelModule::TrainVit, K)?;
    let (sp, _s) = s.device_ptr_mut(stream);
    let (r, c) = (rows as i32, cols as i32);
    // SAFETY: argument types match; sizes checked.
    unsafe { k.on(stream).arg(&sp).arg(&r).arg(&c).go(warp_rows(rows)) }
}

/// Softmax backward in place: `dp = scale * p * (dp - rowsum(p * dp))`.
pub fn softmax_bwd_rows<P: DevicePtr<f32>, D: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    p: &P,
    dp: &mut D,
    rows: usize,
    cols: usize,
    scale: f32,
) -> Result<()> {
    const K: &str = "softmax_bwd_rows_f32";
    check(K, "p", p.len(), rows * cols)?;
    check(K, "dp", dp.len(), rows * cols)?;
    let k = gpu.kernel(KernelModule::TrainVit, K)?;
    let (pp, _p) = p.device_ptr(stream);
    let (dpp, _d) = dp.device_ptr_mut(stream);
    let (r, c) = (rows as i32, cols as i32);
    // SAFETY: argument types match; sizes checked.
    unsafe {
        k.on(stream)
            .arg(&pp)
            .arg(&dpp)
            .arg(&r)
            .arg(&c)
            .arg(&scale)
            .go(warp_rows(rows))
    }
}

/// `out[img] = mean over tokens of x[img]` (`x`: `n*t x d`).
pub fn mean_tokens<X: DevicePtr<f32>, O: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    x: &X,
    out: &mut O,
    n: usize,
    t: usize,
    d: usize,
) -> Result<()> {
    const K: &str = "mean_tokens_f32";
    check(K, "x", x.len(), n * t * d)?;
    check(K, "out", out.len(), n * d)?;
    let k = gpu.kernel(KernelModule::TrainVit, K)?;
    let (xp, _x) = x.device_ptr(stream);
    let (op, _o) = out.device_ptr_mut(stream);
    let a = [n, t, d].map(|v| v as i32);
    // SAFETY: argument types match; sizes checked.
    unsafe {
        k.on(stream)
            .arg(&xp)
            .arg(&op)
            .arg(&a[0])
            .arg(&a[1])
            .arg(&a[2])
            .go(elementwise(n * d))
    }
}

/// The backward of [`mean_tokens`]: `dx[img, tok] = dout[img] / t`.
pub fn mean_tokens_bwd<D: DevicePtr<f32>, X: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    dout: &D,
    dx: &mut X,
    n: usize,
    t: usize,
    d: usize,
) -> Result<()> {
    const K: &str = "mean_tokens_bwd_f32";
    check(K, "dout", dout.len(), n * d)?;
    check(K, "dx", dx.len(), n * t * d)?;
    let k = gpu.kernel(KernelModule::TrainVit, K)?;
    let (dp, _d) = dout.device_ptr(stream);
    let (xp, _x) = dx.device_ptr_mut(stream);
    let a = [n, t, d].map(|v| v as i32);
    // SAFETY: argument types match; sizes checked.
    unsafe {
        k.on(stream)
            .arg(&dp)
            .arg(&xp)
            .arg(&a[0])
            .arg(&a[1])
            .arg(&a[2])
            .go(elementwise(n * t * d))
    }
}
