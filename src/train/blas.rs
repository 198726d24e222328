//! Row-major matrix products on cuBLAS (column-major), the forms training needs.
//!
//! A row-major `[r x c]` matrix is a column-major `[c x r]` one, so each product is issued as
//! its transpose: `Y = X W^T` becomes `Y^T = W X^T`, and so on. Outputs are overwritten.
//! The batched forms take `batch` matrices at fixed strides (attention, per image and head).

use cudarc::cublas::sys::cublasOperation_t::{self, CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{DevicePtr, DevicePtrMut};

use crate::kernels::shape::check_at_least;
use crate::{Error, Result};

struct Shape {
    trans: (cublasOperation_t, cublasOperation_t),
    mnk: (usize, usize, usize),
    ld: (usize, usize, usize),
    alpha: f32,
}

impl Shape {
    fn config(&self) -> GemmConfig<f32> {
        GemmConfig {
            transa: self.trans.0,
            transb: self.trans.1,
            m: self.mnk.0 as i32,
            n: self.mnk.1 as i32,
            k: self.mnk.2 as i32,
            alpha: self.alpha,
            lda: self.ld.0 as i32,
            ldb: self.ld.1 as i32,
            beta: 0.0,
            ldc: self.ld.2 as i32,
        }
    }
}

fn check(what: &str, name: &str, len: usize, need: usize) -> Result<()> {
    check_at_least(&format!("GEMM {what}"), name, len, need)
}

fn run<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
    blas: &CudaBlas,
    what: &str,
    shape: Shape,
    a: &A,
    b: &B,
    c: &mut C,
) -> Result<()> {
    // SAFETY: every caller checks the buffer lengths against the shape first.
    unsafe { blas.gemm(shape.config(), a, b, c) }.map_err(|e| Error::Blas {
        what: format!("{what} {:?}", shape.mnk),
        source: e,
    })
}

/// `y[rows x dout] = x[rows x din] W^T`, W `[dout x din]`.
pub fn linear<X: DevicePtr<f32>, W: DevicePtr<f32>, Y: DevicePtrMut<f32>>(
    blas: &CudaBlas,
    x: &X,
    w: &W,
    y: &mut Y,
    rows: usize,
    din: usize,
    dout: usize,
) -> Result<()> {
    const WHAT: &str = "Y = X W^T";
    check(WHAT, "x", x.len(), rows * din)?;
    check(WHAT, "w", w.len(), dout * din)?;
    check(WHAT, "y", y.len(), rows * dout)?;
    let shape = Shape {
        trans: (CUBLAS_OP_T, CUBLAS_OP_N),
        mnk: (dout, rows, din),
        ld: (din, din, dout),
        alpha: 1.0,
    };
    run(blas, WHAT, shape, w, x, y)
}

/// `gw[dout x din] = dy^T x` (dy `[rows x dout]`, x `[rows x din]`).
pub fn linear_grad_w<X: DevicePtr<f32>, D: DevicePtr<f32>, G: DevicePtrMut<f32>>(
    blas: &CudaBlas,
    x: &X,
    dy: &D,
    gw: &mut G,
    rows: usize,
    din: usize,
    dout: usize,
) -> Result<()> {
    const WHAT: &str = "dW = dY^T X";
    check(WHAT, "x", x.len(), rows * din)?;
    check(WHAT, "dy", dy.len(), rows * dout)?;
    check(WHAT, "gw", gw.len(), dout * din)?;
    let shape = Shape {
        trans: (CUBLAS_OP_N, CUBLAS_OP_T),
        mnk: (din, dout, rows),
        ld: (din, dout, din),
        alpha: 1.0,
    };
    run(blas, WHAT, shape, x, dy, gw)
}

/// `dx[rows x din] = dy W` (dy `[rows x dout]`, W `[dout x din]`).
pub fn linear_grad_x<D: DevicePtr<f32>, W: DevicePtr<f32>, X: DevicePtrMut<f32>>(
    blas: &CudaBlas,
    dy: &D,
    w: &W,
    dx: &mut X,
    rows: usize,
    din: usize,
    dout: usize,
) -> Result<()> {
    const WHAT: &str = "dX = dY W";
    check(WHAT, "dy", dy.len(), rows * dout)?;
    check(WHAT, "w", w.len(), dout * din)?;
    check(WHAT, "dx", dx.len(), rows * din)?;
    let shape = Shape {
        trans: (CUBLAS_OP_N, CUBLAS_OP_N),
        mnk: (din, rows, dout),
        ld: (din, dout, din),
        alpha: 1.0,
    };
    run(blas, WHAT, shape, w, dy, dx)
}

/// Which batched product: with `P` a `[t x t]` and `X`, `Y` `[t x dh]` matrices per batch entry.
#[derive(Clone, Copy, Debug)]
pub enum Batched {
    /// `out[t x t] = alpha X Y^T` (scores; the gradient of the probabilities).
    XYt,
    /// `out[t x dh] = P X` (attention output; the gradient of the queries).
    PX,
    /// `out[t x dh] = P^T X` (the gradients of the values and keys).
    PtX,
}

/// `batch` products of the given form at strides `t*t` and `t*dh`.
#[allow(clippy::too_many_arguments)]
pub fn batched<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
    blas: &CudaBlas,
    form: Batched,
    first: &A,
    second: &B,
    out: &mut C,
    batch: usize,
    t: usize,
    dh: usize,
    alpha: f32,
) -> Result<()> {
    let what = format!("batched {form:?}");
    let (sq, sx) = ((t * t) as i64, (t * dh) as i64);
    // cuBLAS's A is `second` and its B is `first` in all three transposed forms.
    let (shape, strides) = match form {
        // out^T = Y X^T: A = Y (op T), B = X (op N).
        Batched::XYt => (
            Shape {
                trans: (CUBLAS_OP_T, CUBLAS_OP_N),
                mnk: (t, t, dh),
                ld: (dh, dh, t),
                alpha,
            },
            (sx, sx, sq),
        ),
        // out^T = X^T P^T: A = X (op N), B = P (op N).
        Batched::PX => (
            Shape {
                trans: (CUBLAS_OP_N, CUBLAS_OP_N),
                mnk: (dh, t, t),
                ld: (dh, t, dh),
                alpha,
            },
            (sx, sq, sx),
        ),
        // out^T = X^T P: A = X (op N), B = P (op T).
        Batched::PtX => (
            Shape {
                trans: (CUBLAS_OP_N, CUBLAS_OP_T),
                mnk: (dh, t, t),
                ld: (dh, t, dh),
                alpha,
            },
            (sx, sq, sx),
        ),
    };
    let (first_len, out_len) = match form {
        Batched::XYt => (batch * t * dh, batch * t * t),
        Batched::PX | Batched::PtX => (batch * t * t, batch * t * dh),
    };
    check(&what, "first", first.len(), first_len)?;
    check(&what, "second", second.len(), batch * t * dh)?;
    check(&what, "out", out.len(), out_len)?;
    let cfg = StridedBatchedConfig {
        gemm: shape.config(),
        batch_size: batch as i32,
        stride_a: strides.0,
        stride_b: strides.1,
        stride_c: strides.2,
    };
    // SAFETY: lengths checked above against the shapes and strides.
    unsafe { blas.gemm_strided_batched(cfg, second, first, out) }
        .map_err(|e| Error::Blas { what, source: e })
}

/// `out[cols] = column sums of m[rows x cols]`, as the product `m^T ones` (`ones` holds at least
/// `rows` ones): parallel over rows, unlike a thread per column, and deterministic.
pub fn column_sums<M: DevicePtr<f32>, O: DevicePtr<f32>, C: DevicePtrMut<f32>>(
    blas: &CudaBlas,
    m: &M,
    ones: &O,
    out: &mut C,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const WHAT: &str = "column sums";
    check(WHAT, "m", m.len(), rows * cols)?;
    check(WHAT, "ones", ones.len(), rows)?;
    check(WHAT, "out", out.len(), cols)?;
    let shape = Shape {
        trans: (CUBLAS_OP_N, CUBLAS_OP_N),
        mnk: (cols, 1, rows),
        ld: (cols, rows, cols),
        alpha: 1.0,
    };
    run(blas, WHAT, shape, m, ones, out)
}
