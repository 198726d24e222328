//! `conv2d`: a 2-D convolution with a fused epilogue (bias, a residual added before the
//! activation as in ResNet's bottleneck, ReLU) and its backward passes (data, filter, bias).
//! [`cpu`] is the reference every engine is checked against; [`Conv2dKernels`] runs it on cuDNN in
//! f32, tf32 and bf16.
//!
//! Layouts: activations NHWC (`[n][h][w][c]`), filters KRSC (`[out][kh][kw][in / groups]`:
//! PyTorch's OIHW weights transposed, [`Conv2dShape::weight_to_gpu`]), bias `[out]`. Groups
//! split the channels as PyTorch's do (`groups == in == out` is a depthwise convolution).
//! Every tensor must start on a 16-byte boundary (cuDNN's vectorised kernels assume it, and
//! the algorithms are chosen on aligned buffers): allocations are; a view into a larger
//! buffer must keep it, and an error says when one does not.
//!
//! Precision (one per [`Conv2dKernels`]):
//! - `f32`: f32 tensors, FMA arithmetic only. cuDNN lets f32 convolutions use TF32 tensor
//!   cores unless told otherwise; `CUDNN_FMA_MATH` on the convolution descriptor forbids it,
//!   and an algorithm that reports tensor-op math is refused as well. So are the FFT and
//!   Winograd algorithms unless [`Conv2dKernels::set_transforms`] allows them: their
//!   transforms lose 1e-5 to 1e-3 a call (WINOGRAD_NONFUSED on AlexNet's 5x5: 9.4e-4, H200)
//!   where a direct sum loses about 1e-7, and a batch
//!   norm's backward amplifies that in the filter gradient before it. PyTorch's f32 (TF32 off,
//!   `cudnn.benchmark`) takes them where they are fastest (AlexNet's 11x11 and 5x5 filters);
//!   allowed, ours may too, and its f32 is then as exact as PyTorch's, no more.
//! - `tf32`: f32 tensors, `CUDNN_TENSOR_OP_MATH` (TF32 tensor cores, f32 accumulation); not
//!   `_ALLOW_CONVERSION`, which may round f32 operands to f16.
//! - `bf16`: bf16 tensors (inputs, weights, outputs, bias, residual and gradients) with f32
//!   accumulation (cuDNN's pseudo-bf16 configuration), tensor-op math. bf16 storage rather
//!   than f32 tensors with bf16 arithmetic because cuDNN has neither a configuration that
//!   reads bf16 and writes f32 nor one that rounds f32 operands to bf16 itself (only to f16):
//!   f32 storage would cost a cast kernel per operand and layer and still round the output.
//!   bf16 storage halves the traffic that bounds most convolutions, and is what PyTorch's
//!   autocast with channels_last runs.
//!
//! Algorithms are chosen once per shape and pass by cuDNN's own benchmark
//! (`cudnnFindConvolution*Algorithm`: the fastest that fits [`WORKSPACE_LIMIT`], meets the
//! precision, and is deterministic when asked) and cached with the shape's descriptors; all
//! shapes share one workspace, grown to the largest choice. Planning runs kernels, allocates
//! and synchronises, so it must not happen inside a CUDA graph capture: [`Conv2dKernels::prepare`]
//! every shape first (or run one eager pass).
//!
//! The fused epilogue: `cudnnConvolutionBiasActivationForward` computes
//! `y = act(conv(x, w) + z + bias)` in one call, for the configurations cuDNN supports (with the
//! identity activation only with the implicit-precomputed-GEMM algorithm). The first call of a
//! shape tries it; where cuDNN answers that it does not support the configuration, the shape
//! runs the plain convolution followed by `conv2d_epilogue_<dtype>` (`kernels/conv2d.cu`) from
//! then on. [`Conv2dKernels::describe`] says which it runs.
//!
//! A 1x1, stride-1, unpadded, ungrouped convolution is a GEMM, `y[rows x out] = x[rows x in]
//! W^T` (rows = batch x height x width, W `[out][in]`), and cuDNN runs those badly: its chosen
//! algorithm for them computes without tensor cores (2-9 TFLOP/s in bf16 on an H100, where its
//! 3x3 convolutions reach 85-100). Planning such a shape times cuDNN's algorithm and a
//! cuBLASLt GEMM ([`super::blaslt`]) a few calls each and keeps the faster for the forward
//! pass; the GEMM fuses every epilogue (the residual as its C with beta = 1, bias and ReLU
//! after it). Its math follows the precision: exact f32 (`CUBLAS_COMPUTE_32F`), TF32
//! (`CUBLAS_COMPUTE_32F_FAST_TF32`), bf16 tensors with f32 accumulation. The backward passes
//! of such a shape are GEMMs too, `dx (+)= dy W` and `dW (+)= dy^T x` (the accumulation as C
//! with beta = 1): each is timed against cuDNN's choice on its first use (or at
//! [`Conv2dKernels::prepare`]) and the faster kept. [`Conv2dKernels::set_gemm`] forces either
//! path for every pass.
//!
//! A strided 1x1 convolution (ResNet's downsampling shortcuts) reads every s-th pixel of every
//! s-th row: where `s` divides the height, those are evenly spaced rows of evenly spaced
//! pixels, so its forward and backward-data passes are strided batches of GEMMs, one per
//! output row (the data pass clears dx first: the pixels it skips get no gradient), timed
//! against cuDNN in the same way. cuDNN's own backward-data algorithms for these shapes are
//! slow in f32 (a direct kernel took 32.5 ms of ResNet-50's 104 ms step on an H100). The
//! filter pass sums over the rows and stays on cuDNN.
//!
//! f32 has a third path for every shape and pass, channel-major: the operands transposed into
//! scratch copies (NCHW activations `[n][c][h][w]`, KCRS filters `[out][in / groups][kh][kw]`,
//! by `channel_copy`), cuDNN run on those with their own descriptors and algorithm choice
//! (under the same rules: FMA math, determinism when asked, FFT and Winograd only when
//! allowed), and the result transposed back (added to the output where the pass
//! accumulates). With FFT and Winograd allowed, cuDNN chose none of them on NHWC f32
//! tensors and on NCHW copies took them at two to six times the speed: AlexNet at 224 (batch
//! 64, H100, 2026-12-07) ran its 5x5 forward by FFT_TILING in 0.24 ms against NHWC's
//! IMPLICIT_PRECOMP_GEMM 0.85, and every pass of its 5x5 and 3x3 layers by FFT, FFT_TILING or
//! WINOGRAD_NONFUSED, transposes included (PyTorch's channels_last f32 runs such transforms
//! too; before this path AlexNet spent 2.9 ms a step in forward convolutions against
//! PyTorch's 1.5, 3.1 against 1.5 in backward data, 3.6 against 0.7 in backward filter).
//! Without the transforms it pays less often (AlexNet's 11x11 backward data). When a shape
//! is planned, each of its passes is timed end to end on
//! this path (the transposes included) against cuDNN on the NHWC tensors, as the GEMM path
//! is, and the faster kept; a forward epilogue then runs as on the unfused path, by our
//! kernel on the NHWC output. [`Conv2dKernels::set_channel_major`] forces or forbids it. The
//! copies share three scratch buffers, counted with the workspace: timing the path grows
//! them to the pass's tensors, and they are then cut back to the largest tensors of the
//! passes that run channel-major (none: one byte each).

use std::collections::HashMap;
use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::Arc;

use cudarc::cublaslt::sys::{cublasComputeType_t, cublasLtEpilogue_t, cudaDataType_t};
use cudarc::cudnn::result::{self as dnn, CudnnError};
use cudarc::cudnn::sys::{
    self, cudnnActivationMode_t as Act, cudnnConvolutionBwdDataAlgo_t as DataAlgo,
    cudnnConvolutionBwdFilterAlgo_t as FilterAlgo, cudnnConvolutionFwdAlgo_t as FwdAlgo,
    cudnnDataType_t, cudnnDeterminism_t, cudnnMathType_t as Math, cudnnStatus_t as Status,
};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig};
use half::bf16;

use super::KernelModule;
use super::blaslt::{Batch, LtGemm, Operands, Product, Types};
use super::channel_copy::{ChannelCopyKernels, Copy2d};
use super::launch::{Args, check_len, elementwise, ptr, ptr_mut};
use crate::base::Precision;
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::cudnn::{CudnnHandle, cudnn_error};
use crate::gpu::{Gpu, Kernel, time_ms};

pub mod cpu;

/// The most workspace one algorithm may use: a faster algorithm that needs more is passed
/// over.
pub const WORKSPACE_LIMIT: usize = 256 << 20;

/// The geometry of one 2-D convolution (see the module docs for the layouts): the launcher's
/// and the reference's ([`cpu::Conv2d`] adds the activations' layout and the ReLU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dShape {
    pub batch: usize,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    /// The same on both axes.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    pub groups: usize,
}

impl Conv2dShape {
    /// A `k x k` convolution of a `batch x height x width x in_channels` input, stride 1, no
    /// padding, one group.
    pub fn new(
        batch: usize,
        [height, width]: [usize; 2],
        in_channels: usize,
        out_channels: usize,
        k: usize,
    ) -> Self {
        Conv2dShape {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel_h: k,
            kernel_w: k,
            stride: 1,
            pad: 0,
            groups: 1,
        }
    }

    pub fn with_stride(self, stride: usize) -> Self {
        Conv2dShape { stride, ..self }
    }

    pub fn with_pad(self, pad: usize) -> Self {
        Conv2dShape { pad, ..self }
    }

    pub fn with_groups(self, groups: usize) -> Self {
        Conv2dShape { groups, ..self }
    }

    /// Output height and width (0 where the kernel does not fit the padded input;
    /// [`Self::check`] refuses those).
    pub fn out_size(&self) -> [usize; 2] {
        let out = |size: usize, k: usize| {
            let padded = size + 2 * self.pad;
            if self.stride == 0 || padded < k {
                0
            } else {
                (padded - k) / self.stride + 1
            }
        };
        [
            out(self.height, self.kernel_h),
            out(self.width, self.kernel_w),
        ]
    }

    /// Input channels each filter sees.
    pub fn group_in_channels(&self) -> usize {
        self.in_channels / self.groups.max(1)
    }

    /// Elements of the input, `[batch][height][width][in]`.
    pub fn input_len(&self) -> usize {
        self.batch * self.height * self.width * self.in_channels
    }

    /// Elements of the filters, `[out][kh][kw][in / groups]`.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.kernel_h * self.kernel_w * self.group_in_channels()
    }

    /// Elements of the output, `[batch][out_h][out_w][out]`.
    pub fn output_len(&self) -> usize {
        let [oh, ow] = self.out_size();
        self.batch * oh * ow * self.out_channels
    }

    /// Multiply-adds times two: the forward pass's FLOPs (each backward pass does as many).
    pub fn flops(&self) -> f64 {
        let k = self.kernel_h * self.kernel_w * self.group_in_channels();
        2.0 * self.output_len() as f64 * k as f64
    }

    /// Fails unless every size is positive, the groups divide both channel counts, the
    /// kernel fits the padded input, and every tensor fits cuDNN's 32-bit indexing.
    pub fn check(&self) -> Result<()> {
        let bad = |problem: String| Err(Error::invalid(format!("conv2d {self}"), problem));
        let sizes = [
            self.batch,
            self.in_channels,
            self.height,
            self.width,
            self.out_channels,
            self.kernel_h,
            self.kernel_w,
            self.stride,
            self.groups,
        ];
        if sizes.contains(&0) {
            return bad("every size, the stride and the group count must be positive".into());
        }
        if !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return bad(format!(
                "{} groups must divide both {} input and {} output channels",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        if self.out_size().contains(&0) {
            return bad("the kernel is larger than the padded input".into());
        }
        let limit = i32::MAX as usize;
        for (what, len) in [
            ("input", self.input_len()),
            ("weight", self.weight_len()),
            ("output", self.output_len()),
        ] {
            if len > limit {
                return bad(format!(
                    "the {what} has {len} elements, more than cuDNN's 2^31 - 1"
                ));
            }
        }
        Ok(())
    }

    /// PyTorch's `(out, in / groups, kh, kw)` weights in this crate's GPU layout
    /// `(out, kh, kw, in / groups)`.
    pub fn weight_to_gpu(&self, oihw: &[f32]) -> Vec<f32> {
        let (c, k) = (self.group_in_channels(), self.kernel_h * self.kernel_w);
        let mut krsc = vec![0.0; oihw.len()];
        for (o, (src, dst)) in oihw.chunks(c * k).zip(krsc.chunks_mut(c * k)).enumerate() {
            debug_assert!(o < self.out_channels);
            for ci in 0..c {
                for p in 0..k {
                    dst[p * c + ci] = src[ci * k + p];
                }
            }
        }
        krsc
    }

    /// The inverse of [`Self::weight_to_gpu`]: GPU filters (or their gradient) in PyTorch's
    /// layout.
    pub fn weight_from_gpu(&self, krsc: &[f32]) -> Vec<f32> {
        let (c, k) = (self.group_in_channels(), self.kernel_h * self.kernel_w);
        let mut oihw = vec![0.0; krsc.len()];
        for (src, dst) in krsc.chunks(c * k).zip(oihw.chunks_mut(c * k)) {
            for ci in 0..c {
                for p in 0..k {
                    dst[ci * k + p] = src[p * c + ci];
                }
            }
        }
        oihw
    }
}

impl std::fmt::Display for Conv2dShape {
    /// `2x37x41x3 -> 64 k7x7 s2 p3 g1` (the input NHWC).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{}x{} -> {} k{}x{} s{} p{} g{}",
            self.batch,
            self.height,
            self.width,
            self.in_channels,
            self.out_channels,
            self.kernel_h,
            self.kernel_w,
            self.stride,
            self.pad,
            self.groups
        )
    }
}

/// A tensor element type [`Conv2dKernels`] stores: f32 (the f32 and tf32 precisions) or bf16.
pub trait Element: DeviceRepr + Copy + Default + 'static {
    const DATA_TYPE: cudnnDataType_t;
    const NAME: &'static str;
    /// `conv2d_epilogue_<dtype>` in `kernels/conv2d.cu`.
    const EPILOGUE: &'static str;
    /// `v` in this type (bf16: rounded to nearest even).
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    const DATA_TYPE: cudnnDataType_t = cudnnDataType_t::CUDNN_DATA_FLOAT;
    const NAME: &'static str = "f32";
    const EPILOGUE: &'static str = "conv2d_epilogue_f32";
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for bf16 {
    const DATA_TYPE: cudnnDataType_t = cudnnDataType_t::CUDNN_DATA_BFLOAT16;
    const NAME: &'static str = "bf16";
    const EPILOGUE: &'static str = "conv2d_epilogue_bf16";
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// What the forward pass does after the convolution: `y = act(conv(x, w) + bias + residual)`.
pub struct Epilogue<'a, T> {
    /// `[out]` values added per channel.
    pub bias: Option<CudaView<'a, T>>,
    /// A tensor shaped like the output, added before the activation (ResNet's shortcut).
    pub residual: Option<CudaView<'a, T>>,
    pub relu: bool,
}

impl<'a, T> Epilogue<'a, T> {
    /// `y = conv(x, w)`.
    pub fn none() -> Self {
        Epilogue {
            bias: None,
            residual: None,
            relu: false,
        }
    }

    /// `y = conv(x, w) + bias`.
    pub fn bias(bias: CudaView<'a, T>) -> Self {
        Epilogue {
            bias: Some(bias),
            residual: None,
            relu: false,
        }
    }

    /// `y = relu(conv(x, w) + bias)`.
    pub fn bias_relu(bias: CudaView<'a, T>) -> Self {
        Epilogue {
            bias: Some(bias),
            residual: None,
            relu: true,
        }
    }

    /// `y = relu(conv(x, w) + bias + residual)`: the end of a ResNet bottleneck.
    pub fn bias_add_relu(bias: CudaView<'a, T>, residual: CudaView<'a, T>) -> Self {
        Epilogue {
            bias: Some(bias),
            residual: Some(residual),
            relu: true,
        }
    }

    fn is_none(&self) -> bool {
        self.bias.is_none() && self.residual.is_none() && !self.relu
    }
}

macro_rules! descriptor {
    ($name:ident, $raw:ty, $destroy:path) => {
        /// Owns a cuDNN descriptor; destroyed on drop.
        struct $name($raw);

        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: created by cuDNN, destroyed once. A failed destroy only leaks host
                // memory, and a drop cannot report it.
                let _ = unsafe { $destroy(self.0) };
            }
        }
    };
}

descriptor!(
    TensorDesc,
    sys::cudnnTensorDescriptor_t,
    dnn::destroy_tensor_descriptor
);
descriptor!(
    FilterDesc,
    sys::cudnnFilterDescriptor_t,
    dnn::destroy_filter_descriptor
);
descriptor!(
    ConvDesc,
    sys::cudnnConvolutionDescriptor_t,
    dnn::destroy_convolution_descriptor
);
descriptor!(
    ActivationDesc,
    sys::cudnnActivationDescriptor_t,
    sys_destroy_activation
);

/// cudarc's `result` has no destroy for activation descriptors.
unsafe fn sys_destroy_activation(
    d: sys::cudnnActivationDescriptor_t,
) -> std::result::Result<(), CudnnError> {
    // SAFETY: forwarded to the caller (a descriptor created by cuDNN, destroyed once).
    unsafe { sys::cudnnDestroyActivationDescriptor(d) }.result()
}

fn to_i32(v: usize) -> i32 {
    // `Conv2dShape::check` keeps every size and length below 2^31.
    v as i32
}

/// How cuDNN sees a shape's tensors: as the crate stores them (NHWC activations, KRSC
/// filters), or as the channel-major path's copies of them (NCHW activations, KCRS filters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Nhwc,
    Nchw,
}

impl Format {
    fn tensor_format(self) -> sys::cudnnTensorFormat_t {
        match self {
            Format::Nhwc => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
            Format::Nchw => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
        }
    }
}

impl TensorDesc {
    /// A packed tensor of `[n, c, h, w]` (cuDNN's dimension order) elements of `dtype`.
    fn new(
        format: Format,
        dtype: cudnnDataType_t,
        [n, c, h, w]: [usize; 4],
    ) -> std::result::Result<Self, CudnnError> {
        let d = TensorDesc(dnn::create_tensor_descriptor()?);
        // SAFETY: a freshly created descriptor.
        unsafe {
            dnn::set_tensor4d_descriptor(
                d.0,
                format.tensor_format(),
                dtype,
                [n, c, h, w].map(to_i32),
            )
        }?;
        Ok(d)
    }
}

/// One shape's descriptors in one [`Format`].
struct Descriptors {
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    /// `[1, out, 1, 1]`.
    bias: TensorDesc,
    conv: ConvDesc,
}

impl Descriptors {
    fn new(
        s: &Conv2dShape,
        precision: Precision,
        format: Format,
    ) -> std::result::Result<Self, CudnnError> {
        let dtype = storage(precision);
        let [oh, ow] = s.out_size();
        let tensor = |dims| TensorDesc::new(format, dtype, dims);
        let x = tensor([s.batch, s.in_channels, s.height, s.width])?;
        let y = tensor([s.batch, s.out_channels, oh, ow])?;
        let bias = tensor([1, s.out_channels, 1, 1])?;
        let w = FilterDesc(dnn::create_filter_descriptor()?);
        let conv = ConvDesc(dnn::create_convolution_descriptor()?);
        // SAFETY: freshly created descriptors.
        unsafe {
            dnn::set_filter4d_descriptor(
                w.0,
                dtype,
                format.tensor_format(),
                [
                    s.out_channels,
                    s.group_in_channels(),
                    s.kernel_h,
                    s.kernel_w,
                ]
                .map(to_i32),
            )?;
            dnn::set_convolution2d_descriptor(
                conv.0,
                to_i32(s.pad),
                to_i32(s.pad),
                to_i32(s.stride),
                to_i32(s.stride),
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                // f32 accumulation in every precision (pseudo-bf16 for bf16 tensors).
                cudnnDataType_t::CUDNN_DATA_FLOAT,
            )?;
            dnn::set_convolution_math_type(conv.0, math(precision))?;
            dnn::set_convolution_group_count(conv.0, to_i32(s.groups))?;
        }
        Ok(Descriptors {
            x,
            w,
            y,
            bias,
            conv,
        })
    }
}

/// Bytes of one stored element of `precision`'s tensors.
fn element_bytes(precision: Precision) -> usize {
    if storage(precision) == cudnnDataType_t::CUDNN_DATA_BFLOAT16 {
        2
    } else {
        4
    }
}

/// The tensors' element type in `precision`.
fn storage(precision: Precision) -> cudnnDataType_t {
    match precision {
        Precision::F32 | Precision::Tf32 => cudnnDataType_t::CUDNN_DATA_FLOAT,
        Precision::Bf16 => cudnnDataType_t::CUDNN_DATA_BFLOAT16,
    }
}

/// The math cuDNN may use in `precision` (see the module docs).
fn math(precision: Precision) -> Math {
    match precision {
        Precision::F32 => Math::CUDNN_FMA_MATH,
        Precision::Tf32 | Precision::Bf16 => Math::CUDNN_TENSOR_OP_MATH,
    }
}

/// Whether an algorithm reporting `m` computes as `precision` asks.
fn math_allowed(precision: Precision, m: Math) -> bool {
    match m {
        Math::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION => false,
        Math::CUDNN_TENSOR_OP_MATH => precision != Precision::F32,
        Math::CUDNN_DEFAULT_MATH | Math::CUDNN_FMA_MATH => true,
    }
}

/// cuDNN's transform-domain algorithms (FFT, FFT_TILING, WINOGRAD, WINOGRAD_NONFUSED), by
/// [`algo_name`].
fn transform_algo(name: &str) -> bool {
    name.starts_with("FFT") || name.starts_with("WINOGRAD")
}

/// The fields of cuDNN's three algorithm-performance structs.
trait Perf: Copy {
    type Algo: Copy + std::fmt::Debug;
    fn algo(&self) -> Self::Algo;
    fn status(&self) -> Status;
    fn time(&self) -> f32;
    fn memory(&self) -> usize;
    fn deterministic(&self) -> bool;
    fn math(&self) -> Math;
}

macro_rules! perf {
    ($perf:ty, $algo:ty) => {
        impl Perf for $perf {
            type Algo = $algo;
            fn algo(&self) -> $algo {
                self.algo
            }
            fn status(&self) -> Status {
                self.status
            }
            fn time(&self) -> f32 {
                self.time
            }
            fn memory(&self) -> usize {
                self.memory
            }
            fn deterministic(&self) -> bool {
                self.determinism == cudnnDeterminism_t::CUDNN_DETERMINISTIC
            }
            fn math(&self) -> Math {
                self.mathType
            }
        }
    };
}

perf!(sys::cudnnConvolutionFwdAlgoPerf_t, FwdAlgo);
perf!(sys::cudnnConvolutionBwdDataAlgoPerf_t, DataAlgo);
perf!(sys::cudnnConvolutionBwdFilterAlgoPerf_t, FilterAlgo);

/// An algorithm chosen for one pass of one shape.
#[derive(Clone, Copy, Debug)]
struct Choice<A> {
    algo: A,
    workspace: usize,
    /// cuDNN's own timing of it when it was chosen.
    ms: f32,
    math: Math,
}

/// `CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM` -> `IMPLICIT_GEMM`.
/// cuDNN's name for an algorithm without its enum's prefix; the backward passes' numbered
/// ones (`..._ALGO_0`) keep `ALGO_`, so that a line never reads "cuDNN's 1 1.174".
fn algo_name(algo: impl std::fmt::Debug) -> String {
    let name = format!("{algo:?}");
    for prefix in [
        "CUDNN_CONVOLUTION_FWD_ALGO_",
        "CUDNN_CONVOLUTION_BWD_DATA_ALGO_",
        "CUDNN_CONVOLUTION_BWD_FILTER_ALGO_",
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return match rest.parse::<u32>() {
                Ok(_) => format!("ALGO_{rest}"),
                Err(_) => rest.to_string(),
            };
        }
    }
    name
}

fn math_name(m: Math) -> &'static str {
    match m {
        Math::CUDNN_DEFAULT_MATH => "default",
        Math::CUDNN_TENSOR_OP_MATH => "tensor-op",
        Math::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION => "tensor-op-conversion",
        Math::CUDNN_FMA_MATH => "fma",
    }
}

impl<A: std::fmt::Debug> std::fmt::Display for Choice<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {:.3} ms, {} KiB)",
            algo_name(&self.algo),
            math_name(self.math),
            self.ms,
            self.workspace.div_ceil(1024)
        )
    }
}

/// The acceptable algorithms of one pass of one shape, fastest first; the first is the one
/// that runs. cuDNN's benchmark may accept an algorithm that the same call then refuses when
/// run on the caller's buffers (seen for bf16 on an H100: `CUDNN_STATUS_BAD_PARAM` for some
/// shapes, depending on which algorithm the timing picked); such a refusal comes from the
/// call's parameter checks, before anything runs, so the pass moves on to the next one.
#[derive(Clone, Debug)]
struct Candidates<A> {
    /// Never empty.
    list: Vec<Choice<A>>,
    /// Why each algorithm passed over was: by the benchmark, or when run.
    refused: Vec<String>,
}

impl<A: Copy + std::fmt::Debug> Candidates<A> {
    fn current(&self) -> Choice<A> {
        self.list[0]
    }

    /// Passes over the current algorithm, refused at run time with `e`; false when it was
    /// the last (it stays, and the pass fails).
    fn refuse(&mut self, e: CudnnError) -> bool {
        self.refused.push(format!(
            "{}: {:?} when run",
            algo_name(self.list[0].algo),
            e.0
        ));
        if self.list.len() == 1 {
            return false;
        }
        self.list.remove(0);
        true
    }
}

/// More than any pass has algorithms (8 forward, 6 backward data, 7 backward filter).
const MAX_ALGOS: usize = 8;

/// What an algorithm must meet, besides fitting [`WORKSPACE_LIMIT`], to be chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rules {
    precision: Precision,
    /// Only deterministic algorithms ([`Conv2dKernels::set_deterministic`]).
    deterministic: bool,
    /// f32 may use FFT and Winograd ([`Conv2dKernels::set_transforms`]); tf32 and bf16
    /// always may (their operands' rounding dwarfs the transforms').
    transforms: bool,
}

/// Runs one of cuDNN's `cudnnFind*Algorithm` benchmarks (`call(count, &mut returned,
/// results)`) and [`pick`]s from its results.
fn find<P: Perf>(
    what: &str,
    rules: Rules,
    call: impl FnOnce(i32, &mut i32, *mut P) -> Status,
) -> Result<Candidates<P::Algo>> {
    let mut results = [zeroed::<P>(); MAX_ALGOS];
    let mut n = 0;
    call(MAX_ALGOS as i32, &mut n, results.as_mut_ptr())
        .result()
        .map_err(cudnn_error(|| what.to_string()))?;
    let n = (n.max(0) as usize).min(MAX_ALGOS);
    pick(&results[..n], rules, what)
}

/// The acceptable results of a `cudnnFind...` call, fastest first (cuDNN sorts them by
/// time), or an error listing what was refused and why.
fn pick<P: Perf>(results: &[P], rules: Rules, what: &str) -> Result<Candidates<P::Algo>> {
    let precision = rules.precision;
    let mut list = Vec::new();
    let mut refused = Vec::new();
    for p in results {
        let why = if p.status() != Status::CUDNN_STATUS_SUCCESS {
            format!("{:?}", p.status())
        } else if p.memory() > WORKSPACE_LIMIT {
            format!("needs {} MiB of workspace", p.memory() >> 20)
        } else if rules.deterministic && !p.deterministic() {
            "not deterministic".into()
        } else if !math_allowed(precision, p.math()) {
            format!("{} math", math_name(p.math()))
        } else if precision == Precision::F32
            && !rules.transforms
            && transform_algo(&algo_name(p.algo()))
        {
            // FFT and Winograd lose about 1e-5 to 1e-3 a call in f32, where a direct or
            // implicit-GEMM sum loses about 1e-7: f32 promises the latter unless told
            // otherwise. Batch norm's zero-sum input gradients amplify the difference in the
            // filter gradient before it.
            "FFT/Winograd transform (f32 asks for direct sums)".into()
        } else {
            list.push(Choice {
                algo: p.algo(),
                workspace: p.memory(),
                ms: p.time(),
                math: p.math(),
            });
            continue;
        };
        refused.push(format!("{}: {why}", algo_name(p.algo())));
    }
    if !list.is_empty() {
        return Ok(Candidates { list, refused });
    }
    Err(Error::invalid(
        what,
        format!(
            "cuDNN offers no usable {precision} algorithm (tried: {})",
            if refused.is_empty() {
                "none".into()
            } else {
                refused.join(", ")
            }
        ),
    ))
}

/// What the fused convolution + bias + activation does for one shape and activation.
#[derive(Clone, Debug)]
enum Fused {
    /// Not called yet.
    Untried,
    /// Runs with this algorithm.
    Works(FwdAlgo),
    /// cuDNN refused every algorithm tried, with these statuses: the shape runs the plain
    /// convolution and our epilogue kernel.
    Unsupported(String),
}

/// cuDNN's side of one shape in one [`Format`]: the descriptors, and each pass's algorithms
/// once chosen.
struct Cudnn {
    d: Descriptors,
    forward: Option<Candidates<FwdAlgo>>,
    backward_data: Option<Candidates<DataAlgo>>,
    backward_filter: Option<Candidates<FilterAlgo>>,
}

impl Cudnn {
    fn new(d: Descriptors) -> Self {
        Cudnn {
            d,
            forward: None,
            backward_data: None,
            backward_filter: None,
        }
    }
}

/// The cached plan of one shape: cuDNN's descriptors and algorithms, and how each pass runs.
struct Plan {
    /// On the crate's NHWC tensors; the forward algorithm is chosen when the plan is made.
    nhwc: Cudnn,
    /// On the channel-major path's NCHW copies (f32), made when that path is first timed or
    /// forced.
    nchw: Option<Cudnn>,
    /// The workspace of the implicit-precomputed-GEMM algorithm, the only one cuDNN's fused
    /// call takes with the identity activation; `None` when cuDNN does not offer it here.
    precomputed_workspace: Option<usize>,
    /// The fused call's state per epilogue, indexed by [`fused_index`].
    fused: [Fused; 4],
    /// How the forward pass runs, decided when the plan is made.
    forward_route: Route,
    /// How the backward passes (data, filter) run, decided on first use.
    backward_route: [Option<Route>; 2],
}

impl Plan {
    /// The NHWC forward pass's algorithms.
    fn forward(&self) -> &Candidates<FwdAlgo> {
        self.nhwc.forward.as_ref().expect("chosen when planned")
    }

    fn cudnn(&self, format: Format) -> &Cudnn {
        match format {
            Format::Nhwc => &self.nhwc,
            Format::Nchw => self.nchw.as_ref().expect("made by Conv2dKernels::cudnn"),
        }
    }

    fn cudnn_mut(&mut self, format: Format) -> &mut Cudnn {
        match format {
            Format::Nhwc => &mut self.nhwc,
            Format::Nchw => self.nchw.as_mut().expect("made by Conv2dKernels::cudnn"),
        }
    }
}

/// A way to run a pass other than cuDNN on the NHWC tensors (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// A cuBLASLt GEMM, for the shapes that are GEMMs ([`is_gemm`]).
    Gemm,
    /// cuDNN on NCHW/KCRS copies of the operands, the result copied back (f32).
    ChannelMajor,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Gemm => "cuBLASLt GEMM",
            Path::ChannelMajor => "channel-major (NCHW)",
        }
    }
}

/// How one pass of one shape runs, and why.
#[derive(Clone, Debug, PartialEq)]
enum Route {
    /// cuDNN on the NHWC tensors: no other path applies, or each is off
    /// ([`Conv2dKernels::set_gemm`], [`Conv2dKernels::set_channel_major`]).
    Cudnn,
    /// Forced on.
    Forced(Path),
    /// Timed here: cuDNN's milliseconds a call on the NHWC tensors, and each other path's, or
    /// why it was refused (cuBLASLt or cuDNN offering nothing usable): the fastest runs.
    Measured {
        cudnn_ms: f64,
        others: Vec<(Path, std::result::Result<f64, String>)>,
    },
}

impl Route {
    /// The path that runs; `None`: cuDNN on the NHWC tensors.
    fn runs(&self) -> Option<Path> {
        match self {
            Route::Cudnn => None,
            Route::Forced(path) => Some(*path),
            Route::Measured { cudnn_ms, others } => others
                .iter()
                .filter_map(|(path, ms)| Some((*path, *ms.as_ref().ok()?)))
                .filter(|&(_, ms)| ms < *cudnn_ms)
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(path, _)| path),
        }
    }

    /// The pass as it runs, `nhwc` and `nchw` being cuDNN's choices for it in either format
    /// (`None` where cuDNN was never asked), with the timings that chose it.
    fn describe<A: std::fmt::Debug>(
        &self,
        nhwc: Option<Choice<A>>,
        nchw: Option<Choice<A>>,
    ) -> String {
        let choice = |c: &Option<Choice<A>>| {
            c.as_ref()
                .map_or("cuDNN (not chosen)".to_string(), Choice::to_string)
        };
        let path = |p: Option<Path>| match p {
            None => choice(&nhwc),
            Some(Path::Gemm) => Path::Gemm.name().to_string(),
            Some(Path::ChannelMajor) => format!("{} {}", Path::ChannelMajor.name(), choice(&nchw)),
        };
        let (cudnn_ms, others) = match self {
            Route::Cudnn => return path(None),
            Route::Forced(p) => return format!("{} (forced)", path(Some(*p))),
            Route::Measured { cudnn_ms, others } => (cudnn_ms, others),
        };
        let runs = self.runs();
        let mut times = vec![(None, Ok(*cudnn_ms))];
        times.extend(others.iter().map(|(p, ms)| (Some(*p), ms.clone())));
        let (mut won, mut lost) = (String::new(), Vec::new());
        for (p, ms) in times {
            let name = match p {
                None => format!(
                    "cuDNN's {}",
                    nhwc.as_ref()
                        .map_or("?".to_string(), |c| algo_name(&c.algo))
                ),
                Some(p) => p.name().to_string(),
            };
            match ms {
                Ok(ms) if p == runs => won = format!("{ms:.3} ms"),
                Ok(ms) => lost.push(format!("{name} {ms:.3}")),
                Err(why) => lost.push(format!("{name} refused: {why}")),
            }
        }
        format!(
            "{}, chosen when timed here ({won} against {})",
            path(runs),
            lost.join(", ")
        )
    }
}

/// Calls of each path timed when choosing a pass's route (after one untimed call each).
const TIMED_CALLS: usize = 5;

/// Where a plan keeps the fused call's state for an epilogue: each of the four is tried on
/// its own, since cuDNN may take one and refuse another.
fn fused_index(relu: bool, residual: bool) -> usize {
    usize::from(relu) * 2 + usize::from(residual)
}

/// The epilogues in [`fused_index`] order, for [`Conv2dKernels::describe`].
const FUSED_NAMES: [&str; 4] = ["bias", "bias+residual", "bias+relu", "bias+residual+relu"];

/// The two backward passes that run a convolution.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backward {
    Data,
    Filter,
}

impl Backward {
    /// The pass's slot in [`Plan::backward_gemm`].
    fn index(self) -> usize {
        match self {
            Backward::Data => 0,
            Backward::Filter => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backward::Data => "backward data",
            Backward::Filter => "backward filter",
        }
    }
}

/// What the two backward passes differ in: the name, the plan's slot, the operand's and the
/// gradient's descriptors (`(w, dx)` for data, `(x, dw)` for filter), and cuDNN's benchmark
/// and call, which both take those two around dy's and the convolution's.
struct BackwardFns<P: Perf, A, G> {
    name: &'static str,
    slot: fn(&mut Cudnn) -> &mut Option<Candidates<P::Algo>>,
    descriptors: fn(&Descriptors) -> (A, G),
    find: unsafe fn(
        sys::cudnnHandle_t,
        A,
        sys::cudnnTensorDescriptor_t,
        sys::cudnnConvolutionDescriptor_t,
        G,
        i32,
        *mut i32,
        *mut P,
    ) -> Status,
    /// cuDNN's signature, as cudarc wraps it.
    #[allow(clippy::type_complexity)]
    run: unsafe fn(
        sys::cudnnHandle_t,
        *const c_void,
        A,
        *const c_void,
        sys::cudnnTensorDescriptor_t,
        *const c_void,
        sys::cudnnConvolutionDescriptor_t,
        P::Algo,
        *mut c_void,
        usize,
        *const c_void,
        G,
        *mut c_void,
    ) -> std::result::Result<(), CudnnError>,
}

const DATA: BackwardFns<
    sys::cudnnConvolutionBwdDataAlgoPerf_t,
    sys::cudnnFilterDescriptor_t,
    sys::cudnnTensorDescriptor_t,
> = BackwardFns {
    name: "backward data",
    slot: |p| &mut p.backward_data,
    descriptors: |d| (d.w.0, d.x.0),
    find: sys::cudnnFindConvolutionBackwardDataAlgorithm,
    run: dnn::convolution_backward_data,
};

const FILTER: BackwardFns<
    sys::cudnnConvolutionBwdFilterAlgoPerf_t,
    sys::cudnnTensorDescriptor_t,
    sys::cudnnFilterDescriptor_t,
> = BackwardFns {
    name: "backward filter",
    slot: |p| &mut p.backward_filter,
    descriptors: |d| (d.x.0, d.w.0),
    find: sys::cudnnFindConvolutionBackwardFilterAlgorithm,
    run: dnn::convolution_backward_filter,
};

/// The passes [`Conv2dKernels::prepare`] plans for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passes {
    /// The forward pass, with any epilogue.
    Forward,
    /// The forward pass and the filter's gradient: a network's first layer, whose input (the
    /// images) takes no gradient.
    ForwardAndFilter,
    /// The forward pass and both backward passes.
    Training,
}

impl Passes {
    fn backward(self) -> &'static [Backward] {
        match self {
            Passes::Forward => &[],
            Passes::ForwardAndFilter => &[Backward::Filter],
            Passes::Training => &[Backward::Data, Backward::Filter],
        }
    }
}

/// 2-D convolutions of one precision on one GPU stream: a cuDNN handle, the plans of every
/// shape seen, and the workspace they share. One per stream and thread; every layer of a
/// network runs through the same one.
pub struct Conv2dKernels {
    handle: CudnnHandle,
    precision: Precision,
    deterministic: bool,
    /// f32 may use FFT and Winograd ([`Self::set_transforms`]).
    transforms: bool,
    fuse: bool,
    plans: HashMap<Conv2dShape, Plan>,
    workspace: CudaSlice<u8>,
    /// Zeros standing in for the bias of a fused call that has none (`[max out]` values).
    zero_bias: CudaSlice<u8>,
    relu: ActivationDesc,
    identity: ActivationDesc,
    /// `conv2d_epilogue_<dtype>`, loaded the first time a shape needs it.
    epilogue: Option<Kernel>,
    /// `conv2d_bias_grad_{partial,finish}_<dtype>` of the precision's storage type (see
    /// [`Self::backward_bias`]).
    bias_grad: [Kernel; 2],
    /// `Some(forced)` or `None` (measure); see [`Self::set_gemm`].
    gemm: Option<bool>,
    /// cuBLASLt, made when the first GEMM shape is planned.
    lt: Option<LtGemm>,
    /// `Some(forced)` or `None` (measure); see [`Self::set_channel_major`].
    channel_major: Option<bool>,
    /// The channel-major path's transposes, loaded when a shape first takes it.
    copy: Option<ChannelCopyKernels>,
    /// The channel-major path's copies of a pass's three tensors, by [`roles`], shared by
    /// every shape like the workspace: as large as the largest of the passes that run
    /// channel-major need ([`Self::fit_scratch`]).
    scratch: [CudaSlice<u8>; 3],
}

// SAFETY: the cuDNN descriptors are host objects that any thread may use, one at a time;
// `Conv2dKernels` uses them through `&mut self` only, from the thread that owns it (the
// handle is `Send` on the same grounds).
unsafe impl Send for Conv2dKernels {}

impl Conv2dKernels {
    /// Convolutions in `precision` on `gpu`'s main stream; loads cuDNN first (an
    /// [`Error::MissingLibrary`] says how to get it).
    pub fn load(gpu: &Arc<Gpu>, precision: Precision) -> Result<Conv2dKernels> {
        let handle = CudnnHandle::new(gpu, gpu.stream())?;
        let activation = |mode: Act| -> Result<ActivationDesc> {
            let what = || format!("creating a {mode:?} descriptor");
            let d = ActivationDesc(dnn::create_activation_descriptor().map_err(cudnn_error(what))?);
            // SAFETY: a freshly created descriptor. NaN propagates, so a NaN from a bug
            // upstream is not hidden by the ReLU.
            unsafe {
                dnn::set_activation_descriptor(
                    d.0,
                    mode,
                    sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                    0.0,
                )
            }
            .map_err(cudnn_error(what))?;
            Ok(d)
        };
        let alloc = |what: &'static str| {
            handle
                .stream()
                .alloc_zeros::<u8>(1)
                .cuda(|| format!("allocating the conv2d {what}"))
        };
        Ok(Conv2dKernels {
            relu: activation(Act::CUDNN_ACTIVATION_RELU)?,
            identity: activation(Act::CUDNN_ACTIVATION_IDENTITY)?,
            workspace: alloc("workspace")?,
            zero_bias: alloc("zero bias")?,
            precision,
            deterministic: false,
            transforms: false,
            fuse: true,
            gemm: None,
            lt: None,
            channel_major: None,
            copy: None,
            scratch: [alloc("scratch")?, alloc("scratch")?, alloc("scratch")?],
            plans: HashMap::new(),
            epilogue: None,
            bias_grad: match precision {
                Precision::Bf16 => [
                    gpu.kernel(KernelModule::Conv2d, "conv2d_bias_grad_partial_bf16")?,
                    gpu.kernel(KernelModule::Conv2d, "conv2d_bias_grad_finish_bf16")?,
                ],
                Precision::F32 | Precision::Tf32 => [
                    gpu.kernel(KernelModule::Conv2d, "conv2d_bias_grad_partial_f32")?,
                    gpu.kernel(KernelModule::Conv2d, "conv2d_bias_grad_finish_f32")?,
                ],
            },
            handle,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Chooses only deterministic algorithms from now on (bit-identical results run to run;
    /// backward passes may be slower). Forgets the plans made so far.
    pub fn set_deterministic(&mut self, deterministic: bool) {
        if deterministic != self.deterministic {
            self.deterministic = deterministic;
            self.plans.clear();
        }
    }

    /// Whether f32 convolutions may use cuDNN's FFT and Winograd algorithms (as PyTorch's f32
    /// does; see the module docs for what they cost in exactness). Off by default; tf32 and
    /// bf16 always may. Forgets the plans made so far.
    pub fn set_transforms(&mut self, transforms: bool) {
        if transforms != self.transforms {
            self.transforms = transforms;
            self.plans.clear();
        }
    }

    /// The rules every algorithm chosen from now on must meet.
    fn rules(&self) -> Rules {
        Rules {
            precision: self.precision,
            deterministic: self.deterministic,
            transforms: self.transforms,
        }
    }

    /// Whether forward epilogues may use cuDNN's fused call (the default) or always run the
    /// plain convolution and our epilogue kernel: for comparing the two.
    pub fn set_fused(&mut self, fuse: bool) {
        self.fuse = fuse;
    }

    /// How the passes that are GEMMs (1x1, unpadded, ungrouped: see the module docs) run:
    /// `Some(true)` always as a cuBLASLt GEMM, `Some(false)` always on cuDNN (in f32 on the
    /// NHWC tensors or channel-major, as [`Self::set_channel_major`] says), `None` (the
    /// default) by whichever measures faster. Forgets the plans made so far.
    pub fn set_gemm(&mut self, gemm: Option<bool>) {
        if gemm != self.gemm {
            self.gemm = gemm;
            self.plans.clear();
        }
    }

    /// Whether f32 passes may run channel-major, on NCHW copies of their operands (see the
    /// module docs): `Some(true)` always (over the GEMM path too, where both are forced),
    /// `Some(false)` never, `None` (the default) where that measures faster. Only f32 has the
    /// path: forcing it in another precision is an error, and the other settings change
    /// nothing there. Forgets the plans made so far.
    pub fn set_channel_major(&mut self, channel_major: Option<bool>) -> Result<()> {
        if channel_major == Some(true) && self.precision != Precision::F32 {
            return Err(Error::invalid(
                format!("conv2d ({})", self.precision),
                "the channel-major path is f32's only (tf32 and bf16 cuDNN kernels are fast \
                 on NHWC tensors)",
            ));
        }
        if channel_major != self.channel_major {
            self.channel_major = channel_major;
            self.plans.clear();
        }
        Ok(())
    }

    /// The bytes of device memory the plans made so far share: cuDNN's workspace and the
    /// channel-major path's copies of the operands.
    pub fn workspace_bytes(&self) -> usize {
        self.workspace.len() + self.channel_major_bytes()
    }

    /// The bytes of the channel-major path's copies of the operands ([`Self::fit_scratch`]).
    pub fn channel_major_bytes(&self) -> usize {
        self.scratch.iter().map(CudaSlice::len).sum()
    }

    /// Plans `shape` for `passes` now (cuDNN's benchmark, the timing of the other paths, the
    /// workspace), so that later calls only launch: needed before capturing them in a CUDA
    /// graph.
    pub fn prepare(&mut self, shape: &Conv2dShape, passes: Passes) -> Result<()> {
        self.plan(shape)?;
        for &pass in passes.backward() {
            self.ready_choice(shape, Format::Nhwc, Some(pass))?;
        }
        for &pass in passes.backward() {
            let what = pass_label(pass.name(), shape, self.precision);
            self.backward_path(shape, pass, &what)?;
        }
        Ok(())
    }

    /// One line per planned pass of `shape`: the algorithm, its math, cuDNN's time and the
    /// workspace, and whether the fused epilogue runs; `None` before `shape` was planned. A
    /// pass that another path may take (a GEMM shape's cuBLASLt GEMM, f32's channel-major
    /// path) also says which won our own timing of each ("when timed here"), whose times
    /// differ from cuDNN's benchmark in the brackets.
    pub fn describe(&self, shape: &Conv2dShape) -> Option<String> {
        let plan = self.plans.get(shape)?;
        fn current<A: Copy + std::fmt::Debug>(c: &Option<Candidates<A>>) -> Option<Choice<A>> {
            c.as_ref().map(Candidates::current)
        }
        let nchw = plan.nchw.as_ref();
        let forward = plan.forward_route.describe(
            Some(plan.forward().current()),
            nchw.and_then(|c| current(&c.forward)),
        );
        let mut s = format!("conv2d {shape} {}: forward {forward}", self.precision);
        for (name, fused) in FUSED_NAMES.iter().zip(&plan.fused) {
            match fused {
                Fused::Untried => {}
                Fused::Works(algo) => write!(s, "; {name} fused ({})", algo_name(algo)).unwrap(),
                Fused::Unsupported(why) => {
                    write!(s, "; {name} by our epilogue kernel ({why})").unwrap()
                }
            }
        }
        // A backward pass is described once its route is decided, or it ran on cuDNN.
        fn backward<A: Copy + std::fmt::Debug>(
            s: &mut String,
            pass: Backward,
            route: &Option<Route>,
            [nhwc, nchw]: [Option<Choice<A>>; 2],
        ) {
            if route.is_some() || nhwc.is_some() {
                let route = route.as_ref().unwrap_or(&Route::Cudnn);
                write!(s, "; {} {}", pass.name(), route.describe(nhwc, nchw)).unwrap();
            }
        }
        let [data, filter] = &plan.backward_route;
        let formats = [Some(&plan.nhwc), nchw];
        let choices = formats.map(|c| c.and_then(|c| current(&c.backward_data)));
        backward(&mut s, Backward::Data, data, choices);
        let choices = formats.map(|c| c.and_then(|c| current(&c.backward_filter)));
        backward(&mut s, Backward::Filter, filter, choices);
        Some(s)
    }

    /// cuDNN's benchmark of `shape`'s forward pass as planned: every acceptable algorithm,
    /// fastest first (the first runs), with its math, cuDNN's time and workspace, then those
    /// passed over and why; then the same for the channel-major path's NCHW tensors where it
    /// was benchmarked; `None` before `shape` was planned.
    pub fn forward_candidates(&self, shape: &Conv2dShape) -> Option<String> {
        let plan = self.plans.get(shape)?;
        let line = |c: &Candidates<FwdAlgo>| {
            let list: Vec<String> = c.list.iter().map(|c| c.to_string()).collect();
            let mut s = list.join(", ");
            if !c.refused.is_empty() {
                write!(s, "; passed over: {}", c.refused.join(", ")).unwrap();
            }
            s
        };
        let mut s = line(plan.forward());
        if let Some(nchw) = plan.nchw.as_ref().and_then(|c| c.forward.as_ref()) {
            write!(s, "; {}: {}", Path::ChannelMajor.name(), line(nchw)).unwrap();
        }
        Some(s)
    }

    /// `y = epilogue(conv(x, w))`: `x` `[batch][h][w][in]`, `w` `[out][kh][kw][in / groups]`,
    /// `y` `[batch][out_h][out_w][out]` (see [`Epilogue`]).
    pub fn forward<T: Element>(
        &mut self,
        shape: &Conv2dShape,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        epilogue: Epilogue<'_, T>,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        let what = self.what::<T>("forward", shape)?;
        let stream = self.handle.stream().clone();
        let (xp, wp, yp) = (ptr(x, &stream), ptr(w, &stream), ptr_mut(y, &stream));
        let bias = epilogue.bias.as_ref().map(|b| ptr(b, &stream));
        let residual = epilogue.residual.as_ref().map(|z| ptr(z, &stream));
        let mut operands = vec![
            ("x", x.len(), shape.input_len(), xp),
            ("w", w.len(), shape.weight_len(), wp),
            ("y", y.len(), shape.output_len(), yp),
        ];
        if let (Some(b), Some(bp)) = (&epilogue.bias, bias) {
            operands.push(("bias", b.len(), shape.out_channels, bp));
        }
        if let (Some(z), Some(zp)) = (&epilogue.residual, residual) {
            operands.push(("residual", z.len(), shape.output_len(), zp));
        }
        check_operands(&what, &operands)?;
        match self.plan(shape)?.forward_route.runs() {
            Some(Path::Gemm) => {
                let ops = [xp, wp, yp];
                return self.gemm_forward(shape, &what, ops, bias, residual, epilogue.relu);
            }
            Some(Path::ChannelMajor) => {
                // The epilogue follows the copy back to NHWC, as on cuDNN's unfused path.
                self.channel_major(shape, &what, None, [xp, wp, yp], false)?;
                if epilogue.is_none() {
                    return Ok(());
                }
                return self.run_epilogue(shape, y, &epilogue);
            }
            None => {}
        }
        let h = self.handle.bind()?;
        if epilogue.is_none() {
            return self.convolve(h, shape, Format::Nhwc, [xp, wp, yp], &what);
        }
        if self.fuse
            && self
                .fused(h, shape, epilogue.relu, [xp, wp, yp], bias, residual)
                .map_err(cudnn_error(|| what.clone()))?
        {
            return Ok(());
        }
        self.convolve(h, shape, Format::Nhwc, [xp, wp, yp], &what)?;
        self.run_epilogue(shape, y, &epilogue)
    }

    /// `dx (+)= conv_backward_data(dy, w)`, the gradient of the forward pass's input:
    /// `dy` shaped like its output, `dx` like its input; `accumulate` adds to `dx`.
    pub fn backward_data<T: Element>(
        &mut self,
        shape: &Conv2dShape,
        w: &impl DevicePtr<T>,
        dy: &impl DevicePtr<T>,
        dx: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<()> {
        self.backward(Backward::Data, shape, w, dy, dx, accumulate)
    }

    /// `dw (+)= conv_backward_filter(x, dy)`, the gradient of the filters; `accumulate` adds
    /// to `dw`.
    pub fn backward_filter<T: Element>(
        &mut self,
        shape: &Conv2dShape,
        x: &impl DevicePtr<T>,
        dy: &impl DevicePtr<T>,
        dw: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<()> {
        self.backward(Backward::Filter, shape, x, dy, dw, accumulate)
    }

    /// One backward pass: `operand` is the weight (data) or the input (filter), `grad` the
    /// gradient it writes.
    fn backward<T: Element>(
        &mut self,
        pass: Backward,
        shape: &Conv2dShape,
        operand: &impl DevicePtr<T>,
        dy: &impl DevicePtr<T>,
        grad: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<()> {
        let ([operand_name, grad_name], [operand_len, grad_len]) = match pass {
            Backward::Data => (["w", "dx"], [shape.weight_len(), shape.input_len()]),
            Backward::Filter => (["x", "dw"], [shape.input_len(), shape.weight_len()]),
        };
        let what = self.what::<T>(pass.name(), shape)?;
        let stream = self.handle.stream().clone();
        let (op, dyp, gp) = (
            ptr(operand, &stream),
            ptr(dy, &stream),
            ptr_mut(grad, &stream),
        );
        check_operands(
            &what,
            &[
                (operand_name, operand.len(), operand_len, op),
                ("dy", dy.len(), shape.output_len(), dyp),
                (grad_name, grad.len(), grad_len, gp),
            ],
        )?;
        let path = self.backward_path(shape, pass, &what)?;
        self.run_pass(path, shape, &what, Some(pass), [op, dyp, gp], accumulate)
    }

    /// One pass of `shape` by `path` (cuDNN on the NHWC tensors for `None`) on checked
    /// buffers: the forward without an epilogue (`pass` `None`: `[x, w, y]`, overwriting) or a
    /// backward pass (`[operand, dy, grad]`, the operand w or x; `accumulate` adds to grad).
    fn run_pass(
        &mut self,
        path: Option<Path>,
        shape: &Conv2dShape,
        what: &str,
        pass: Option<Backward>,
        ops: [u64; 3],
        accumulate: bool,
    ) -> Result<()> {
        debug_assert!(pass.is_some() || !accumulate, "the forward pass overwrites");
        match (path, pass) {
            (Some(Path::Gemm), None) => self.gemm_forward(shape, what, ops, None, None, false),
            (Some(Path::Gemm), Some(b)) => self.gemm_backward(shape, what, b, ops, accumulate),
            (Some(Path::ChannelMajor), _) => self.channel_major(shape, what, pass, ops, accumulate),
            (None, None) => {
                let h = self.handle.bind()?;
                self.convolve(h, shape, Format::Nhwc, ops, what)
            }
            (None, Some(b)) => self.cudnn_backward(shape, what, Format::Nhwc, b, ops, accumulate),
        }
    }

    /// The backward pass `pass` by cuDNN on checked buffers `[operand, dy, grad]` in `format`.
    fn cudnn_backward(
        &mut self,
        shape: &Conv2dShape,
        what: &str,
        format: Format,
        pass: Backward,
        [op, dyp, gp]: [u64; 3],
        accumulate: bool,
    ) -> Result<()> {
        let (one, beta) = scales(accumulate);
        let (op, dyp, gp) = (op as *const c_void, dyp as *const c_void, gp as *mut c_void);
        let h = self.handle.bind()?;
        let call = (h, [op, dyp], gp);
        match pass {
            Backward::Data => self.backward_pass(shape, what, format, &DATA, call, [one, beta]),
            Backward::Filter => self.backward_pass(shape, what, format, &FILTER, call, [one, beta]),
        }
    }

    /// The path the backward pass `pass` of `shape` runs by (`None`: cuDNN on the NHWC
    /// tensors): decided on its first call ([`Self::route`]) and kept in the plan.
    fn backward_path(
        &mut self,
        shape: &Conv2dShape,
        pass: Backward,
        what: &str,
    ) -> Result<Option<Path>> {
        if let Some(route) = &self.plan(shape)?.backward_route[pass.index()] {
            return Ok(route.runs());
        }
        let route = self.route(shape, what, Some(pass))?;
        let path = route.runs();
        self.plan(shape)?.backward_route[pass.index()] = Some(route);
        Ok(path)
    }

    /// How a pass of `shape` (the forward for `None`) runs: a path forced on
    /// ([`Self::set_channel_major`] before [`Self::set_gemm`]), else, where another path
    /// applies and is not off, the fastest of it and cuDNN on the NHWC tensors
    /// ([`Self::measure`]), else the latter. A channel-major route is readied here
    /// (algorithm, scratch, kernels), so that its calls only launch.
    fn route(&mut self, shape: &Conv2dShape, what: &str, pass: Option<Backward>) -> Result<Route> {
        let setting = |set: Option<bool>, applies: bool| if applies { set } else { Some(false) };
        let paths = [
            (
                Path::ChannelMajor,
                setting(self.channel_major, self.precision == Precision::F32),
            ),
            (Path::Gemm, setting(self.gemm, is_gemm(shape, pass))),
        ];
        let route = if let Some(&(path, _)) = paths.iter().find(|(_, set)| *set == Some(true)) {
            Route::Forced(path)
        } else {
            let timed: Vec<Path> = paths
                .iter()
                .filter(|(_, set)| set.is_none())
                .map(|&(path, _)| path)
                .collect();
            if timed.is_empty() {
                Route::Cudnn
            } else {
                self.measure(shape, what, pass, &timed)?
            }
        };
        if route.runs() == Some(Path::ChannelMajor) {
            self.ready_channel_major(shape, pass)?;
        } else if matches!(&route, Route::Measured { others, .. }
            if others.iter().any(|(p, _)| *p == Path::ChannelMajor))
        {
            self.fit_scratch()?;
        }
        Ok(route)
    }

    /// Shrinks the channel-major scratch copies to what the passes that run channel-major
    /// need. Timing the path for a pass grows them to that pass's tensors, and a pass the path
    /// loses would otherwise leave them at the largest such shape's size for the life of the
    /// kernels (DenseNet-121 in f32 at 224, batch 64: 394 MiB of a 9,517 MiB peak). The route
    /// being decided is not in the plans yet: it does not run channel-major.
    fn fit_scratch(&mut self) -> Result<()> {
        // One byte where no pass needs a copy, as when loaded.
        let mut need = [1; 3];
        for (shape, plan) in &self.plans {
            let mut routes =
                std::iter::once(&plan.forward_route).chain(plan.backward_route.iter().flatten());
            if routes.any(|r| r.runs() == Some(Path::ChannelMajor)) {
                for (n, bytes) in need.iter_mut().zip(scratch_bytes(shape)) {
                    *n = bytes.max(*n);
                }
            }
        }
        self.resize_scratch(need, |len, bytes| len > bytes)
    }

    /// Reallocates each channel-major scratch copy to its `bytes` where `resize(its length,
    /// bytes)` says so (grow: `len < bytes`; shrink: `len > bytes`).
    fn resize_scratch(
        &mut self,
        bytes: [usize; 3],
        resize: fn(usize, usize) -> bool,
    ) -> Result<()> {
        let stream = self.handle.stream().clone();
        for (scratch, bytes) in self.scratch.iter_mut().zip(bytes) {
            if resize(scratch.len(), bytes) {
                // The old copy is freed in stream order, after the work that used it.
                *scratch = stream
                    .alloc_zeros::<u8>(bytes)
                    .cuda(|| format!("allocating {bytes} bytes of conv2d channel-major scratch"))?;
            }
        }
        Ok(())
    }

    /// `dx (+)= dy W` (data) or `dW (+)= dy^T x` (filter) of a GEMM shape by cuBLASLt, on
    /// checked buffers `[operand, dy, grad]` (the operand W or x); accumulating is C = grad
    /// with beta = 1.
    fn gemm_backward(
        &mut self,
        shape: &Conv2dShape,
        what: &str,
        pass: Backward,
        [op, dy, grad]: [u64; 3],
        accumulate: bool,
    ) -> Result<()> {
        let product = gemm_product(shape, Some(pass));
        if pass == Backward::Data && shape.stride > 1 && !accumulate {
            // The product writes the pixels the forward read; the others' gradient is zero.
            let bytes = shape.input_len() * element_bytes(self.precision);
            let stream = self.handle.stream();
            // SAFETY: `grad` was checked to hold the input's length; the clear is ordered
            // before the product on the same stream.
            unsafe { cudarc::driver::result::memset_d8_async(grad, 0, bytes, stream.cu_stream()) }
                .cuda(|| format!("clearing dx for {what}"))?;
        }
        let ops = Operands {
            a: op,
            b: dy,
            c: grad,
            d: grad,
            bias: None,
            beta: if accumulate { 1.0 } else { 0.0 },
        };
        let epilogue = cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT;
        let types = gemm_types(self.precision);
        self.lt()?.matmul(what, product, types, epilogue, ops)
    }

    /// The cuBLASLt handle, made on first use.
    fn lt(&mut self) -> Result<&mut LtGemm> {
        if self.lt.is_none() {
            let gpu = self.handle.gpu().clone();
            self.lt = Some(LtGemm::new(gpu, self.handle.stream().clone())?);
        }
        Ok(self.lt.as_mut().expect("made above"))
    }

    /// `db (+)= sum of dy over batch, height and width`, the gradient of the bias `[out]`;
    /// `accumulate` adds to `db`. Ours in every precision (`conv2d_bias_grad_*`: f32 partial
    /// sums per chunk of rows and channel, then their sum in chunk order, rounded once):
    /// cuDNN's `cudnnConvolutionBackwardBias` does not take bf16 (`CUDNN_STATUS_NOT_SUPPORTED`
    /// for every shape), and in f32 it took 1.09 ms of AlexNet's 13 ms training step.
    pub fn backward_bias<T: Element>(
        &mut self,
        shape: &Conv2dShape,
        dy: &impl DevicePtr<T>,
        db: &mut impl DevicePtrMut<T>,
        accumulate: bool,
    ) -> Result<()> {
        let what = self.what::<T>("backward bias", shape)?;
        let stream = self.handle.stream().clone();
        let (dyp, dbp) = (ptr(dy, &stream), ptr_mut(db, &stream));
        check_operands(
            &what,
            &[
                ("dy", dy.len(), shape.output_len(), dyp),
                ("db", db.len(), shape.out_channels, dbp),
            ],
        )?;
        let [partial, finish] = self.bias_grad.clone();
        let c = shape.out_channels;
        let rows = shape.output_len() / c;
        // Chunks of at least 1024 rows, at most 512 of them: enough blocks to fill the GPU for
        // the large layers, few partials to add.
        let chunks = rows.div_ceil(1024).clamp(1, 512);
        let chunk_rows = rows.div_ceil(chunks);
        self.grow_workspace(chunks * c * std::mem::size_of::<f32>())?;
        let ws = self.workspace_ptr() as u64;
        let args = Args::new(&partial, &stream)
            .input("dy", dy, rows * c)?
            .address(ws)
            .long(rows)
            .int("channels", c)?
            .long(chunk_rows);
        let grid = LaunchConfig {
            grid_dim: (c.div_ceil(32) as u32, chunks as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: conv2d_bias_grad_partial_<dtype>(const T* dy, float* partial, long long rows,
        // int c, long long chunk_rows); dy checked, the workspace holds chunks x c floats (grown
        // above), T is the precision's storage type (checked by `what`), as are the kernels'.
        unsafe { args.launch(grid) }?;
        let args = Args::new(&finish, &stream)
            .address(ws)
            .output("db", db, c)?
            .int("chunks", chunks)?
            .int("channels", c)?
            .int("accumulate", usize::from(accumulate))?;
        // SAFETY: conv2d_bias_grad_finish_<dtype>(const float* partial, T* db, int chunks, int c,
        // int accumulate); as above.
        unsafe { args.launch(elementwise(c)) }
    }

    /// `conv2d <pass> <shape> (<dtype>)` for errors, after checking the shape and that `T`
    /// is this precision's element type.
    fn what<T: Element>(&self, pass: &str, shape: &Conv2dShape) -> Result<String> {
        let what = pass_label(pass, shape, self.precision);
        shape.check()?;
        if T::DATA_TYPE != storage(self.precision) {
            let want = if storage(self.precision) == cudnnDataType_t::CUDNN_DATA_BFLOAT16 {
                "bf16"
            } else {
                "f32"
            };
            return Err(Error::invalid(
                what,
                format!("{} tensors given; this precision stores {want}", T::NAME),
            ));
        }
        Ok(what)
    }

    /// The plan of `shape`, made (descriptors, forward algorithm, workspace) on first use.
    fn plan(&mut self, shape: &Conv2dShape) -> Result<&mut Plan> {
        if !self.plans.contains_key(shape) {
            let precision = self.precision;
            let what = pass_label("forward", shape, precision);
            let d = Descriptors::new(shape, precision, Format::Nhwc)
                .map_err(cudnn_error(|| what.clone()))?;
            let h = self.handle.bind()?;
            let forward = find(&what, self.rules(), |count, n, perf| {
                // SAFETY: live handle and descriptors; `perf` holds `count` results.
                unsafe {
                    sys::cudnnFindConvolutionForwardAlgorithm(
                        h, d.x.0, d.w.0, d.conv.0, d.y.0, count, n, perf,
                    )
                }
            })?;
            let mut precomputed = 0;
            // SAFETY: as above; only asks for a size.
            let precomputed_workspace = unsafe {
                sys::cudnnGetConvolutionForwardWorkspaceSize(
                    h,
                    d.x.0,
                    d.w.0,
                    d.conv.0,
                    d.y.0,
                    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                    &mut precomputed,
                )
            }
            .result()
            .ok()
            .map(|()| precomputed)
            .filter(|&bytes| bytes <= WORKSPACE_LIMIT);
            self.grow_workspace(
                forward
                    .current()
                    .workspace
                    .max(precomputed_workspace.unwrap_or(0)),
            )?;
            let bias_bytes = shape.out_channels * std::mem::size_of::<f32>();
            if self.zero_bias.len() < bias_bytes {
                self.zero_bias = self
                    .handle
                    .stream()
                    .alloc_zeros::<u8>(bias_bytes)
                    .cuda(|| "allocating the conv2d zero bias".into())?;
            }
            self.plans.insert(
                *shape,
                Plan {
                    nhwc: Cudnn {
                        forward: Some(forward),
                        ..Cudnn::new(d)
                    },
                    nchw: None,
                    precomputed_workspace,
                    fused: std::array::from_fn(|_| Fused::Untried),
                    forward_route: Route::Cudnn,
                    backward_route: [None, None],
                },
            );
            let route = self.route(shape, &what, None)?;
            self.plans
                .get_mut(shape)
                .expect("planned above")
                .forward_route = route;
        }
        Ok(self.plans.get_mut(shape).expect("planned above"))
    }

    /// Times a pass of `shape` (the forward without an epilogue for `None`, else that
    /// backward pass, overwriting) by cuDNN on the NHWC tensors and by each of `others`, on
    /// scratch tensors of zeros: [`TIMED_CALLS`] calls each after one untimed call (which
    /// makes cuDNN's choice, the GEMM's plan, the channel-major path's choice and scratch),
    /// each path end to end (the channel-major path's copies included).
    fn measure(
        &mut self,
        shape: &Conv2dShape,
        what: &str,
        pass: Option<Backward>,
        others: &[Path],
    ) -> Result<Route> {
        let bytes = element_bytes(self.precision);
        let stream = self.handle.stream().clone();
        let alloc = |n: usize| {
            stream
                .alloc_zeros::<u8>(n * bytes)
                .cuda(|| format!("allocating tensors to time {what}"))
        };
        let (x, w, mut y) = (
            alloc(shape.input_len())?,
            alloc(shape.weight_len())?,
            alloc(shape.output_len())?,
        );
        let [x, w, y] = [ptr(&x, &stream), ptr(&w, &stream), ptr_mut(&mut y, &stream)];
        // y stands in for dy; the gradient overwrites x (data) or w (filter).
        let ops = match pass {
            None => [x, w, y],
            Some(Backward::Data) => [w, y, x],
            Some(Backward::Filter) => [x, y, w],
        };
        let time = |k: &mut Self, path: Option<Path>| -> Result<f64> {
            let call = |k: &mut Self| k.run_pass(path, shape, what, pass, ops, false);
            call(k)?;
            let ms = time_ms(&stream, || (0..TIMED_CALLS).try_for_each(|_| call(k)))?;
            Ok(ms / TIMED_CALLS as f64)
        };
        let refused = |e: &Error| match e {
            Error::BlasLt { .. } | Error::Invalid { .. } => true,
            Error::Cudnn { source, .. } => refuses(*source),
            _ => false,
        };
        let cudnn_ms = time(self, None)?;
        let mut timed = Vec::new();
        for &path in others {
            // cuBLASLt may offer no algorithm for a shape's sizes and alignments, cuDNN none
            // for its NCHW tensors (or refuse their parameters): cuDNN on the NHWC ones runs
            // it then.
            let ms = match time(self, Some(path)) {
                Ok(ms) => Ok(ms),
                Err(e) if refused(&e) => Err(e.to_string()),
                Err(e) => return Err(e),
            };
            timed.push((path, ms));
        }
        Ok(Route::Measured {
            cudnn_ms,
            others: timed,
        })
    }

    /// Readies the channel-major path for a pass of `shape` (the forward for `None`): the
    /// transposes' kernels, the scratch copies of its tensors, its NCHW descriptors and
    /// cuDNN's algorithm for them.
    fn ready_channel_major(&mut self, shape: &Conv2dShape, pass: Option<Backward>) -> Result<()> {
        if self.precision != Precision::F32 {
            // The copies run f32 to f32 (`channel_major`); `route` never takes the path here.
            return Err(Error::invalid(
                pass_label("channel-major", shape, self.precision),
                "the channel-major path is f32's only",
            ));
        }
        if self.copy.is_none() {
            self.copy = Some(ChannelCopyKernels::load(self.handle.gpu())?);
        }
        self.resize_scratch(scratch_bytes(shape), |len, bytes| len < bytes)?;
        self.ready_choice(shape, Format::Nchw, pass)
    }

    /// cuDNN's choice for `pass` of `shape` in `format` (`None`: the forward), benchmarked now
    /// unless made before.
    fn ready_choice(
        &mut self,
        shape: &Conv2dShape,
        format: Format,
        pass: Option<Backward>,
    ) -> Result<()> {
        match pass {
            None => self.forward_choice(shape, format).map(drop),
            Some(Backward::Data) => self.backward_choice(shape, format, &DATA).map(drop),
            Some(Backward::Filter) => self.backward_choice(shape, format, &FILTER).map(drop),
        }
    }

    /// A pass of `shape` channel-major, on checked buffers as [`Self::run_pass`] takes them:
    /// its two operands transposed into the scratch copies (NCHW activations, KCRS filters),
    /// cuDNN on those into the third (overwriting), and that transposed back into the result,
    /// added to it when `accumulate` (cuDNN's beta = 1 on the NHWC tensors).
    fn channel_major(
        &mut self,
        shape: &Conv2dShape,
        what: &str,
        pass: Option<Backward>,
        ops: [u64; 3],
        accumulate: bool,
    ) -> Result<()> {
        self.ready_channel_major(shape, pass)?;
        let copy = self.copy.clone().expect("loaded by ready_channel_major");
        let copies = channel_major_copies(shape);
        let stream = self.handle.stream().clone();
        let roles = roles(pass);
        let nchw = roles.map(|r| ptr_mut(&mut self.scratch[r], &stream));
        for i in 0..2 {
            // SAFETY: ops[i] was checked to hold the tensor of its role (the copy's x_len), the
            // scratch copy was grown to its y_len; both f32, the precision's storage (checked
            // by ready_channel_major).
            unsafe {
                copy.run_at::<f32, f32>(&stream, &copies[roles[i]][0], ops[i], nchw[i], false)
            }?;
        }
        match pass {
            None => {
                let h = self.handle.bind()?;
                self.convolve(h, shape, Format::Nchw, nchw, what)?;
            }
            Some(b) => self.cudnn_backward(shape, what, Format::Nchw, b, nchw, false)?,
        }
        let back = &copies[roles[2]][1];
        // SAFETY: as above, the other way.
        unsafe { copy.run_at::<f32, f32>(&stream, back, nchw[2], ops[2], accumulate) }
    }

    /// `y = epilogue(x W^T)` of a GEMM shape by cuBLASLt: the residual as C (beta = 1), the
    /// bias and ReLU in cuBLASLt's epilogue, which follows C.
    fn gemm_forward(
        &mut self,
        shape: &Conv2dShape,
        what: &str,
        [x, w, y]: [u64; 3],
        bias: Option<u64>,
        residual: Option<u64>,
        relu: bool,
    ) -> Result<()> {
        use cublasLtEpilogue_t as E;
        let epilogue = match (bias.is_some(), relu) {
            (false, false) => E::CUBLASLT_EPILOGUE_DEFAULT,
            (true, false) => E::CUBLASLT_EPILOGUE_BIAS,
            (false, true) => E::CUBLASLT_EPILOGUE_RELU,
            (true, true) => E::CUBLASLT_EPILOGUE_RELU_BIAS,
        };
        let product = gemm_product(shape, None);
        let ops = Operands {
            a: w,
            b: x,
            c: residual.unwrap_or(y),
            d: y,
            bias,
            beta: if residual.is_some() { 1.0 } else { 0.0 },
        };
        let types = gemm_types(self.precision);
        self.lt()?.matmul(what, product, types, epilogue, ops)
    }

    /// The algorithm of the forward pass of `shape` in `format`, chosen on first use (when
    /// the plan is made, for NHWC).
    fn forward_choice(&mut self, shape: &Conv2dShape, format: Format) -> Result<Choice<FwdAlgo>> {
        self.choice(
            shape,
            "forward",
            format,
            |c| &mut c.forward,
            |h, d, count, n, perf| {
                // SAFETY: live handle and descriptors; `perf` holds `count` results.
                unsafe {
                    sys::cudnnFindConvolutionForwardAlgorithm(
                        h, d.x.0, d.w.0, d.conv.0, d.y.0, count, n, perf,
                    )
                }
            },
        )
    }

    /// The algorithm of the backward pass `pass` of `shape` in `format`, chosen on first use.
    fn backward_choice<P: Perf, A: Copy, G: Copy>(
        &mut self,
        shape: &Conv2dShape,
        format: Format,
        pass: &BackwardFns<P, A, G>,
    ) -> Result<Choice<P::Algo>> {
        self.choice(
            shape,
            pass.name,
            format,
            pass.slot,
            |h, d, count, n, perf| {
                let (operand, grad) = (pass.descriptors)(d);
                // SAFETY: live handle and descriptors; `perf` holds `count` results.
                unsafe { (pass.find)(h, operand, d.y.0, d.conv.0, grad, count, n, perf) }
            },
        )
    }

    /// The backward pass `pass` of `shape` on the checked buffers in `format`: `(handle,
    /// [operand, dy], grad)`, scaled by `[alpha, beta]`.
    fn backward_pass<P: Perf, A: Copy, G: Copy>(
        &mut self,
        shape: &Conv2dShape,
        what: &str,
        format: Format,
        pass: &BackwardFns<P, A, G>,
        (h, [op, dyp], gp): (sys::cudnnHandle_t, [*const c_void; 2], *mut c_void),
        [one, beta]: [f32; 2],
    ) -> Result<()> {
        self.backward_choice(shape, format, pass)?;
        self.execute(shape, what, format, pass.slot, |k, choice| {
            let ws = k.workspace_ptr();
            let d = &k.plans[shape].cudnn(format).d;
            let (operand, grad) = (pass.descriptors)(d);
            // SAFETY: the descriptors describe the checked buffers; the workspace holds at
            // least the algorithm's (grown by `execute`).
            unsafe {
                (pass.run)(
                    h,
                    scalar(&one),
                    operand,
                    op,
                    d.y.0,
                    dyp,
                    d.conv.0,
                    choice.algo,
                    ws,
                    choice.workspace,
                    scalar(&beta),
                    grad,
                    gp,
                )
            }
        })
    }

    /// The algorithm cached in `slot` of `shape`'s plan in `format`, or the one cuDNN's
    /// benchmark `find` picks now (the workspace grown for it).
    fn choice<P: Perf>(
        &mut self,
        shape: &Conv2dShape,
        pass: &str,
        format: Format,
        slot: impl Fn(&mut Cudnn) -> &mut Option<Candidates<P::Algo>>,
        benchmark: impl FnOnce(sys::cudnnHandle_t, &Descriptors, i32, &mut i32, *mut P) -> Status,
    ) -> Result<Choice<P::Algo>> {
        let (precision, rules) = (self.precision, self.rules());
        let h = self.handle.bind()?;
        let cudnn = self.cudnn(shape, format)?;
        let choice = match slot(cudnn) {
            Some(c) => c.current(),
            None => {
                let what = match format {
                    Format::Nhwc => pass_label(pass, shape, precision),
                    Format::Nchw => pass_label(&format!("{pass} channel-major"), shape, precision),
                };
                let d = &cudnn.d;
                let c = find(&what, rules, |count, n, perf| {
                    benchmark(h, d, count, n, perf)
                })?;
                let first = c.current();
                *slot(cudnn) = Some(c);
                first
            }
        };
        self.grow_workspace(choice.workspace)?;
        Ok(choice)
    }

    /// cuDNN's side of `shape`'s plan in `format`, the NCHW descriptors made on first use.
    fn cudnn(&mut self, shape: &Conv2dShape, format: Format) -> Result<&mut Cudnn> {
        let precision = self.precision;
        let plan = self.plan(shape)?;
        if format == Format::Nchw && plan.nchw.is_none() {
            let what = || pass_label("channel-major", shape, precision);
            let d = Descriptors::new(shape, precision, format).map_err(cudnn_error(what))?;
            plan.nchw = Some(Cudnn::new(d));
        }
        Ok(plan.cudnn_mut(format))
    }

    fn grow_workspace(&mut self, bytes: usize) -> Result<()> {
        if bytes > self.workspace.len() {
            // The old workspace is freed in stream order, after the work that used it.
            self.workspace = self
                .handle
                .stream()
                .alloc_zeros::<u8>(bytes)
                .cuda(|| format!("allocating {bytes} bytes of conv2d workspace"))?;
        }
        Ok(())
    }

    fn workspace_ptr(&mut self) -> *mut c_void {
        let stream = self.handle.stream().clone();
        ptr_mut(&mut self.workspace, &stream) as *mut c_void
    }

    /// `y = conv(x, w)` in `format` with the shape's chosen algorithm.
    fn convolve(
        &mut self,
        h: sys::cudnnHandle_t,
        shape: &Conv2dShape,
        format: Format,
        [x, w, y]: [u64; 3],
        what: &str,
    ) -> Result<()> {
        let (one, zero) = scales(false);
        self.forward_choice(shape, format)?;
        self.execute(
            shape,
            what,
            format,
            |c| &mut c.forward,
            |k, choice| {
                let ws = k.workspace_ptr();
                let d = &k.plans[shape].cudnn(format).d;
                // SAFETY: the plan's descriptors describe the checked buffers; the workspace
                // holds the algorithm's (grown by `execute`).
                unsafe {
                    dnn::convolution_forward(
                        h,
                        scalar(&one),
                        d.x.0,
                        x as *const c_void,
                        d.w.0,
                        w as *const c_void,
                        d.conv.0,
                        choice.algo,
                        ws,
                        choice.workspace,
                        scalar(&zero),
                        d.y.0,
                        y as *mut c_void,
                    )
                }
            },
        )
    }

    /// Runs one pass of `shape` in `format` (`exec(self, algorithm)`) with its current
    /// algorithm (chosen before), moving on to the next acceptable one for good when cuDNN
    /// refuses it at run time (see [`Candidates`]).
    fn execute<A: Copy + std::fmt::Debug>(
        &mut self,
        shape: &Conv2dShape,
        what: &str,
        format: Format,
        slot: impl Fn(&mut Cudnn) -> &mut Option<Candidates<A>>,
        mut exec: impl FnMut(&mut Self, Choice<A>) -> std::result::Result<(), CudnnError>,
    ) -> Result<()> {
        let current = |k: &mut Self| {
            let cudnn = k.plans.get_mut(shape).expect("planned").cudnn_mut(format);
            slot(cudnn).as_mut().expect("chosen before").current()
        };
        loop {
            let choice = current(self);
            self.grow_workspace(choice.workspace)?;
            match exec(self, choice) {
                Ok(()) => return Ok(()),
                Err(e) if refuses(e) => {
                    let cudnn = self
                        .plans
                        .get_mut(shape)
                        .expect("planned")
                        .cudnn_mut(format);
                    let candidates = slot(cudnn).as_mut().expect("chosen before");
                    if !candidates.refuse(e) {
                        return Err(Error::invalid(
                            what,
                            format!(
                                "cuDNN refuses every acceptable algorithm (tried: {})",
                                candidates.refused.join(", ")
                            ),
                        ));
                    }
                }
                Err(e) => return Err(cudnn_error(|| what.to_string())(e)),
            }
        }
    }

    /// Runs the fused call when cuDNN takes this shape and activation: `Ok(true)` when it
    /// ran, `Ok(false)` when the shape needs the unfused path (decided on the first call
    /// cuDNN refuses, for good).
    fn fused(
        &mut self,
        h: sys::cudnnHandle_t,
        shape: &Conv2dShape,
        relu: bool,
        [x, w, y]: [u64; 3],
        bias: Option<u64>,
        residual: Option<u64>,
    ) -> std::result::Result<bool, CudnnError> {
        let ws = self.workspace_ptr();
        let stream = self.handle.stream().clone();
        let zero_bias = ptr(&self.zero_bias, &stream);
        let plan = self.plans.get_mut(shape).expect("planned by forward");
        let act = if relu { &self.relu } else { &self.identity };
        let forward = plan.forward().current();
        let state = &mut plan.fused[fused_index(relu, residual.is_some())];
        let precomputed = FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
        let candidates: Vec<(FwdAlgo, usize)> = match state {
            Fused::Unsupported(_) => return Ok(false),
            Fused::Works(algo) => {
                let bytes = if *algo == forward.algo {
                    forward.workspace
                } else {
                    plan.precomputed_workspace.unwrap_or(0)
                };
                vec![(*algo, bytes)]
            }
            Fused::Untried => {
                let mut c = Vec::new();
                if relu {
                    c.push((forward.algo, forward.workspace));
                }
                if let Some(bytes) = plan.precomputed_workspace
                    && !c.iter().any(|&(a, _)| a == precomputed)
                {
                    c.push((precomputed, bytes));
                }
                c
            }
        };
        let (one, alpha2) = scales(residual.is_some());
        let mut refused = Vec::new();
        for (algo, bytes) in candidates {
            // SAFETY: the plan's descriptors describe the checked buffers (the residual and,
            // without one, y itself as z, unread at alpha2 = 0, like y's descriptor; the bias
            // or zeros as [1, out, 1, 1]); the workspace holds `bytes` (grown when planned).
            let status = unsafe {
                dnn::convolution_bias_activation_forward(
                    h,
                    scalar(&one),
                    plan.nhwc.d.x.0,
                    x as *const c_void,
                    plan.nhwc.d.w.0,
                    w as *const c_void,
                    plan.nhwc.d.conv.0,
                    algo,
                    ws,
                    bytes,
                    scalar(&alpha2),
                    plan.nhwc.d.y.0,
                    residual.unwrap_or(y) as *const c_void,
                    plan.nhwc.d.bias.0,
                    bias.unwrap_or(zero_bias) as *const c_void,
                    act.0,
                    plan.nhwc.d.y.0,
                    y as *mut c_void,
                )
            };
            match status {
                Ok(()) => {
                    *state = Fused::Works(algo);
                    return Ok(true);
                }
                // A refusal after earlier successes too (AlexNet's bf16 first layer at batch 64
                // of 224x224 had its fused call refused with BAD_PARAM in a training run, an
                // error then): the shape moves to the unfused path for good, as a refused
                // algorithm moves to the next (`Candidates`).
                Err(e) if refuses(e) => {
                    refused.push(format!("{}: {:?}", algo_name(algo), e.0));
                }
                Err(e) => return Err(e),
            }
        }
        *state = Fused::Unsupported(if refused.is_empty() {
            "no algorithm to try".into()
        } else {
            refused.join(", ")
        });
        Ok(false)
    }

    /// Our epilogue kernel over `y`, for shapes cuDNN's fused call does not take.
    fn run_epilogue<T: Element>(
        &mut self,
        shape: &Conv2dShape,
        y: &mut impl DevicePtrMut<T>,
        epilogue: &Epilogue<'_, T>,
    ) -> Result<()> {
        let kernel = match &self.epilogue {
            Some(k) => k.clone(),
            None => {
                let k = self
                    .handle
                    .gpu()
                    .kernel(KernelModule::Conv2d, T::EPILOGUE)?;
                self.epilogue = Some(k.clone());
                k
            }
        };
        let (n, c) = (shape.output_len(), shape.out_channels);
        let stream = self.handle.stream().clone();
        let args = Args::new(&kernel, &stream)
            .output("y", y, n)?
            .optional("bias", epilogue.bias.as_ref(), c)?
            .optional("residual", epilogue.residual.as_ref(), n)?
            .long(n)
            .int("channels", c)?
            .int("relu", usize::from(epilogue.relu))?;
        // SAFETY: conv2d_epilogue_<dtype>(T* y, const T* bias, const T* z, long long n, int c,
        // int relu); every buffer was checked for the elements it covers.
        unsafe { args.launch(elementwise(n)) }
    }
}

/// Whether a pass of `shape` (the forward for `None`) is a GEMM: a 1x1 kernel, no padding,
/// one group, and stride 1, or a stride `s` dividing the height for the forward and
/// backward-data passes (the pixels they read or write are then every s-th of every s-th
/// row, evenly spaced rows of evenly spaced pixels: a strided batch, see [`gemm_product`]).
/// The filter pass of a strided shape sums over those rows, which a batch cannot.
fn is_gemm(shape: &Conv2dShape, pass: Option<Backward>) -> bool {
    shape.kernel_h == 1
        && shape.kernel_w == 1
        && shape.pad == 0
        && shape.groups == 1
        && (shape.stride == 1
            || (pass != Some(Backward::Filter) && shape.height.is_multiple_of(shape.stride)))
}

/// The roles of a pass's `[operand, operand, result]` (the forward's `[x, w, y]` for `None`,
/// a backward pass's `[operand, dy, grad]`): 0 the input's shape (x, dx), 1 the filters' (w,
/// dw), 2 the output's (y, dy). The channel-major path's scratch copies and transposes are
/// indexed by role.
fn roles(pass: Option<Backward>) -> [usize; 3] {
    match pass {
        None => [0, 1, 2],
        Some(Backward::Data) => [1, 2, 0],
        Some(Backward::Filter) => [0, 2, 1],
    }
}

/// The channel-major path's transposes of `shape`'s tensors by role ([`roles`]), each `[to,
/// back]`: from the crate's layout to cuDNN's channel-major one and back. Activations `[n][h
/// w][c]` are a batch of n `h w x c` blocks, each transposed to `c x h w` (NCHW); filters
/// `[k][r s][c / groups]` a batch of k `r s x c / groups` blocks, to KCRS (PyTorch's OIHW,
/// which a grouped filter descriptor reads as well).
fn channel_major_copies(shape: &Conv2dShape) -> [[Copy2d; 2]; 3] {
    let [oh, ow] = shape.out_size();
    let pair = |rows, a, b| [Copy2d::transpose(rows, a, b), Copy2d::transpose(rows, b, a)];
    [
        pair(shape.batch, shape.height * shape.width, shape.in_channels),
        pair(
            shape.out_channels,
            shape.kernel_h * shape.kernel_w,
            shape.group_in_channels(),
        ),
        pair(shape.batch, oh * ow, shape.out_channels),
    ]
}

/// The bytes of the channel-major path's three scratch copies for `shape` (f32, by [`roles`]).
fn scratch_bytes(shape: &Conv2dShape) -> [usize; 3] {
    channel_major_copies(shape).map(|[to, _]| to.y_len() * std::mem::size_of::<f32>())
}

/// How errors and timings name a pass of a shape: `conv2d backward data 2x9x7x64 -> 32 k1x1 s1
/// p0 g1 (bf16)`.
fn pass_label(pass: &str, shape: &Conv2dShape, precision: Precision) -> String {
    format!("conv2d {pass} {shape} ({precision})")
}

/// The column-major product a pass of a GEMM shape is (the forward for `None`; see
/// [`is_gemm`]), with rows = the output's pixels, batch x out height x out width. Row-major
/// matrices read column-major are their transposes: W `[out][in]` is W^T (in x out), x
/// `[pixels][in]` is x^T (in x pixels), y and dy `[rows][out]` are y^T and dy^T (out x rows).
///
/// At stride s the output's pixel `(n, i, j)` reads the input's `(n, s i, s j)`: within an
/// output row, input pixels `s in` elements apart (x^T's leading dimension), and from one
/// output row to the next, `s width in` (as `s` divides the height, also across images). So
/// the product is a batch of one product per output row. The backward-data product writes
/// only those input pixels; the others' gradient is zero ([`Conv2dKernels::gemm_backward`]
/// clears them first).
fn gemm_product(shape: &Conv2dShape, pass: Option<Backward>) -> Product {
    let (cin, cout, s) = (shape.in_channels, shape.out_channels, shape.stride);
    let [out_h, out_w] = shape.out_size();
    // Columns of each product, and the batch: (count, x's stride, y's stride).
    let (cols, batch) = if s == 1 {
        (shape.batch * out_h * out_w, None)
    } else {
        let rows = shape.batch * out_h;
        (out_w, Some((rows, s * shape.width * cin, out_w * cout)))
    };
    let x_ld = s * cin;
    match pass {
        // y^T (out x rows) = W x^T: A = W (op T), B = x (op N); the bias is per row of y^T,
        // as cuBLASLt's epilogue adds it.
        None => Product {
            trans: (true, false),
            mnk: (cout, cols, cin),
            ld: (cin, x_ld, cout),
            batch: batch.map(|(count, x, y)| Batch {
                count,
                strides: (0, x, y),
            }),
        },
        // dx^T (in x rows) = W^T dy^T: A = W (op N), B = dy (op N).
        Some(Backward::Data) => Product {
            trans: (false, false),
            mnk: (cin, cols, cout),
            ld: (cin, cout, x_ld),
            batch: batch.map(|(count, x, y)| Batch {
                count,
                strides: (0, y, x),
            }),
        },
        // dW^T (in x out) = x^T dy: A = x (op N), B = dy (op T); stride 1 only.
        Some(Backward::Filter) => Product {
            trans: (false, true),
            mnk: (cin, cout, cols),
            ld: (cin, cout, cin),
            batch: None,
        },
    }
}

/// The GEMM path's types: f32 exact (no TF32: f32 promises FMA-exact sums), tf32 on TF32
/// tensor cores, bf16 tensors with f32 accumulation.
fn gemm_types(precision: Precision) -> Types {
    let (data, compute) = match precision {
        Precision::F32 => (
            cudaDataType_t::CUDA_R_32F,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ),
        Precision::Tf32 => (
            cudaDataType_t::CUDA_R_32F,
            cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        ),
        Precision::Bf16 => (
            cudaDataType_t::CUDA_R_16BF,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ),
    };
    Types {
        ab: data,
        cd: data,
        compute,
    }
}

/// Whether a fused call's status means cuDNN does not take this configuration (rather than a
/// failure to report): cuDNN 9 numbers its statuses by family: 2xxx bad parameters, 3xxx not supported.
fn refuses(e: CudnnError) -> bool {
    (2000..4000).contains(&(e.0 as u32))
}

/// The alignment every tensor address must have (see the module docs).
const ALIGN: u64 = 16;

/// Fails unless every operand `(name, length, length the shape needs, address)` has its
/// length and an [`ALIGN`]-byte aligned address.
fn check_operands(what: &str, operands: &[(&str, usize, usize, u64)]) -> Result<()> {
    for &(name, len, want, addr) in operands {
        check_len(what, name, len, want)?;
        if addr % ALIGN != 0 {
            return Err(Error::invalid(
                what,
                format!("{name} starts at {addr:#x}, not on a {ALIGN}-byte boundary"),
            ));
        }
    }
    Ok(())
}

/// cuDNN's (alpha, beta): the result overwrites, or is added to, the output.
fn scales(accumulate: bool) -> (f32, f32) {
    (1.0, if accumulate { 1.0 } else { 0.0 })
}

/// A host scalar as cuDNN takes alpha and beta (f32 for f32 and bf16 tensors).
fn scalar(v: &f32) -> *const c_void {
    v as *const f32 as *const c_void
}

/// An all-zero cuDNN struct to be filled in by cuDNN.
fn zeroed<P: Copy>() -> P {
    // SAFETY: only used for cuDNN's plain-data performance structs, whose fields are numbers
    // and enums with a zero variant.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `op(A) op(B)` column-major on the host, as cuBLAS defines the product (each of a
    /// batch's at its offsets), into `c_len` zeros.
    fn host_product(p: Product, a: &[f32], b: &[f32], c_len: usize) -> Vec<f32> {
        let ((m, n, k), (lda, ldb, ldc)) = (p.mnk, p.ld);
        let Batch { count, strides } = p.batch.unwrap_or(Batch {
            count: 1,
            strides: (0, 0, 0),
        });
        let mut c = vec![0.0f32; c_len];
        for i in 0..count {
            let (a, b) = (&a[i * strides.0..], &b[i * strides.1..]);
            let c = &mut c[i * strides.2..];
            let op_a = |i: usize, l: usize| {
                if p.trans.0 {
                    a[l + i * lda]
                } else {
                    a[i + l * lda]
                }
            };
            let op_b = |l: usize, j: usize| {
                if p.trans.1 {
                    b[j + l * ldb]
                } else {
                    b[l + j * ldb]
                }
            };
            for j in 0..n {
                for i in 0..m {
                    let dot: f64 = (0..k).map(|l| op_a(i, l) as f64 * op_b(l, j) as f64).sum();
                    c[i + j * ldc] = dot as f32;
                }
            }
        }
        c
    }

    /// The forward and backward passes of 1x1 shapes, as the GEMMs `gemm_product` describes,
    /// give the CPU reference's convolution and gradients (on the host: the operand order,
    /// transposes, leading dimensions and batches the GPU's cuBLASLt calls take), at stride
    /// 1 and, for the passes that are GEMMs there, at strides 2 and 3 (odd widths included).
    #[test]
    fn gemm_products_are_the_convolution_and_its_gradients() {
        let shapes = [
            Conv2dShape::new(2, [3, 5], 6, 4, 1),
            Conv2dShape::new(2, [4, 7], 6, 5, 1).with_stride(2),
            Conv2dShape::new(3, [6, 8], 4, 3, 1).with_stride(3),
        ];
        for shape in shapes {
            let conv = cpu::Conv2d::nhwc(shape);
            let value = |i: usize, m: usize| ((i * 7919) % m) as f32 / m as f32 - 0.5;
            let x: Vec<f32> = (0..shape.input_len()).map(|i| value(i, 13)).collect();
            let w: Vec<f32> = (0..shape.weight_len()).map(|i| value(i, 11)).collect();
            let dy: Vec<f32> = (0..shape.output_len()).map(|i| value(i, 17)).collect();
            let close = |what: &str, got: &[f32], want: &[f32]| {
                assert_eq!(got.len(), want.len(), "{what} {shape}");
                for (g, e) in got.iter().zip(want) {
                    assert!((g - e).abs() < 1e-5, "{what} {shape}: {g} against {e}");
                }
            };
            let y = cpu::conv2d(&conv, &x, &w, None, None).unwrap();
            let forward = gemm_product(&shape, None);
            close("forward", &host_product(forward, &w, &x, y.len()), &y);
            let dx = cpu::backward_data(&conv, &w, &dy).unwrap();
            let data = gemm_product(&shape, Some(Backward::Data));
            close("backward data", &host_product(data, &w, &dy, dx.len()), &dx);
            assert!(is_gemm(&shape, None) && is_gemm(&shape, Some(Backward::Data)));
            if shape.stride == 1 {
                let dw = cpu::backward_filter(&conv, &x, &dy).unwrap();
                let filter = gemm_product(&shape, Some(Backward::Filter));
                close(
                    "backward filter",
                    &host_product(filter, &x, &dy, dw.len()),
                    &dw,
                );
            } else {
                assert!(!is_gemm(&shape, Some(Backward::Filter)));
            }
        }
        // A stride that does not divide the height leaves uneven rows: cuDNN's.
        let uneven = Conv2dShape::new(1, [5, 4], 2, 2, 1).with_stride(2);
        assert!(!is_gemm(&uneven, None) && !is_gemm(&uneven, Some(Backward::Data)));
    }

    /// The channel-major path's transposes: activations to NCHW, filters to KCRS (PyTorch's
    /// OIHW), each `back` the inverse of its `to` (adding when accumulating), the roles'
    /// lengths those of the tensors each pass hands over, and the forward convolution of the
    /// transposed operands, transposed back, the NHWC convolution (on the CPU reference).
    #[test]
    fn channel_major_copies_are_nchw_and_kcrs() {
        use super::super::channel_copy::cpu::channel_copy;
        let s = Conv2dShape::new;
        let shapes = [
            s(2, [7, 5], 6, 9, 3)
                .with_stride(2)
                .with_pad(1)
                .with_groups(3),
            s(2, [6, 6], 4, 4, 3).with_pad(1).with_groups(4),
            s(1, [5, 4], 3, 2, 1),
            Conv2dShape {
                kernel_w: 5,
                ..s(3, [4, 9], 2, 3, 1).with_pad(2)
            },
        ];
        for shape in shapes {
            let copies = channel_major_copies(&shape);
            let value = |i: usize, m: usize| ((i * 7919) % m) as f32 / m as f32 - 0.5;
            let tensors: [Vec<f32>; 3] = [
                (0..shape.input_len()).map(|i| value(i, 13)).collect(),
                (0..shape.weight_len()).map(|i| value(i, 11)).collect(),
                (0..shape.output_len()).map(|i| value(i, 17)).collect(),
            ];
            let copy = |c: &Copy2d, x: &[f32], onto: Option<&[f32]>| {
                let mut y = onto.map_or(vec![0.0; c.y_len()], <[f32]>::to_vec);
                channel_copy(c, x, &mut y, onto.is_some());
                y
            };
            let [to, back]: [[Vec<f32>; 3]; 2] =
                [0, 1].map(|way| std::array::from_fn(|r| copy(&copies[r][way], &tensors[r], None)));
            for r in 0..3 {
                let [t, b] = copies[r];
                assert_eq!(t.x_len(), tensors[r].len(), "{shape} role {r}");
                assert_eq!(
                    (t.y_len(), b.x_len(), b.y_len()),
                    (t.x_len(), t.x_len(), t.x_len())
                );
                assert_eq!(copy(&b, &to[r], None), tensors[r], "{shape} role {r}");
                let twice: Vec<f32> = tensors[r].iter().map(|v| 2.0 * v).collect();
                assert_eq!(copy(&b, &to[r], Some(&tensors[r])), twice);
                assert_eq!(copy(&t, &back[r], None), tensors[r]);
            }
            // Activation (n, y, x, c) lands at (n, c, y, x); filter (k, ky, kx, c) at (k, c, ky, kx).
            let (h, w, c) = (shape.height, shape.width, shape.in_channels);
            let (n, y, x, ci) = (shape.batch - 1, h - 1, 1, c - 1);
            assert_eq!(
                to[0][((n * c + ci) * h + y) * w + x],
                tensors[0][((n * h + y) * w + x) * c + ci]
            );
            assert_eq!(to[1], shape.weight_from_gpu(&tensors[1]), "{shape}");
            // The passes hand over [x, w, y], [w, dy, dx] and [x, dy, dw].
            let lens = [shape.input_len(), shape.weight_len(), shape.output_len()];
            for (pass, want) in [
                (None, [lens[0], lens[1], lens[2]]),
                (Some(Backward::Data), [lens[1], lens[2], lens[0]]),
                (Some(Backward::Filter), [lens[0], lens[2], lens[1]]),
            ] {
                assert_eq!(roles(pass).map(|r| lens[r]), want);
            }
            let nchw = cpu::Conv2d {
                layout: cpu::Layout::Nchw,
                ..cpu::Conv2d::nhwc(shape)
            };
            let y = cpu::conv2d(&nchw, &to[0], &to[1], None, None).unwrap();
            let want = cpu::conv2d(&cpu::Conv2d::nhwc(shape), &tensors[0], &to[1], None, None);
            let got = copy(&copies[2][1], &y, None);
            for (g, e) in got.iter().zip(&want.unwrap()) {
                assert!((g - e).abs() < 1e-5, "{shape}: {g} against {e}");
            }
        }
    }

    /// The fastest measured path runs; a refused or slower one never does; a forced one
    /// always; the description says which and the times that chose it.
    #[test]
    fn routes_run_the_fastest_path_and_say_why() {
        let measured = |others: Vec<(Path, std::result::Result<f64, String>)>| Route::Measured {
            cudnn_ms: 1.0,
            others,
        };
        let gemm_wins = measured(vec![(Path::Gemm, Ok(0.2)), (Path::ChannelMajor, Ok(0.5))]);
        assert_eq!(gemm_wins.runs(), Some(Path::Gemm));
        let nchw_wins = measured(vec![
            (Path::Gemm, Err("no algorithm".into())),
            (Path::ChannelMajor, Ok(0.5)),
        ]);
        assert_eq!(nchw_wins.runs(), Some(Path::ChannelMajor));
        assert_eq!(measured(vec![(Path::ChannelMajor, Ok(1.5))]).runs(), None);
        assert_eq!(Route::Cudnn.runs(), None);
        assert_eq!(
            Route::Forced(Path::ChannelMajor).runs(),
            Some(Path::ChannelMajor)
        );
        let choice = |algo, ms| Choice {
            algo,
            workspace: 0,
            ms,
            math: Math::CUDNN_FMA_MATH,
        };
        let nhwc = Some(choice(
            FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            1.0,
        ));
        let nchw = Some(choice(FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT, 0.4));
        let line = nchw_wins.describe(nhwc, nchw);
        assert!(
            line.starts_with("channel-major (NCHW) FFT (fma, 0.400 ms, 0 KiB), chosen when timed")
                && line.contains("(0.500 ms against cuDNN's IMPLICIT_GEMM 1.000, cuBLASLt GEMM refused: no algorithm)"),
            "{line}"
        );
        let line = Route::Forced(Path::ChannelMajor).describe(nhwc, nchw);
        assert!(
            line.starts_with("channel-major (NCHW) FFT") && line.ends_with("(forced)"),
            "{line}"
        );
        let kept = measured(vec![(Path::ChannelMajor, Ok(1.5))]).describe(nhwc, nchw);
        assert!(
            kept.starts_with("IMPLICIT_GEMM (fma")
                && kept.contains("(1.000 ms against channel-major (NCHW) 1.500)"),
            "{kept}"
        );
    }

    #[test]
    fn output_sizes_and_lengths_follow_the_geometry() {
        // ResNet's stem on a 320 x 320 search region.
        let stem = Conv2dShape::new(1, [320, 320], 3, 64, 7)
            .with_stride(2)
            .with_pad(3);
        assert_eq!(stem.out_size(), [160, 160]);
        assert_eq!(stem.weight_len(), 64 * 7 * 7 * 3);
        assert_eq!(stem.output_len(), 160 * 160 * 64);
        assert_eq!(stem.flops(), 2.0 * (160 * 160 * 64) as f64 * 147.0);
        assert_eq!(stem.to_string(), "1x320x320x3 -> 64 k7x7 s2 p3 g1");
        stem.check().unwrap();
        // Odd sizes, stride 2, depthwise, a non-square kernel.
        let dw = Conv2dShape::new(2, [15, 17], 24, 24, 3)
            .with_stride(2)
            .with_pad(1)
            .with_groups(24);
        assert_eq!(dw.out_size(), [8, 9]);
        assert_eq!(dw.weight_len(), 24 * 9);
        dw.check().unwrap();
        let wide = Conv2dShape {
            kernel_w: 5,
            ..Conv2dShape::new(1, [6, 9], 4, 2, 3)
        };
        assert_eq!(wide.out_size(), [4, 5]);
    }

    #[test]
    fn weights_convert_between_pytorch_and_gpu_layouts() {
        let s = Conv2dShape::new(1, [5, 5], 6, 4, 3).with_groups(2);
        let oihw: Vec<f32> = (0..s.weight_len()).map(|i| i as f32).collect();
        let krsc = s.weight_to_gpu(&oihw);
        // Output channel 1, input channel 2 of its group, tap (0, 1).
        let (o, ci, ky, kx) = (1, 2, 0, 1);
        let (c, kh, kw) = (3, 3, 3);
        let gpu = ((o * kh + ky) * kw + kx) * c + ci;
        let torch = ((o * c + ci) * kh + ky) * kw + kx;
        assert_eq!(krsc[gpu], oihw[torch]);
        assert_eq!(s.weight_from_gpu(&krsc), oihw);
    }

    #[test]
    fn impossible_shapes_are_refused_with_the_reason() {
        let e = Conv2dShape::new(1, [8, 8], 6, 4, 3).with_groups(4);
        let e = e.check().unwrap_err().to_string();
        assert!(
            e.contains("4 groups must divide both 6 input and 4 output"),
            "{e}"
        );
        let e = Conv2dShape::new(1, [2, 2], 3, 4, 5)
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("larger than the padded input") && e.contains("1x2x2x3 -> 4 k5x5"),
            "{e}"
        );
        let e = Conv2dShape::new(1, [8, 8], 3, 4, 3).with_stride(0);
        let e = e.check().unwrap_err().to_string();
        assert!(e.contains("must be positive"), "{e}");
        let e = Conv2dShape::new(1 << 16, [256, 256], 64, 64, 1);
        let e = e.check().unwrap_err().to_string();
        assert!(e.contains("the input has") && e.contains("2^31"), "{e}");
    }

    /// The trainer builds each replica's launchers and moves them to its GPU's thread.
    #[test]
    fn the_launcher_can_move_to_a_worker_thread() {
        fn send<T: Send>() {}
        send::<Conv2dKernels>();
    }

    #[test]
    fn fused_states_are_kept_per_epilogue() {
        let all: Vec<usize> = [(false, false), (false, true), (true, false), (true, true)]
            .into_iter()
            .map(|(relu, residual)| fused_index(relu, residual))
            .collect();
        assert_eq!(all, [0, 1, 2, 3]);
        assert_eq!(FUSED_NAMES[fused_index(true, true)], "bias+residual+relu");
    }

    #[test]
    fn f32_refuses_tensor_op_algorithms() {
        assert!(!math_allowed(Precision::F32, Math::CUDNN_TENSOR_OP_MATH));
        assert!(math_allowed(Precision::F32, Math::CUDNN_FMA_MATH));
        assert!(math_allowed(Precision::Tf32, Math::CUDNN_TENSOR_OP_MATH));
        assert!(!math_allowed(
            Precision::Bf16,
            Math::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
        ));
        assert_eq!(math(Precision::F32), Math::CUDNN_FMA_MATH);
        let mut tensor_op = zeroed::<sys::cudnnConvolutionFwdAlgoPerf_t>();
        tensor_op.mathType = Math::CUDNN_TENSOR_OP_MATH;
        tensor_op.algo = FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
        let mut winograd = tensor_op;
        winograd.mathType = Math::CUDNN_FMA_MATH;
        winograd.algo = FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD;
        let mut direct = winograd;
        direct.algo = FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM;
        direct.memory = 1024;
        let all = [tensor_op, winograd, direct];
        let rules = |precision, transforms| Rules {
            precision,
            deterministic: false,
            transforms,
        };
        let c = pick(&all, rules(Precision::F32, false), "x").unwrap();
        assert_eq!(c.list.len(), 1);
        assert_eq!(c.current().algo, FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM);
        assert!(
            c.refused[1].contains("WINOGRAD: FFT/Winograd"),
            "{:?}",
            c.refused
        );
        // Allowed, f32 takes Winograd (cuDNN's order: the faster first), never tensor ops.
        let c = pick(&all, rules(Precision::F32, true), "x").unwrap();
        assert_eq!(c.list.len(), 2);
        assert_eq!(
            c.current().algo,
            FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD
        );
        let mut c = pick(&all, rules(Precision::Tf32, false), "x").unwrap();
        assert_eq!(
            c.current().algo,
            FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM
        );
        // Refused when run: the next one takes over; the last one stays.
        let bad_param = CudnnError(Status::CUDNN_STATUS_BAD_PARAM);
        assert!(c.refuse(bad_param));
        assert_eq!(
            c.current().algo,
            FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD
        );
        assert!(c.refuse(bad_param));
        assert!(!c.refuse(bad_param));
        assert_eq!(c.current().algo, FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM);
        assert!(c.refused[0].contains("IMPLICIT_PRECOMP_GEMM: CUDNN_STATUS_BAD_PARAM when run"));
        let e = pick(&[tensor_op], rules(Precision::F32, true), "conv2d forward");
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("no usable f32 algorithm")
                && e.contains("IMPLICIT_PRECOMP_GEMM: tensor-op math"),
            "{e}"
        );
    }
}
