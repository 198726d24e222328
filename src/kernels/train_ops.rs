//! Launchers for `kernels/train_ops.cu`. Buffers are taken as anything cudarc can give a device
//! pointer for (whole buffers or views), and their lengths are checked before each launch.
//! The all-reduce launchers take raw device pointers, since their buffers may belong to other
//! GPUs' contexts.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig};
use half::bf16;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

use super::KernelModule;
use super::raw::{ptr, ptr_mut};
use super::shape::{check_at_least as check, elementwise, pointwise};

/// Most participants the all-reduce kernel takes (`MAX_PEERS` in the .cu file).
pub const MAX_PEERS: usize = 8;

/// `Peers` in the .cu file: device pointers passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct Peers([u64; MAX_PEERS]);

// SAFETY: plain data with the C layout of the kernel's `struct Peers`.
unsafe impl DeviceRepr for Peers {}

/// `y[i] = bf16(x[i])` for the first `n` elements, rounded to nearest even (NaN kept), as
/// `half::bf16::from_f32` rounds on the host.
pub fn cast_bf16<X: DevicePtr<f32>, Y: DevicePtrMut<bf16>>(
    gpu: &Gpu,
    stream: &CudaStream,
    x: &X,
    y: &mut Y,
    n: usize,
) -> Result<()> {
    const K: &str = "cast_bf16_f32";
    check(K, "x", x.len(), n)?;
    check(K, "y", y.len(), n)?;
    let k = gpu.kernel(KernelModule::TrainOps, K)?;
    let (xp, _x) = x.device_ptr(stream);
    let (yp, _y) = y.device_ptr_mut(stream);
    let n64 = n as i64;
    // SAFETY: argument types match (bf16 is 16 bits, the kernel's unsigned short); both
    // buffers hold n elements, checked above.
    unsafe {
        k.on(stream)
            .arg(&xp)
            .arg(&yp)
            .arg(&n64)
            .go(elementwise(n.div_ceil(4)))
    }
}

/// `dx[i] = 0` where `y[i] <= 0`, for the first `n` elements.
pub fn relu_backward<D: DevicePtrMut<f32>, Y: DevicePtr<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    dx: &mut D,
    y: &Y,
    n: usize,
) -> Result<()> {
    let a = ("dx", dx.len(), ptr_mut(dx, stream));
    let b = ("y", y.len(), ptr(y, stream));
    pointwise(
        gpu,
        stream,
        KernelModule::TrainOps,
        "relu_backward_f32",
        a,
        b,
        n,
    )
}

/// `db[c] = sum_r dy[r, c]`.
pub fn bias_grad<D: DevicePtr<f32>, B: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    dy: &D,
    db: &mut B,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const K: &str = "bias_grad_f32";
    check(K, "dy", dy.len(), rows * cols)?;
    check(K, "db", db.len(), cols)?;
    let k = gpu.kernel(KernelModule::TrainOps, K)?;
    let (dp, _d) = dy.device_ptr(stream);
    let (bp, _b) = db.device_ptr_mut(stream);
    let (r, c) = (rows as i32, cols as i32);
    // SAFETY: argument types match; sizes checked above.
    unsafe {
        k.on(stream)
            .arg(&dp)
            .arg(&bp)
            .arg(&r)
            .arg(&c)
            .go(elementwise(cols))
    }
}

/// Softmax cross-entropy over `rows x cols` logits: writes `dlogits` and adds the scaled loss
/// and the correct count to `stats[0]`, `stats[1]` (zero them first).
#[allow(clippy::too_many_arguments)]
pub fn softmax_xent<
    Z: DevicePtr<f32>,
    L: DevicePtr<u32>,
    D: DevicePtrMut<f32>,
    S: DevicePtrMut<f32>,
>(
    gpu: &Gpu,
    stream: &CudaStream,
    logits: &Z,
    labels: &L,
    dlogits: &mut D,
    stats: &mut S,
    rows: usize,
    cols: usize,
    scale: f32,
) -> Result<()> {
    const K: &str = "softmax_xent_f32";
    check(K, "logits", logits.len(), rows * cols)?;
    check(K, "labels", labels.len(), rows)?;
    check(K, "dlogits", dlogits.len(), rows * cols)?;
    check(K, "stats", stats.len(), 2)?;
    let k = gpu.kernel(KernelModule::TrainOps, K)?;
    let (zp, _z) = logits.device_ptr(stream);
    let (lp, _l) = labels.device_ptr(stream);
    let (dp, _d) = dlogits.device_ptr_mut(stream);
    let (sp, _s) = stats.device_ptr_mut(stream);
    let (r, c) = (rows as i32, cols as i32);
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types match; one warp per row, sizes checked above.
    unsafe {
        k.on(stream)
            .arg(&zp)
            .arg(&lp)
            .arg(&dp)
            .arg(&sp)
            .arg(&r)
            .arg(&c)
            .arg(&scale)
            .go(cfg)
    }
}

/// One SGD step over all of `p` (see `Optimizer::Sgd`).
pub fn sgd<P: DevicePtrMut<f32>, G: DevicePtr<f32>, V: DevicePtrMut<f32>>(
    gpu: &Gpu,
    stream: &CudaStream,
    p: &mut P,
    g: &G,
    v: &mut V,
    hyper: [f32; 3],
) -> Result<()> {
    const K: &str = "sgd_f32";
    let n = p.len();
    check(K, "g", g.len(), n)?;
    check(K, "v", v.len(), n)?;
    let k = gpu.kernel(KernelModule::TrainOps, K)?;
    let (pp, _p) = p.device_ptr_mut(stream);
    let (gp, _g) = g.device_ptr(stream);
    let (vp, _v) = v.device_ptr_mut(stream);
    let n64 = n as i64;
    let [lr, momentum, wd] = hyper;
    // SAFETY: argument types match; all buffers hold n elements.
    unsafe {
        k.on(stream)
            .arg(&pp)
            .arg(&gp)
            .arg(&vp)
            .arg(&n64)
            .arg(&lr)
            .arg(&momentum)
            .arg(&wd)
            .go(elementwise(n))
    }
}

/// One AdamW step over all of `p`; `hyper` is `[lr, beta1, beta2, eps, weight_decay, c1, c2]`.
pub fn adamw<
    P: DevicePtrMut<f32>,
    G: DevicePtr<f32>,
    M: DevicePtrMut<f32>,
    V: DevicePtrMut<f32>,
>(
    gpu: &Gpu,
    stream: &CudaStream,
    p: &mut P,
    g: &G,
    m: &mut M,
    v: &mut V,
    hyper: [f32; 7],
) -> Result<()> {
    const K: &str = "adamw_f32";
    let n = p.len();
    check(K, "g", g.len(), n)?;
    check(K, "m", m.len(), n)?;
    check(K, "v", v.len(), n)?;
    let k = gpu.kernel(KernelModule::TrainOps, K)?;
    let (pp, _p) = p.device_ptr_mut(stream);
    let (gp, _g) = g.device_ptr(stream);
    let (mp, _m) = m.device_ptr_mut(stream);
    let (vp, _v) = v.device_ptr_mut(stream);
    let n64 = n as i64;
    let mut launch = k.on(stream);
    launch.arg(&pp).arg(&gp).arg(&mp).arg(&vp).arg(&n64);
    for h in &hyper {
        launch.arg(h);
    }
    // SAFETY: argument types match; all buffers hold n elements.
    unsafe { launch.go(elementwise(n)) }
}

/// Reduce-scatter step: `bufs[own][begin..end] = sum_k bufs[k][begin..end]`, k in order.
///
/// # Safety
/// Every pointer must address at least `end` f32s readable from `gpu` (its own memory, or a
/// peer's with peer access enabled), and `bufs[own]` must be `gpu`'s and writable.
pub unsafe fn allreduce_sum_chunk(
    gpu: &Gpu,
    stream: &CudaStream,
    bufs: &[u64],
    own: usize,
    begin: usize,
    end: usize,
) -> Result<()> {
    const K: &str = "allreduce_sum_chunk_f32";
    if bufs.is_empty() || bufs.len() > MAX_PEERS || own >= bufs.len() || begin > end {
        return Err(Error::invalid(
            K,
            format!(
                "{} buffers (1..={MAX_PEERS}), own {own}, range {begin}..{end}",
                bufs.len()
            ),
        ));
    }
    let mut peers = Peers([0; MAX_PEERS]);
    peers.0[..bufs.len()].copy_from_slice(bufs);
    let k = gpu.kernel(KernelModule::TrainOps, K)?;
    let (n, own, b, e) = (bufs.len() as i32, own as i32, begin as i64, end as i64);
    // A grid that fills the GPU: the kernel strides, and one chunk can be hundreds of MB.
    let cfg = elementwise((end - begin).div_ceil(4).min(132 * 8 * 256));
    // SAFETY: forwarded to the caller.
    unsafe {
        k.on(stream)
            .arg(&peers)
            .arg(&n)
            .arg(&own)
            .arg(&b)
            .arg(&e)
            .go(cfg)
    }
}

/// All-gather step: `dst[begin..end] = src[begin..end]`.
///
/// # Safety
/// As for [`allreduce_sum_chunk`]: both pointers address at least `end` f32s reachable from
/// `gpu`, and `dst` is writable.
pub unsafe fn copy_range(
    gpu: &Gpu,
    stream: &CudaStream,
    dst: u64,
    src: u64,
    begin: usize,
    end: usize,
) -> Result<()> {
    const K: &str = "copy_range_f32";
    let k = gpu.kernel(KernelModule::TrainOps, K)?;
    let (b, e) = (begin as i64, end.max(begin) as i64);
    let cfg = elementwise((end.saturating_sub(begin)).div_ceil(4).min(132 * 8 * 256));
    // SAFETY: forwarded to the caller.
    unsafe { k.on(stream).arg(&dst).arg(&src).arg(&b).arg(&e).go(cfg) }
}
