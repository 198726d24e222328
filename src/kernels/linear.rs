//! Launchers for `kernels/linear.cu`: `out = x W^T + bias` with a fused epilogue. The CPU
//! reference is [`cpu`], on the SIMD products of [`gemm`]. (The trainer's linear layers run
//! on cuBLASLt instead, `crate::train::gpu::linear`, against the same reference.)

pub mod cpu;
pub mod gemm;

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
};

use super::KernelModule;
use super::launch::{check_at_least, check_len, ptr, ptr_mut};
use super::layer_norm::{FORWARD_WIDTHS, LayerNormArgs, PlusOutput, forward_width};
use crate::base::Precision;
use crate::error::{Error, Result};
use crate::gpu::{DeviceBuffer, Gpu, Kernel};

/// Mirrors `LinearArgs` in `kernels/linear.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LinearArgs {
    x: u64,
    weight: u64,
    bias: u64,
    out: u64,
    token_slot: u64,
    n: i64,
    m: i64,
    k: i64,
    k_chunk: i64,
    scale: f32,
    batch: i32,
    l_all: i32,
    heads: i32,
    hd: i32,
}

// SAFETY: plain old data with the C struct's layout (`#[repr(C)]`, same field order).
unsafe impl DeviceRepr for LinearArgs {}

// The size `static_assert`ed in the .cu file: the two sides must change together.
const _: () = assert!(std::mem::size_of::<LinearArgs>() == 96);

/// The tile edge of the kernel's output blocks (`BM`, `BN` in the .cu file).
const TILE: usize = 64;
const THREADS: u32 = 256;
/// The k step of the f32 tiles' main loop (`F32Tiles::K`; the bf16 tiles step twice as far
/// and end a chunk of an odd number of these on a half-empty step): k-split chunks are
/// multiples of it.
const K_STEP: usize = 32;
/// Products of at most this many rows run in the few-rows kernels (`ROWS` in the .cu file):
/// one warp per output column instead of 64x64 tiles.
pub const ROWS: usize = 8;
/// Output columns per block of the few-rows kernels (a warp each).
const ROWS_COLUMNS: usize = THREADS as usize / 32;

/// How many k-split partial products [`Epilogue::SplitK`] should use for an `(n, m, k)`
/// product: enough blocks for about two per SM of an H100 (132), while every split keeps
/// at least 128 of k (4 steps of the main loop).
pub fn split_k(n: usize, m: usize, k: usize) -> usize {
    let tiles = n.div_ceil(TILE) * m.div_ceil(TILE);
    (264usize.div_ceil(tiles)).clamp(1, (k / 128).max(1))
}

/// The LayerNorm [`Epilogue::SplitKNorm`] applies to each row of `x W^T + bias + residual`
/// (`m` wide, at most `layer_norm::MAX_WIDTH`): `y = LN(..) * gamma + beta`, and `y_plus = y +
/// add` with `plus`. `y` must not be `x` or the weight (other blocks may still read them).
#[derive(Debug)]
pub struct RowNorm<'a> {
    /// `(n, m)`.
    pub residual: CudaView<'a, f32>,
    /// `(m)` each.
    pub gamma: CudaView<'a, f32>,
    pub beta: CudaView<'a, f32>,
    pub eps: f32,
    /// `(n, m)`.
    pub y: CudaViewMut<'a, f32>,
    pub plus: Option<PlusOutput<'a>>,
    /// One counter, zero before the launch (the kernel leaves it zero): allocate it zeroed
    /// and never poison it.
    pub arrived: CudaViewMut<'a, u32>,
}

/// What happens to each result element `acc` (row `r`, column `c`).
#[derive(Debug)]
pub enum Epilogue<'a> {
    /// `out[r][c] = (acc + bias[c]) * scale`.
    Bias { scale: f32 },
    /// `out[r][c] = relu(acc + bias[c])`.
    BiasRelu,
    /// No bias: `out[z][r][c]` is the product over the `z`-th of `splits` chunks of k,
    /// `out` `(splits, n, m)`; `layer_norm`'s `add_layer_norm_f32` sums them.
    SplitK { splits: usize },
    /// `SplitK` into `out`, then in the same launch `norm` of the sum of the partial products,
    /// the bias and the residual (the sum in `add_layer_norm_f32`'s order, by its code):
    /// `add_layer_norm_f32` without a launch of its own. Few rows only (at most [`ROWS`]):
    /// the last block to finish normalises every row, a warp each.
    SplitKNorm {
        splits: usize,
        norm: Box<RowNorm<'a>>,
    },
    /// The encoder's QKV projection (`m = 3c`, rows `token * batch + b`): q (times `scale`),
    /// k and v go to `out[which][head][b][slot][hd]` with `slot = token_slot[head][token]`.
    QkvWindows {
        token_slot: &'a DeviceBuffer<u32>,
        batch: usize,
        heads: usize,
        scale: f32,
    },
}

/// The kernels of `linear.cu` for one precision, loaded once: `linear_<epilogue>_<precision>`,
/// f32 on CUDA cores, tf32 and bf16 on tensor cores (f32 operands in memory, rounded on the
/// way to the tensor cores; f32 accumulation). Every variant takes the same arguments and
/// shapes.
#[derive(Debug, Clone)]
pub struct LinearKernels {
    precision: Precision,
    bias: Kernel,
    bias_relu: Kernel,
    split_k: Kernel,
    qkv_windows: Kernel,
    /// The few-rows kernels of `bias`, `bias_relu` and `split_k`, and the split-k
    /// LayerNorm, which only they have (one per LayerNorm row width: `_c256`, `_c512`,
    /// `_c1024`).
    rows_bias: Kernel,
    rows_bias_relu: Kernel,
    rows_split_k: Kernel,
    rows_split_k_norm: [Kernel; FORWARD_WIDTHS.len()],
}

impl LinearKernels {
    /// The f32 (CUDA-core) kernels.
    pub fn load(gpu: &Gpu) -> Result<LinearKernels> {
        Self::load_precision(gpu, Precision::F32)
    }

    /// The kernels computing in `precision`: the one place a precision picks its GEMMs.
    pub fn load_precision(gpu: &Gpu, precision: Precision) -> Result<LinearKernels> {
        macro_rules! names {
            ($p:literal) => {
                [
                    concat!("linear_bias_", $p),
                    concat!("linear_bias_relu_", $p),
                    concat!("linear_split_k_", $p),
                    concat!("linear_qkv_windows_", $p),
                    concat!("linear_rows_bias_", $p),
                    concat!("linear_rows_bias_relu_", $p),
                    concat!("linear_rows_split_k_", $p),
                    concat!("linear_rows_split_k_norm_c256_", $p),
                    concat!("linear_rows_split_k_norm_c512_", $p),
                    concat!("linear_rows_split_k_norm_c1024_", $p),
                ]
            };
        }
        let [
            bias,
            bias_relu,
            split_k,
            qkv_windows,
            rows_bias,
            rows_bias_relu,
            rows_split_k,
            norm_c256,
            norm_c512,
            norm_c1024,
        ] = match precision {
            Precision::F32 => names!("f32"),
            Precision::Tf32 => names!("tf32"),
            Precision::Bf16 => names!("bf16"),
        };
        let k = |name| gpu.kernel(KernelModule::Linear, name);
        Ok(LinearKernels {
            precision,
            bias: k(bias)?,
            bias_relu: k(bias_relu)?,
            split_k: k(split_k)?,
            qkv_windows: k(qkv_windows)?,
            rows_bias: k(rows_bias)?,
            rows_bias_relu: k(rows_bias_relu)?,
            rows_split_k: k(rows_split_k)?,
            rows_split_k_norm: [k(norm_c256)?, k(norm_c512)?, k(norm_c1024)?],
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// `out = epilogue(x W^T + bias)` with `x` `(n, k)`, `weight` `(m, k)`, `bias` `(m)`; `out`
    /// is `(n, m)` (for `QkvWindows` in the window layout; for `SplitK` and `SplitKNorm`,
    /// `(splits, n, m)`).
    /// Products of at most [`ROWS`] rows run in the few-rows kernels.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<f32>,
        weight: &impl DevicePtr<f32>,
        bias: &impl DevicePtr<f32>,
        (n, m, k): (usize, usize, usize),
        out: &mut impl DevicePtrMut<f32>,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        // Few rows: one warp per output column (the same products and epilogue).
        let rows = n <= ROWS && !matches!(epilogue, Epilogue::QkvWindows { .. });
        let kernel = match &epilogue {
            Epilogue::Bias { .. } if rows => &self.rows_bias,
            Epilogue::BiasRelu if rows => &self.rows_bias_relu,
            Epilogue::SplitK { .. } if rows => &self.rows_split_k,
            Epilogue::SplitKNorm { .. } if rows => &self.rows_split_k_norm[forward_width(m)],
            Epilogue::Bias { .. } => &self.bias,
            Epilogue::BiasRelu => &self.bias_relu,
            Epilogue::SplitK { .. } => &self.split_k,
            Epilogue::SplitKNorm { .. } => {
                return Err(Error::invalid(
                    self.rows_split_k_norm[forward_width(m)].name(),
                    format!("{n} rows: the fused LayerNorm takes at most {ROWS}"),
                ));
            }
            Epilogue::QkvWindows { .. } => &self.qkv_windows,
        };
        let name = kernel.name();
        check_len(name, "x", x.len(), n * k)?;
        check_len(name, "weight", weight.len(), m * k)?;
        check_len(name, "bias", bias.len(), m)?;
        let splits = match epilogue {
            Epilogue::SplitK { splits } | Epilogue::SplitKNorm { splits, .. } => splits,
            _ => 1,
        };
        check_len(name, "out", out.len(), splits * n * m)?;
        let mut args = LinearArgs {
            x: ptr(x, stream),
            weight: ptr(weight, stream),
            bias: ptr(bias, stream),
            out: 0,
            token_slot: 0,
            n: n as i64,
            m: m as i64,
            k: k as i64,
            k_chunk: k as i64,
            scale: 1.0,
            batch: 0,
            l_all: 0,
            heads: 0,
            hd: 0,
        };
        // The split-k LayerNorm's own parameters, after `args`.
        let mut norm_args = None;
        if matches!(
            epilogue,
            Epilogue::SplitK { .. } | Epilogue::SplitKNorm { .. }
        ) {
            if splits == 0 || splits > k.max(1) {
                return Err(Error::invalid(name, format!("{splits} splits of k = {k}")));
            }
            args.k_chunk = k.div_ceil(splits).next_multiple_of(K_STEP) as i64;
        }
        args.out = ptr_mut(out, stream);
        match epilogue {
            Epilogue::Bias { scale } => args.scale = scale,
            Epilogue::BiasRelu | Epilogue::SplitK { .. } => {}
            Epilogue::SplitKNorm { norm, .. } => {
                let RowNorm {
                    residual,
                    gamma,
                    beta,
                    eps,
                    mut y,
                    plus,
                    mut arrived,
                } = *norm;
                check_len(name, "gamma", gamma.len(), m)?;
                let mut ln = LayerNormArgs::forward(name, stream, &gamma, &beta, eps, &mut y)?;
                check_len(name, "y", y.len(), n * m)?;
                ln.residual_from(name, Some(&residual), stream)?;
                if let Some(plus) = plus {
                    ln.plus_from(name, plus, stream)?;
                }
                // The partial products and the bias the GEMM skipped.
                ln.sum_of(args.out, splits, args.bias);
                check_at_least(name, "arrived", arrived.len(), 1)?;
                norm_args = Some((ln, ptr_mut(&mut arrived, stream)));
            }
            Epilogue::QkvWindows {
                token_slot,
                batch,
                heads,
                scale,
            } => {
                let c = m / 3;
                if !m.is_multiple_of(3)
                    || heads == 0
                    || !c.is_multiple_of(heads)
                    || batch == 0
                    || !n.is_multiple_of(batch)
                {
                    return Err(Error::invalid(
                        name,
                        format!(
                            "m = {m} must be 3c with c divisible by {heads} heads, and \
                             n = {n} a multiple of batch {batch}"
                        ),
                    ));
                }
                let l_all = n / batch;
                check_len(name, "token_slot", token_slot.len(), heads * l_all)?;
                args.token_slot = ptr(token_slot, stream);
                args.scale = scale;
                args.batch = batch as i32;
                args.l_all = l_all as i32;
                args.heads = heads as i32;
                args.hd = (c / heads) as i32;
            }
        }
        let grid_dim = if rows {
            (m.div_ceil(ROWS_COLUMNS) as u32, 1, splits as u32)
        } else {
            (
                m.div_ceil(TILE) as u32,
                n.div_ceil(TILE) as u32,
                splits as u32,
            )
        };
        let cfg = LaunchConfig {
            grid_dim,
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = kernel.on(stream);
        launch.arg(&args);
        if let Some((ln, arrived)) = &norm_args {
            launch.arg(ln).arg(arrived);
        }
        // SAFETY: `args` (and the LayerNorm's `norm` and `arrived`) mirror the kernel's
        // parameters; every buffer was checked against the shape the kernel reads or writes.
        unsafe { launch.go(cfg) }
    }
}
