//! Row-major matrix products on cuBLAS (column-major): attention's batched forms and column
//! sums. The linear layers' GEMMs are on cuBLASLt, in [`crate::train::gpu::linear`].
//!
//! A row-major `[r x c]` matrix is a column-major `[c x r]` one, so each product is issued as
//! its transpose: `Y = X W^T` becomes `Y^T = W X^T`, and so on. Outputs are overwritten.
//! The batched forms take one matrix per image and head, addressed by pointer arrays, so that
//! attention reads and writes its operands in place in the rows of the linear layers.

use std::sync::Arc;

use cudarc::cublas::sys as cublas_sys;
use cudarc::cublas::sys::cublasOperation_t::{self, CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use crate::error::CudaContext as _;
use crate::kernels::launch::check_at_least;
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

pub(super) fn check(what: &str, name: &str, len: usize, need: usize) -> Result<()> {
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

/// Where a batch of row-major `[rows x cols]` matrices lies in one buffer: matrix `(i, j)`
/// (image `i`, head `j`) starts at `offset + i * stride.0 + j * stride.1`, its rows `ld`
/// apart. Two strides let attention read each head's `q`, `k`, `v` in place in the `qkv`
/// rows and write its output in place in the concatenated rows, with no head-major copies.
#[derive(Clone, Copy, Debug)]
pub struct BatchLayout {
    /// `(images, heads)`.
    pub count: (usize, usize),
    pub stride: (usize, usize),
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl BatchLayout {
    fn len(&self) -> usize {
        self.count.0 * self.count.1
    }

    /// One past the last element any matrix touches (for a non-empty batch).
    fn end(&self) -> usize {
        self.offset
            + (self.count.0 - 1) * self.stride.0
            + (self.count.1 - 1) * self.stride.1
            + (self.rows - 1) * self.ld
            + self.cols
    }
}

/// The layouts of attention's operands: one matrix per image and head.
#[derive(Clone, Copy, Debug)]
pub struct HeadBatch {
    pub n: usize,
    pub heads: usize,
    /// Tokens.
    pub t: usize,
    /// Head width.
    pub dh: usize,
}

impl HeadBatch {
    /// Each head's `[t x dh]` columns of rows `width` wide, from column `offset`: q, k, v in
    /// the `qkv` rows (`width` 3 x dim), the heads' outputs in the concatenated rows (dim).
    pub fn in_rows(&self, width: usize, offset: usize) -> BatchLayout {
        BatchLayout {
            count: (self.n, self.heads),
            stride: (self.t * width, self.dh),
            offset,
            rows: self.t,
            cols: self.dh,
            ld: width,
        }
    }

    /// `[images, heads, t, t]` probabilities.
    pub fn probs(&self) -> BatchLayout {
        let tt = self.t * self.t;
        BatchLayout {
            count: (self.n, self.heads),
            stride: (self.heads * tt, tt),
            offset: 0,
            rows: self.t,
            cols: self.t,
            ld: self.t,
        }
    }
}

/// A batch of matrices addressed by a device array of their addresses (cuBLAS's
/// pointer-array batched GEMM), which strided batches cannot express for two strides.
///
/// It holds raw addresses into the buffer it was made for, so the borrow checker does not
/// see the GEMMs' reads and writes through it: keep it beside that buffer and make it anew
/// whenever the buffer is reallocated.
pub struct MatrixBatch {
    /// Keeps the address array alive; `ptrs` is its device address.
    _array: CudaSlice<u64>,
    ptrs: u64,
    layout: BatchLayout,
}

impl MatrixBatch {
    /// The matrices of `layout` in `buf`, checked to lie inside it.
    pub fn new(
        stream: &Arc<CudaStream>,
        buf: &CudaSlice<f32>,
        layout: BatchLayout,
    ) -> Result<MatrixBatch> {
        let l = layout;
        if l.len() == 0 || l.rows == 0 || l.cols == 0 || l.cols > l.ld {
            return Err(Error::invalid(
                "batched GEMM operands",
                format!("an empty batch or rows wider than their stride: {l:?}"),
            ));
        }
        check("batched operands", "buffer", buf.len(), l.end())?;
        let (base, _record) = buf.device_ptr(stream);
        let elem = std::mem::size_of::<f32>() as u64;
        // Image-major, so the first n images' matrices are the array's first entries.
        let addrs: Vec<u64> = (0..l.count.0)
            .flat_map(|i| (0..l.count.1).map(move |j| (i, j)))
            .map(|(i, j)| base + elem * (l.offset + i * l.stride.0 + j * l.stride.1) as u64)
            .collect();
        let array = stream
            .clone_htod(&addrs)
            .cuda(|| "uploading batched GEMM addresses".into())?;
        let ptrs = array.device_ptr(stream).0;
        Ok(MatrixBatch {
            ptrs,
            _array: array,
            layout,
        })
    }
}

/// Which batched product: with `P` a `[t x t]` and `X`, `Y` `[t x dh]` matrices per batch entry.
#[derive(Clone, Copy, Debug)]
pub enum Batched {
    /// `out[t x t] = alpha X Y^T` (scores; the gradient of the probabilities).
    XYt,
    /// `out[t x dh] = alpha P X` (attention output; the gradient of the queries).
    PX,
    /// `out[t x dh] = alpha P^T X` (the gradients of the values and keys).
    PtX,
}

/// One product of the given form for every head of the first `images` images of the batches
/// (which must agree in shape and heads, and hold that many images; buffers sized for a
/// larger shard serve a smaller one). `out` is written through its addresses (see
/// [`MatrixBatch`]).
#[allow(clippy::too_many_arguments)]
pub fn batched(
    blas: &CudaBlas,
    form: Batched,
    first: &MatrixBatch,
    second: &MatrixBatch,
    out: &MatrixBatch,
    images: usize,
    alpha: f32,
) -> Result<()> {
    let what = format!("batched {form:?}");
    let (f, x, o) = (first.layout, second.layout, out.layout);
    let dims = |l: BatchLayout| (l.rows, l.cols);
    // `t` and `dh` from the first operand; the others must match.
    let (t, dh, want_first, want_out) = match form {
        Batched::XYt => (f.rows, f.cols, (f.rows, f.cols), (f.rows, f.rows)),
        Batched::PX | Batched::PtX => (f.rows, x.cols, (f.rows, f.rows), (f.rows, x.cols)),
    };
    if dims(f) != want_first
        || dims(x) != (t, dh)
        || dims(o) != want_out
        || [x.count.1, o.count.1] != [f.count.1; 2]
        || [f.count.0, x.count.0, o.count.0]
            .iter()
            .any(|&n| n < images)
    {
        return Err(Error::invalid(
            what,
            format!(
                "operands that disagree or hold fewer than {images} images: first {f:?}, \
                 second {x:?}, out {o:?}"
            ),
        ));
    }
    // cuBLAS's A is `second` and its B is `first`, as in the row-major forms above.
    let shape = match form {
        // out^T = Y X^T: A = Y (op T), B = X (op N).
        Batched::XYt => Shape {
            trans: (CUBLAS_OP_T, CUBLAS_OP_N),
            mnk: (t, t, dh),
            ld: (x.ld, f.ld, o.ld),
            alpha,
        },
        // out^T = X^T P^T: A = X (op N), B = P (op N).
        Batched::PX => Shape {
            trans: (CUBLAS_OP_N, CUBLAS_OP_N),
            mnk: (dh, t, t),
            ld: (x.ld, f.ld, o.ld),
            alpha,
        },
        // out^T = X^T P: A = X (op N), B = P (op T).
        Batched::PtX => Shape {
            trans: (CUBLAS_OP_N, CUBLAS_OP_T),
            mnk: (dh, t, t),
            ld: (x.ld, f.ld, o.ld),
            alpha,
        },
    };
    let c = shape.config();
    // SAFETY: each batch's addresses were checked against its buffer's length and layout
    // when it was made, and the shapes are checked above.
    let status = unsafe {
        cublas_sys::cublasSgemmBatched(
            *blas.handle(),
            c.transa,
            c.transb,
            c.m,
            c.n,
            c.k,
            &c.alpha,
            second.ptrs as *const *const f32,
            c.lda,
            first.ptrs as *const *const f32,
            c.ldb,
            &c.beta,
            out.ptrs as *const *mut f32,
            c.ldc,
            (images * f.count.1) as i32,
        )
    };
    status.result().map_err(|e| Error::Blas { what, source: e })
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
