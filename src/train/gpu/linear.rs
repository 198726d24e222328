//! The linear layers' GEMMs on cuBLASLt, row-major: the forward `Y = X W^T`, with the bias and
//! ReLU fused into the GEMM's epilogue, and the backward `dW = dY^T X`, `dX = dY W`.
//!
//! A row-major `[r x c]` matrix is a column-major `[c x r]` one, so each product is issued as
//! its transpose, as in [`crate::train::gpu::blas`]: `Y^T = W X^T`, whose bias is per row of `Y^T`, which
//! is what cuBLASLt's bias epilogue adds. GELU is not fused: cuBLASLt's is its own kernel's
//! approximation, and the ViT keeps its GELU kernel (`kernels/gelu.cu`), which the CPU
//! reference mirrors.
//!
//! f32 computes in exact f32 (`CUBLAS_COMPUTE_32F`; cudarc's safe `Matmul<f32>` would use TF32
//! tensor cores and silently change the numerics). bf16 rounds the operands to bf16 with our
//! cast kernel into scratch buffers owned here, and the products accumulate and are written in
//! f32 (A and B `CUDA_R_16BF`, C and D `CUDA_R_32F`, `CUBLAS_COMPUTE_32F`). Weights are cast
//! as they are used, like activations, rather than once per step into a bf16 copy of the
//! parameters: one path for every operand and no copy to keep in step with the optimizer and
//! the replica refreshes; a weight is used twice a step, and its casts are ~5% of the cast
//! traffic (vit-small: ~0.05 ms a step). The backward rounds dY once for both products.
//!
//! A step repeats a few shapes, so each shape's descriptors and the heuristic's algorithm are
//! built once and cached: a heuristic query costs host time on every call otherwise. The key
//! holds each matrix pointer's alignment too, since the heuristic only offers algorithms that
//! accept it. A bias not 16-byte aligned (small models' odd offsets in the flat parameter
//! vector) is copied to an aligned buffer first: the epilogue's bias loads need it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublaslt::result::{self, CublasError};
use cudarc::cublaslt::sys::{
    self, cublasComputeType_t, cublasLtEpilogue_t, cublasLtMatmulDescAttributes_t as Desc,
    cublasLtMatmulPreferenceAttributes_t as Pref, cudaDataType_t,
};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::base::Precision;
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::Gpu;
use crate::kernels::cast::CastKernels;
use crate::train::gpu::blas::check;

/// cuBLASLt's workspace, one per handle: NVIDIA's recommendation for Hopper.
const WORKSPACE: usize = 32 << 20;

/// The bias alignment the epilogue needs (its vector loads).
const BIAS_ALIGN: u64 = 16;

/// What the forward adds to `X W^T`; `b` has `dout` values. (cuBLASLt's epilogue, not the
/// inference kernels' [`crate::kernels::linear::Epilogue`].)
pub enum GemmEpilogue<'a> {
    /// `Y = X W^T`.
    Plain,
    /// `Y = X W^T + b`.
    Bias(CudaView<'a, f32>),
    /// `Y = relu(X W^T + b)`.
    BiasRelu(CudaView<'a, f32>),
}

/// One column-major product `C = op(A) op(B)` as cuBLAS names it: whether A and B are
/// transposed, `(m, n, k)` (C is `m x n`, the inner size `k`), and the leading dimensions of
/// A, B and C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Product {
    trans: (bool, bool),
    mnk: (usize, usize, usize),
    ld: (usize, usize, usize),
}

/// The cache key: a product, its epilogue, and the byte alignment (up to 256) of A, B and C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Gemm {
    product: Product,
    epilogue: cublasLtEpilogue_t,
    align: [u32; 3],
}

/// A cached shape: its descriptors and algorithm (null handles are not yet created).
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    /// A, B, and C (which is also D).
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by cuBLASLt (or is null) and is destroyed once.
        // Errors cannot be reported from a drop; a failed destroy only leaks host memory.
        unsafe {
            for &l in &self.layouts {
                if !l.is_null() {
                    let _ = result::destroy_matrix_layout(l);
                }
            }
            if !self.desc.is_null() {
                let _ = result::destroy_matmul_desc(self.desc);
            }
        }
    }
}

/// Which bf16 scratch buffer an operand is cast into.
#[derive(Clone, Copy)]
enum Slot {
    X = 0,
    Dy = 1,
    W = 2,
}

/// The linear layers' GEMMs of one replica: a cuBLASLt handle on the replica's stream, its
/// workspace, the cached shapes, and the bf16 scratch.
pub struct Linear {
    gpu: Arc<Gpu>,
    stream: Arc<CudaStream>,
    cast: CastKernels,
    precision: Precision,
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: HashMap<Gemm, Plan>,
    /// bf16 copies of the X, dY and W operands of the product being issued (bf16 only).
    scratch: [CudaSlice<bf16>; 3],
    /// A 16-byte aligned copy of a bias that is not.
    bias: CudaSlice<f32>,
}

// SAFETY: the cuBLASLt handle and descriptors are host objects that any thread may use, one at
// a time; `Linear` is used through `&mut self` only, from the thread that owns it.
unsafe impl Send for Linear {}

impl Drop for Linear {
    fn drop(&mut self) {
        self.plans.clear(); // the descriptors go before the handle
        // SAFETY: created in `new`, destroyed once; nothing uses it after this.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

fn lt_error(what: String) -> impl FnOnce(CublasError) -> Error {
    move |source| Error::BlasLt { what, source }
}

/// The largest power of two (up to 256) dividing a device address.
fn alignment(ptr: u64) -> u32 {
    1 << ptr.trailing_zeros().min(8)
}

impl Linear {
    /// A handle on `gpu`'s stream computing in `precision`.
    pub fn new(gpu: Arc<Gpu>, precision: Precision) -> Result<Linear> {
        let what = || format!("creating a cuBLASLt handle on cuda:{}", gpu.ordinal());
        // SAFETY: only tries to load the library (dynamic loading), as the first call would.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::invalid(
                what(),
                "libcublasLt could not be loaded (it ships with cuBLAS; check the CUDA \
                 libraries are on the library path)",
            ));
        }
        gpu.ctx().bind_to_thread().cuda(what)?;
        let handle = result::create_handle().map_err(lt_error(what()))?;
        let stream = gpu.stream().clone();
        let alloc = || {
            stream
                .alloc_zeros::<bf16>(1)
                .cuda(|| "allocating GEMM scratch".into())
        };
        Ok(Linear {
            workspace: stream
                .alloc_zeros::<u8>(WORKSPACE)
                .cuda(|| "allocating the cuBLASLt workspace".into())?,
            plans: HashMap::new(),
            scratch: [alloc()?, alloc()?, alloc()?],
            bias: stream
                .alloc_zeros::<f32>(1)
                .cuda(|| "allocating GEMM scratch".into())?,
            cast: CastKernels::load(&gpu)?,
            precision,
            handle,
            stream,
            gpu,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// `y[rows x dout] = x[rows x din] W^T`, W `[dout x din]`, then the epilogue.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<X: DevicePtr<f32>, W: DevicePtr<f32>, Y: DevicePtrMut<f32>>(
        &mut self,
        x: &X,
        w: &W,
        epilogue: GemmEpilogue<'_>,
        y: &mut Y,
        rows: usize,
        din: usize,
        dout: usize,
    ) -> Result<()> {
        const WHAT: &str = "Y = X W^T";
        check(WHAT, "x", x.len(), rows * din)?;
        check(WHAT, "w", w.len(), dout * din)?;
        check(WHAT, "y", y.len(), rows * dout)?;
        let (kind, bias) = match epilogue {
            GemmEpilogue::Plain => (cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT, None),
            GemmEpilogue::Bias(b) => (cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS, Some(b)),
            GemmEpilogue::BiasRelu(b) => (cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS, Some(b)),
        };
        let bias = match bias {
            Some(b) => {
                check(WHAT, "b", b.len(), dout)?;
                Some(self.aligned_bias(&b, dout)?)
            }
            None => None,
        };
        let a = self.operand(Slot::W, w, dout * din)?;
        let b = self.operand(Slot::X, x, rows * din)?;
        let c = y.device_ptr_mut(&self.stream).0;
        // Y^T = W X^T: A = W (op T), B = X (op N).
        let product = Product {
            trans: (true, false),
            mnk: (dout, rows, din),
            ld: (din, din, dout),
        };
        self.matmul(WHAT, product, kind, [a, b, c], bias)
    }

    /// `gw[dout x din] = dY^T X` and, with `dx = Some((W, dX))`, `dX[rows x din] = dY W`
    /// (dY `[rows x dout]`, X `[rows x din]`, W `[dout x din]`). The first layer has no dX.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<X: DevicePtr<f32>, D: DevicePtr<f32>, G: DevicePtrMut<f32>>(
        &mut self,
        x: &X,
        dy: &D,
        gw: &mut G,
        dx: Option<(CudaView<'_, f32>, &mut CudaSlice<f32>)>,
        rows: usize,
        din: usize,
        dout: usize,
    ) -> Result<()> {
        const WHAT_W: &str = "dW = dY^T X";
        const WHAT_X: &str = "dX = dY W";
        check(WHAT_W, "x", x.len(), rows * din)?;
        check(WHAT_W, "dy", dy.len(), rows * dout)?;
        check(WHAT_W, "gw", gw.len(), dout * din)?;
        if let Some((w, dx)) = &dx {
            check(WHAT_X, "w", w.len(), dout * din)?;
            check(WHAT_X, "dx", dx.len(), rows * din)?;
        }
        let plain = cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT;
        let dy = self.operand(Slot::Dy, dy, rows * dout)?;
        let x = self.operand(Slot::X, x, rows * din)?;
        let gw = gw.device_ptr_mut(&self.stream).0;
        // dW^T = X^T dY: A = X (op N), B = dY (op T).
        let product = Product {
            trans: (false, true),
            mnk: (din, dout, rows),
            ld: (din, dout, din),
        };
        self.matmul(WHAT_W, product, plain, [x, dy, gw], None)?;
        if let Some((w, dx)) = dx {
            let w = self.operand(Slot::W, &w, dout * din)?;
            let dx = dx.device_ptr_mut(&self.stream).0;
            // dX^T = W^T dY^T: A = W (op N), B = dY (op N).
            let product = Product {
                trans: (false, false),
                mnk: (din, rows, dout),
                ld: (din, dout, din),
            };
            self.matmul(WHAT_X, product, plain, [w, dy, dx], None)?;
        }
        Ok(())
    }

    /// The address the GEMM reads operand `src` (`n` values) from: `src` itself in f32, its
    /// bf16 copy in scratch `slot` in bf16.
    fn operand<S: DevicePtr<f32>>(&mut self, slot: Slot, src: &S, n: usize) -> Result<u64> {
        if self.precision == Precision::F32 {
            return Ok(src.device_ptr(&self.stream).0);
        }
        let buf = &mut self.scratch[slot as usize];
        if buf.len() < n {
            // The old buffer is freed in stream order, after the work that reads it.
            *buf = self
                .stream
                .alloc_zeros::<bf16>(n)
                .cuda(|| format!("allocating {n} bf16 GEMM operands"))?;
        }
        let mut dst = buf.slice_mut(..n);
        self.cast.bf16(&self.stream, src, &mut dst, n)?;
        Ok(dst.device_ptr(&self.stream).0)
    }

    /// The address of `b` (`n` values), or of an aligned copy when it is not aligned.
    fn aligned_bias(&mut self, b: &CudaView<'_, f32>, n: usize) -> Result<u64> {
        let at = b.device_ptr(&self.stream).0;
        if at % BIAS_ALIGN == 0 {
            return Ok(at);
        }
        if self.bias.len() < n {
            self.bias = self
                .stream
                .alloc_zeros::<f32>(n)
                .cuda(|| "allocating an aligned bias".into())?;
        }
        let mut dst = self.bias.slice_mut(..n);
        self.stream
            .memcpy_dtod(&b.slice(..n), &mut dst)
            .cuda(|| "copying a bias to aligned memory".into())?;
        Ok(dst.device_ptr(&self.stream).0)
    }

    /// Enqueues `C = op(A) op(B)` (then the epilogue with `bias`) at the addresses `[A, B, C]`,
    /// building the shape's plan on first use.
    fn matmul(
        &mut self,
        what: &str,
        product: Product,
        epilogue: cublasLtEpilogue_t,
        ptrs: [u64; 3],
        bias: Option<u64>,
    ) -> Result<()> {
        let mnk = product.mnk;
        let shown = || format!("{what} (m, n, k) = {mnk:?}");
        if mnk.0 == 0 || mnk.1 == 0 || mnk.2 == 0 {
            return Err(Error::invalid(shown(), "a GEMM needs every size >= 1"));
        }
        let key = Gemm {
            product,
            epilogue,
            align: ptrs.map(alignment),
        };
        self.gpu.ctx().bind_to_thread().cuda(shown)?;
        if !self.plans.contains_key(&key) {
            let plan = self.plan(&key).map_err(lt_error(format!(
                "choosing an algorithm for {} ({})",
                shown(),
                self.precision
            )))?;
            self.plans.insert(key, plan);
        }
        let plan = &self.plans[&key];
        let (alpha, beta) = (1.0f32, 0.0f32);
        let workspace = self.workspace.device_ptr(&self.stream).0;
        // SAFETY: the plan was built for this shape and these alignments; the callers checked
        // every buffer's length against the shape; the bias (when the epilogue has one) holds
        // `m` values; alpha and beta are host f32 (the default pointer mode, scale type f32).
        unsafe {
            if let Some(bias) = bias {
                set_desc(plan.desc, Desc::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)
                    .map_err(lt_error(shown()))?;
            }
            let [a, b, c] = ptrs;
            result::matmul(
                self.handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                a as *const c_void,
                plan.layouts[0],
                b as *const c_void,
                plan.layouts[1],
                c as *const c_void,
                plan.layouts[2],
                c as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                workspace as *mut c_void,
                WORKSPACE,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(lt_error(shown()))
    }

    /// The descriptors of `key` and the heuristic's best algorithm for them.
    fn plan(&self, key: &Gemm) -> std::result::Result<Plan, CublasError> {
        // The trainer refuses tf32 when a job is opened (`train::PRECISIONS`); were it to get
        // here, its operands would stay f32 under the exact f32 compute type below.
        let ab = match self.precision {
            Precision::F32 | Precision::Tf32 => cudaDataType_t::CUDA_R_32F,
            Precision::Bf16 => cudaDataType_t::CUDA_R_16BF,
        };
        let f32t = cudaDataType_t::CUDA_R_32F;
        let Product { trans, mnk, ld } = key.product;
        let (m, n, k) = (mnk.0 as u64, mnk.1 as u64, mnk.2 as u64);
        let (lda, ldb, ldc) = (ld.0 as i64, ld.1 as i64, ld.2 as i64);
        // The stored matrices: op T means A is stored k x m, B n x k.
        let a_dims = if trans.0 { (k, m) } else { (m, k) };
        let b_dims = if trans.1 { (n, k) } else { (k, n) };
        let mut plan = Plan {
            desc: std::ptr::null_mut(),
            layouts: [std::ptr::null_mut(); 3],
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        // One at a time, so that a failure drops (destroys) those created before it.
        plan.desc = result::create_matmul_desc(cublasComputeType_t::CUBLAS_COMPUTE_32F, f32t)?;
        plan.layouts[0] = result::create_matrix_layout(ab, a_dims.0, a_dims.1, lda)?;
        plan.layouts[1] = result::create_matrix_layout(ab, b_dims.0, b_dims.1, ldb)?;
        plan.layouts[2] = result::create_matrix_layout(f32t, m, n, ldc)?;
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        // SAFETY: the descriptors are live; each attribute gets a value of its documented type.
        unsafe {
            set_desc(plan.desc, Desc::CUBLASLT_MATMUL_DESC_TRANSA, &op(trans.0))?;
            set_desc(plan.desc, Desc::CUBLASLT_MATMUL_DESC_TRANSB, &op(trans.1))?;
            set_desc(
                plan.desc,
                Desc::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &key.epilogue,
            )?;
        }
        let pref = result::create_matmul_pref()?;
        // SAFETY: as above, for the preference descriptor, destroyed right after the query.
        let found = unsafe {
            let [a, b, c] = key.align;
            let prefs = [
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, c),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, c),
            ];
            let workspace = WORKSPACE as u64;
            let set = |attr, v: *const c_void, size| {
                result::set_matmul_pref_attribute(pref, attr, v, size)
            };
            set(
                Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace as *const u64).cast(),
                8,
            )
            .and_then(|()| {
                prefs
                    .iter()
                    .try_for_each(|(attr, v)| set(*attr, (v as *const u32).cast(), 4))
            })
            .and_then(|()| {
                result::get_matmul_algo_heuristic(
                    self.handle,
                    plan.desc,
                    plan.layouts[0],
                    plan.layouts[1],
                    plan.layouts[2],
                    plan.layouts[2],
                    pref,
                )
            })
        };
        // SAFETY: created above, not used after this.
        let _ = unsafe { result::destroy_matmul_pref(pref) };
        plan.algo = found?.algo;
        Ok(plan)
    }
}

/// Sets a matmul descriptor attribute to `value`.
///
/// # Safety
/// `desc` must be live and `T` the attribute's documented type.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: Desc,
    value: &T,
) -> std::result::Result<(), CublasError> {
    // SAFETY: forwarded to the caller; `value` outlives the call, which copies it.
    unsafe {
        result::set_matmul_desc_attribute(
            desc,
            attr,
            (value as *const T).cast(),
            std::mem::size_of::<T>(),
        )
    }
}
