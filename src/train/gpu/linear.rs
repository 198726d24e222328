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
//! The GEMMs and their plan cache are [`crate::kernels::blaslt`]'s. A bias not 16-byte aligned (small models' odd offsets in the flat parameter
//! vector) is copied to an aligned buffer first: the epilogue's bias loads need it.

use std::sync::Arc;

use cudarc::cublaslt::sys::{cublasComputeType_t, cublasLtEpilogue_t, cudaDataType_t};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::base::Precision;
use crate::error::{CudaContext as _, Result};
use crate::gpu::Gpu;
use crate::kernels::blaslt::{LtGemm, Operands, Product, Types};
use crate::kernels::cast::CastKernels;
use crate::train::gpu::blas::check;

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

/// Which bf16 scratch buffer an operand is cast into.
#[derive(Clone, Copy)]
enum Slot {
    X = 0,
    Dy = 1,
    W = 2,
}

/// The linear layers' GEMMs of one replica: cuBLASLt on the replica's stream, and the bf16
/// scratch.
pub struct Linear {
    stream: Arc<CudaStream>,
    cast: CastKernels,
    precision: Precision,
    lt: LtGemm,
    /// bf16 copies of the X, dY and W operands of the product being issued (bf16 only).
    scratch: [CudaSlice<bf16>; 3],
    /// A 16-byte aligned copy of a bias that is not.
    bias: CudaSlice<f32>,
}

impl Linear {
    /// A handle on `gpu`'s stream computing in `precision`.
    pub fn new(gpu: Arc<Gpu>, precision: Precision) -> Result<Linear> {
        let stream = gpu.stream().clone();
        let alloc = || {
            stream
                .alloc_zeros::<bf16>(1)
                .cuda(|| "allocating GEMM scratch".into())
        };
        Ok(Linear {
            lt: LtGemm::new(gpu.clone(), stream.clone())?,
            scratch: [alloc()?, alloc()?, alloc()?],
            bias: stream
                .alloc_zeros::<f32>(1)
                .cuda(|| "allocating GEMM scratch".into())?,
            cast: CastKernels::load(&gpu)?,
            precision,
            stream,
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
            batch: None,
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
            batch: None,
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
                batch: None,
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

    /// Enqueues `C = op(A) op(B)` (then the epilogue with `bias`) at the addresses `[A, B, C]`.
    fn matmul(
        &mut self,
        what: &str,
        product: Product,
        epilogue: cublasLtEpilogue_t,
        [a, b, c]: [u64; 3],
        bias: Option<u64>,
    ) -> Result<()> {
        // The trainer refuses tf32 when a job is opened (`train::PRECISIONS`); were it to get
        // here, its operands would stay f32 under the exact f32 compute type below.
        let ab = match self.precision {
            Precision::F32 | Precision::Tf32 => cudaDataType_t::CUDA_R_32F,
            Precision::Bf16 => cudaDataType_t::CUDA_R_16BF,
        };
        let types = Types {
            ab,
            cd: cudaDataType_t::CUDA_R_32F,
            compute: cublasComputeType_t::CUBLAS_COMPUTE_32F,
        };
        let ops = Operands {
            a,
            b,
            c,
            d: c,
            bias,
            beta: 0.0,
        };
        self.lt.matmul(
            &format!("{what} ({})", self.precision),
            product,
            types,
            epilogue,
            ops,
        )
    }
}
