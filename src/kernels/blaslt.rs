//! cuBLASLt GEMMs with a fused epilogue: a handle, its workspace and the plans of the shapes
//! seen, shared by the trainer's linear layers (`train::gpu::linear`) and the 1x1
//! convolutions' GEMM path (`conv2d`).
//!
//! Products are column-major, as cuBLAS names them; a row-major caller issues each product as
//! its transpose. `D = epilogue(alpha op(A) op(B) + beta C)`: the epilogue (bias, ReLU) applies
//! after C is added, so a residual passed as C with beta = 1 lands before the ReLU.
//!
//! A caller repeats a few shapes, so each shape's descriptors and the heuristic's algorithm are
//! built once and cached: a heuristic query costs host time on every call otherwise. The key
//! holds each matrix pointer's alignment too, since the heuristic only offers algorithms that
//! accept it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublaslt::result::{self, CublasError};
use cudarc::cublaslt::sys::{
    self, cublasComputeType_t, cublasLtEpilogue_t, cublasLtMatmulDescAttributes_t as Desc,
    cublasLtMatmulPreferenceAttributes_t as Pref, cublasLtMatrixLayoutAttribute_t as Layout,
    cudaDataType_t,
};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::Gpu;

/// The most workspace an algorithm may ask for: NVIDIA's recommendation for Hopper. A handle
/// holds only what the algorithms of its shapes so far asked for (many ask for none; a CNN's
/// small GEMMs would otherwise hold 32 MiB for nothing), and the handles on one stream share
/// it ([`Gpu::stream_scratch`]).
const WORKSPACE: usize = 32 << 20;

/// One column-major product `C = op(A) op(B)` as cuBLAS names it: whether A and B are
/// transposed, `(m, n, k)` (C is `m x n`, the inner size `k`), and the leading dimensions of
/// A, B and C; or a strided batch of such products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Product {
    pub trans: (bool, bool),
    pub mnk: (usize, usize, usize),
    pub ld: (usize, usize, usize),
    pub batch: Option<Batch>,
}

/// `count` products of one shape, the i-th on A, B and C (and D) at `i * strides` elements
/// from their first (a stride of 0 shares that operand).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Batch {
    pub count: usize,
    pub strides: (usize, usize, usize),
}

/// The element types and compute type of a product: A and B are `ab`, C and D `cd` (the bias
/// too, cuBLASLt's default), scaled in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Types {
    pub ab: cudaDataType_t,
    pub cd: cudaDataType_t,
    pub compute: cublasComputeType_t,
}

/// The cache key: a product, its types, its epilogue, and the byte alignment (up to 256) of
/// A, B, C and D.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Gemm {
    product: Product,
    types: Types,
    epilogue: cublasLtEpilogue_t,
    align: [u32; 4],
}

/// A cached shape: its descriptors and algorithm (null handles are not yet created).
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    /// A, B, and C (which is also D's).
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
    /// The workspace the algorithm needs, in bytes.
    workspace: usize,
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

/// The addresses of one product's operands; `c` may be `d` (then `beta` is 0).
#[derive(Clone, Copy)]
pub struct Operands {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
    /// The epilogue's bias (`m` values, 16-byte aligned), when it has one.
    pub bias: Option<u64>,
    pub beta: f32,
}

/// A cuBLASLt handle, its workspace and cached plans, issuing on one stream.
pub struct LtGemm {
    gpu: Arc<Gpu>,
    stream: Arc<CudaStream>,
    handle: sys::cublasLtHandle_t,
    /// The stream's shared workspace, once a plan needs one: at least the largest plan's.
    workspace: Option<Arc<CudaSlice<u8>>>,
    /// Workspaces outgrown after a graph captured a product with them: the graph's replays
    /// still use them, so they live as long as the handle (those no graph saw are freed).
    retired: Vec<Arc<CudaSlice<u8>>>,
    /// Whether a graph captured a product with the current workspace.
    captured: bool,
    plans: HashMap<Gemm, Plan>,
}

// SAFETY: the cuBLASLt handle and descriptors are host objects that any thread may use, one at
// a time; `LtGemm` is used through `&mut self` only, from the thread that owns it.
unsafe impl Send for LtGemm {}

impl Drop for LtGemm {
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

impl LtGemm {
    /// A handle issuing on `stream` of `gpu`.
    pub fn new(gpu: Arc<Gpu>, stream: Arc<CudaStream>) -> Result<LtGemm> {
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
        Ok(LtGemm {
            workspace: None,
            retired: Vec::new(),
            captured: false,
            plans: HashMap::new(),
            handle,
            stream,
            gpu,
        })
    }

    /// Enqueues `D = epilogue(op(A) op(B) + beta C)` (`what` names it in errors), building the
    /// shape's plan on first use.
    pub fn matmul(
        &mut self,
        what: &str,
        product: Product,
        types: Types,
        epilogue: cublasLtEpilogue_t,
        ops: Operands,
    ) -> Result<()> {
        let mnk = product.mnk;
        let shown = || format!("{what} (m, n, k) = {mnk:?}");
        if mnk.0 == 0 || mnk.1 == 0 || mnk.2 == 0 {
            return Err(Error::invalid(shown(), "a GEMM needs every size >= 1"));
        }
        if let Some(b) = product.batch
            && (b.count == 0 || b.count > i32::MAX as usize)
        {
            return Err(Error::invalid(
                shown(),
                format!(
                    "a batch of {} products (cuBLASLt takes 1 to 2^31 - 1)",
                    b.count
                ),
            ));
        }
        let key = Gemm {
            product,
            types,
            epilogue,
            align: [ops.a, ops.b, ops.c, ops.d].map(alignment),
        };
        self.gpu.ctx().bind_to_thread().cuda(shown)?;
        let held = self.workspace.as_ref().map_or(0, |w| w.len());
        let capturing = self.stream.capture_status().cuda(shown)?
            != cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        if !self.plans.contains_key(&key) {
            // While a graph is captured nothing may be allocated: the algorithm must fit the
            // workspace held.
            let limit = if capturing { held } else { WORKSPACE };
            let plan = self.plan(&key, limit).map_err(lt_error(format!(
                "choosing an algorithm for {} ({types:?})",
                shown()
            )))?;
            self.plans.insert(key, plan);
        }
        let plan = &self.plans[&key];
        if plan.workspace > held {
            let grown =
                self.gpu
                    .stream_scratch(&self.stream, plan.workspace, "the cuBLASLt workspace")?;
            // Freed in stream order after the products queued with it, unless a graph holds it.
            if let Some(old) = self.workspace.replace(grown)
                && std::mem::take(&mut self.captured)
            {
                self.retired.push(old);
            }
        }
        self.captured |= capturing;
        let alpha = 1.0f32;
        let (workspace, workspace_len) = match &self.workspace {
            Some(w) => (w.device_ptr(&self.stream).0, w.len()),
            None => (0, 0),
        };
        // SAFETY: the plan was built for this shape, types and alignments; the callers checked
        // every buffer's length against the shape; the bias (when the epilogue has one) holds
        // `m` values; alpha and beta are host f32 (the default pointer mode, scale type f32).
        unsafe {
            if let Some(bias) = ops.bias {
                set_desc(plan.desc, Desc::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)
                    .map_err(lt_error(shown()))?;
            }
            result::matmul(
                self.handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&ops.beta as *const f32).cast(),
                ops.a as *const c_void,
                plan.layouts[0],
                ops.b as *const c_void,
                plan.layouts[1],
                ops.c as *const c_void,
                plan.layouts[2],
                ops.d as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                workspace as *mut c_void,
                workspace_len,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(lt_error(shown()))
    }

    /// The descriptors of `key` and the heuristic's best algorithm for them among those that
    /// need at most `workspace` bytes.
    fn plan(&self, key: &Gemm, workspace: usize) -> std::result::Result<Plan, CublasError> {
        let Types { ab, cd, compute } = key.types;
        let Product {
            trans,
            mnk,
            ld,
            batch,
        } = key.product;
        let (m, n, k) = (mnk.0 as u64, mnk.1 as u64, mnk.2 as u64);
        let (lda, ldb, ldc) = (ld.0 as i64, ld.1 as i64, ld.2 as i64);
        // The stored matrices: op T means A is stored k x m, B n x k.
        let a_dims = if trans.0 { (k, m) } else { (m, k) };
        let b_dims = if trans.1 { (n, k) } else { (k, n) };
        let mut plan = Plan {
            desc: std::ptr::null_mut(),
            layouts: [std::ptr::null_mut(); 3],
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
            workspace: 0,
        };
        // One at a time, so that a failure drops (destroys) those created before it.
        plan.desc = result::create_matmul_desc(compute, cudaDataType_t::CUDA_R_32F)?;
        plan.layouts[0] = result::create_matrix_layout(ab, a_dims.0, a_dims.1, lda)?;
        plan.layouts[1] = result::create_matrix_layout(ab, b_dims.0, b_dims.1, ldb)?;
        plan.layouts[2] = result::create_matrix_layout(cd, m, n, ldc)?;
        if let Some(Batch { count, strides }) = batch {
            let count = count as i32; // `matmul` checked that it fits
            let strides = [strides.0, strides.1, strides.2].map(|s| s as i64);
            for (&layout, stride) in plan.layouts.iter().zip(strides) {
                // SAFETY: the layout is live; the count is an i32 and the offset an i64, as
                // documented.
                unsafe {
                    set_layout(layout, Layout::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count)?;
                    set_layout(
                        layout,
                        Layout::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                        &stride,
                    )?;
                }
            }
        }
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
            let [a, b, c, d] = key.align;
            let prefs = [
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, c),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, d),
            ];
            let workspace = workspace as u64;
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
        let found = found?;
        plan.algo = found.algo;
        plan.workspace = found.workspaceSize;
        Ok(plan)
    }
}

/// Sets a matrix layout attribute to `value`.
///
/// # Safety
/// `layout` must be live and `T` the attribute's documented type.
unsafe fn set_layout<T>(
    layout: sys::cublasLtMatrixLayout_t,
    attr: Layout,
    value: &T,
) -> std::result::Result<(), CublasError> {
    // SAFETY: forwarded to the caller; `value` outlives the call, which copies it.
    unsafe {
        result::set_matrix_layout_attribute(
            layout,
            attr,
            (value as *const T).cast(),
            std::mem::size_of::<T>(),
        )
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
