//! `batch_norm`: PyTorch's `BatchNorm2d` over NHWC tensors (per channel, over the batch and
//! every pixel), in train mode (the batch's statistics, with the running statistics updated)
//! and eval mode (the running statistics). [`cpu`] is the reference; [`BatchNormKernels`]
//! launches `kernels/batch_norm.cu` (activations f32 or bf16, statistics f32; an optional
//! fused ReLU).
//!
//! A train-mode forward keeps the per-channel `mean` and `invstd` ([`Saved`]) for the
//! backward pass, and writes its contribution to the running statistics (its weight times
//! the batch's mean and unbiased variance, laid out as the running statistics are); summed
//! over the GPUs of a step (with the gradients) and applied by
//! [`BatchNormKernels::update_running`], that is the CPU's `update_running`.
//!
//! Synchronised batch norm splits both passes at their reductions, as the CPU reference's
//! `Moments` and `NormGrads` do: [`BatchNormKernels::moments`] gives a GPU's sums, the
//! caller sums them over the step's GPUs and [`BatchNormKernels::forward_from_moments`]
//! normalises with the total; [`BatchNormKernels::backward_sums`] gives `dgamma` and `dbeta`,
//! whose totals [`BatchNormKernels::backward_input`] takes with the step's row count.

pub mod cpu;

use cudarc::driver::{CudaSlice, CudaStream, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig};

use super::KernelModule;
use super::conv2d::Element;
use super::launch::{Args, by_dtype, elementwise, ptr, ptr_mut, vector_width};
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::{Gpu, Kernel};

/// Channels per reduction block and its row lanes (`BN_CH`, `BN_LANES` in the kernel file).
const BLOCK_CHANNELS: usize = 32;
const LANES: usize = 8;
/// Blocks a reduction aims for: a few per multiprocessor on the largest GPUs.
const TARGET_BLOCKS: usize = 1024;
/// Threads the element-wise passes aim for: the largest GPUs full (132 multiprocessors x
/// 2048), each thread walking a few rows of its channels, whose factors it loads once.
const TARGET_THREADS: usize = 1 << 18;

/// A batch norm's operand geometry: `rows` (batch x height x width) of `channels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormShape {
    pub rows: usize,
    pub channels: usize,
}

impl NormShape {
    /// The row splits of a reduction: `(splits, rows per split)`.
    fn splits(&self) -> (usize, usize) {
        let blocks_x = self.channels.div_ceil(BLOCK_CHANNELS);
        let most = self.rows.div_ceil(4 * LANES).max(1);
        let want = (TARGET_BLOCKS / blocks_x).clamp(1, most);
        let per = self.rows.div_ceil(want).max(1);
        (self.rows.div_ceil(per).max(1), per)
    }

    /// The f32 workspace a forward or backward reduction of this shape needs.
    pub fn workspace_len(&self) -> usize {
        let (splits, _) = self.splits();
        splits * self.channels * 2 + self.channels
    }

    fn len(&self) -> usize {
        self.rows * self.channels
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.rows == 0 || self.channels == 0 || self.len() > i32::MAX as usize {
            return Err(Error::invalid(
                format!("batch_norm {what}"),
                format!(
                    "{} rows of {} channels: both must be positive and the tensor under 2^31 values",
                    self.rows, self.channels
                ),
            ));
        }
        Ok(())
    }

    /// The element-wise passes' grid at `vec` values a thread: the `channels / vec` channel
    /// groups times up to one row lane per row (`ChannelRows` in the kernel file).
    fn channel_grid(&self, vec: usize) -> LaunchConfig {
        let groups = self.channels / vec;
        let lanes = (TARGET_THREADS / groups).clamp(1, self.rows);
        elementwise(groups * lanes)
    }

    fn reduction_grid(&self) -> LaunchConfig {
        let (splits, _) = self.splits();
        LaunchConfig {
            grid_dim: (
                self.channels.div_ceil(BLOCK_CHANNELS) as u32,
                splits as u32,
                1,
            ),
            block_dim: (BLOCK_CHANNELS as u32, LANES as u32, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// The finalize kernels' grid for `channels`: a warp per channel, 8 a block (`BN_FIN_WARPS`).
fn finalize_grid(channels: usize) -> LaunchConfig {
    const WARPS: usize = 8;
    LaunchConfig {
        grid_dim: (channels.div_ceil(WARPS) as u32, 1, 1),
        block_dim: (32 * WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// What a forward pass keeps for its backward pass: per channel, the mean and `1 / sqrt(var
/// + eps)` it normalised with.
#[derive(Debug)]
pub struct Saved {
    pub mean: CudaSlice<f32>,
    pub invstd: CudaSlice<f32>,
}

impl Saved {
    pub fn new(gpu: &Gpu, channels: usize) -> Result<Saved> {
        let s = gpu.stream();
        let alloc = || {
            s.alloc_zeros::<f32>(channels)
                .cuda(|| format!("allocating batch_norm statistics of {channels} channels"))
        };
        Ok(Saved {
            mean: alloc()?,
            invstd: alloc()?,
        })
    }
}

/// A reduction's scratch: written by one kernel, read by the next.
pub trait Workspace: DevicePtr<f32> + DevicePtrMut<f32> {}
impl<B: DevicePtr<f32> + DevicePtrMut<f32>> Workspace for B {}

/// The scale and shift `[channels]`.
pub struct Affine<'a, G: DevicePtr<f32>> {
    pub gamma: &'a G,
    pub beta: &'a G,
}

/// The kernels of `kernels/batch_norm.cu`, loaded once.
#[derive(Debug, Clone)]
pub struct BatchNormKernels {
    stats: [Kernel; 2],
    finalize: Kernel,
    moments: Kernel,
    apply: [Kernel; 2],
    eval_stats: Kernel,
    running: Kernel,
    backward_reduce: [Kernel; 2],
    backward_finalize: Kernel,
    backward_apply: [Kernel; 2],
}

impl BatchNormKernels {
    pub fn load(gpu: &Gpu) -> Result<BatchNormKernels> {
        let k = |name| gpu.kernel(KernelModule::BatchNorm, name);
        Ok(BatchNormKernels {
            stats: [k("batch_norm_stats_f32")?, k("batch_norm_stats_bf16")?],
            finalize: k("batch_norm_finalize_f32")?,
            moments: k("batch_norm_moments_f32")?,
            apply: [k("batch_norm_apply_f32")?, k("batch_norm_apply_bf16")?],
            eval_stats: k("batch_norm_eval_stats_f32")?,
            running: k("batch_norm_running_f32")?,
            backward_reduce: [
                k("batch_norm_backward_reduce_f32")?,
                k("batch_norm_backward_reduce_bf16")?,
            ],
            backward_finalize: k("batch_norm_backward_finalize_f32")?,
            backward_apply: [
                k("batch_norm_backward_apply_f32")?,
                k("batch_norm_backward_apply_bf16")?,
            ],
        })
    }

    /// Train mode: `y = gamma xhat + beta` (then ReLU when `relu`) with the batch's
    /// statistics, kept in `saved`; `contrib`, when given, receives `weight` times the batch's
    /// mean (`[0, channels)`) and unbiased variance (`[channels, 2 channels)`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train<T: Element, G: DevicePtr<f32>>(
        &self,
        stream: &CudaStream,
        shape: NormShape,
        x: &impl DevicePtr<T>,
        affine: Affine<'_, G>,
        y: &mut impl DevicePtrMut<T>,
        saved: &mut Saved,
        workspace: &mut impl Workspace,
        contrib: Option<(&mut CudaViewMut<'_, f32>, f32)>,
        relu: bool,
    ) -> Result<()> {
        shape.check("forward")?;
        let splits = self.partials(stream, shape, x, workspace)?;
        let partial = (&*workspace, shape.workspace_len());
        self.finalize(stream, partial, splits, shape, saved, contrib)?;
        self.apply(stream, shape, x, affine, y, saved, relu)
    }

    /// A shard's moments for synchronised batch norm: per channel the sums of `x` and of its
    /// squares (`[channels][2]`, then `channels` zeros), [`moments_len`](Self::moments_len)
    /// values of `moments`, to be summed over the step's GPUs.
    pub fn moments<T: Element>(
        &self,
        stream: &CudaStream,
        shape: NormShape,
        x: &impl DevicePtr<T>,
        workspace: &mut impl Workspace,
        moments: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        shape.check("moments")?;
        let splits = self.partials(stream, shape, x, workspace)?;
        let c = shape.channels;
        let args = Args::new(&self.moments, stream)
            .input("workspace", &*workspace, shape.workspace_len())?
            .int("splits", splits)?
            .int("rows", shape.rows)?
            .int("channels", c)?
            .output("moments", moments, Self::moments_len(c))?;
        // SAFETY: batch_norm_moments_f32(const float* partial, int splits, int rows, int c,
        // float* moments); moments holds 3c.
        unsafe { args.launch(finalize_grid(c)) }
    }

    /// The values [`moments`](Self::moments) writes for `channels`.
    pub fn moments_len(channels: usize) -> usize {
        3 * channels
    }

    /// Train mode with the step's statistics: `total` is the sum of every GPU's
    /// [`moments`](Self::moments), over `total_rows` rows; otherwise as
    /// [`forward_train`](Self::forward_train).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_from_moments<T: Element, G: DevicePtr<f32>>(
        &self,
        stream: &CudaStream,
        shape: NormShape,
        (total, total_rows): (&impl DevicePtr<f32>, usize),
        x: &impl DevicePtr<T>,
        affine: Affine<'_, G>,
        y: &mut impl DevicePtrMut<T>,
        saved: &mut Saved,
        contrib: Option<(&mut CudaViewMut<'_, f32>, f32)>,
        relu: bool,
    ) -> Result<()> {
        shape.check("forward")?;
        let whole = NormShape {
            rows: total_rows,
            ..shape
        };
        let partial = (total, Self::moments_len(shape.channels));
        self.finalize(stream, partial, 1, whole, saved, contrib)?;
        self.apply(stream, shape, x, affine, y, saved, relu)
    }

    /// The stats kernel's partials of `x` in `workspace`; returns their splits.
    fn partials<T: Element>(
        &self,
        stream: &CudaStream,
        shape: NormShape,
        x: &impl DevicePtr<T>,
        workspace: &mut impl Workspace,
    ) -> Result<usize> {
        let (splits, per) = shape.splits();
        let args = Args::new(by_dtype::<T>(&self.stats), stream)
            .input("x", x, shape.len())?
            .output("workspace", workspace, shape.workspace_len())?
            .int("rows", shape.rows)?
            .int("channels", shape.channels)?
            .int("rows per split", per)?;
        // SAFETY: batch_norm_stats_<dtype>(const T* x, float* partial, int rows, int c, int
        // per_split) on the reduction grid; the workspace holds splits x c x 2 + c.
        unsafe { args.launch(shape.reduction_grid())? };
        Ok(splits)
    }

    /// Mean and invstd from `splits` partials (`len` values) over `shape.rows` rows, and the
    /// running statistics' contribution.
    fn finalize(
        &self,
        stream: &CudaStream,
        (partial, len): (&impl DevicePtr<f32>, usize),
        splits: usize,
        shape: NormShape,
        saved: &mut Saved,
        contrib: Option<(&mut CudaViewMut<'_, f32>, f32)>,
    ) -> Result<()> {
        let c = shape.channels;
        if shape.rows < 2 && contrib.is_some() {
            return Err(Error::invalid(
                "batch_norm running statistics",
                "train mode needs more than one value per channel (batch x height x width >= 2)",
            ));
        }
        let (contrib, weight) = match contrib {
            Some((b, w)) => {
                super::launch::check_at_least(
                    "batch_norm_finalize_f32",
                    "contrib",
                    b.len(),
                    2 * c,
                )?;
                (Some(b), w)
            }
            None => (None, 0.0),
        };
        let args = Args::new(&self.finalize, stream)
            .input("partials", partial, len)?
            .int("splits", splits)?
            .int("rows", shape.rows)?
            .int("channels", c)?
            .output("mean", &mut saved.mean, c)?
            .output("invstd", &mut saved.invstd, c)?;
        let args = match contrib {
            Some(b) => args.output("contrib", b, 2 * c)?,
            None => args.address(0),
        }
        .float(weight);
        // SAFETY: batch_norm_finalize_f32(const float* partial, int splits, int rows, int c,
        // float* mean, float* invstd, float* contrib (nullable, 2c), float weight).
        unsafe { args.launch(finalize_grid(c)) }
    }

    /// Eval mode: normalised with the running statistics (`saved` receives them as mean and
    /// invstd).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_eval<T: Element, G: DevicePtr<f32>>(
        &self,
        stream: &CudaStream,
        shape: NormShape,
        x: &impl DevicePtr<T>,
        affine: Affine<'_, G>,
        running: (&impl DevicePtr<f32>, &impl DevicePtr<f32>),
        y: &mut impl DevicePtrMut<T>,
        saved: &mut Saved,
        relu: bool,
    ) -> Result<()> {
        shape.check("eval forward")?;
        let c = shape.channels;
        let args = Args::new(&self.eval_stats, stream)
            .input("running_mean", running.0, c)?
            .input("running_var", running.1, c)?
            .output("mean", &mut saved.mean, c)?
            .output("invstd", &mut saved.invstd, c)?
            .int("channels", c)?;
        // SAFETY: batch_norm_eval_stats_f32(const float*, const float*, float*, float*, int
        // c); every buffer holds c.
        unsafe { args.launch(elementwise(c))? };
        self.apply(stream, shape, x, affine, y, saved, relu)
    }

    #[allow(clippy::too_many_arguments)]
    fn apply<T: Element, G: DevicePtr<f32>>(
        &self,
        stream: &CudaStream,
        shape: NormShape,
        x: &impl DevicePtr<T>,
        affine: Affine<'_, G>,
        y: &mut impl DevicePtrMut<T>,
        saved: &Saved,
        relu: bool,
    ) -> Result<()> {
        let (n, c) = (shape.len(), shape.channels);
        let vec = vector_width::<T>(c, &[ptr(x, stream), ptr_mut(y, stream)]);
        let args = Args::new(by_dtype::<T>(&self.apply), stream)
            .input("x", x, n)?
            .output("y", y, n)?
            .input("mean", &saved.mean, c)?
            .input("invstd", &saved.invstd, c)?
            .input("gamma", affine.gamma, c)?
            .input("beta", affine.beta, c)?
            .long(n)
            .int("channels", c)?
            .int("relu", usize::from(relu))?
            .int("vec", vec)?;
        // SAFETY: batch_norm_apply_<dtype>(const T* x, T* y, const float* mean, invstd, gamma,
        // beta, long long n, int c, int relu, int vec); x and y hold n, the rest c; vec
        // divides c and both addresses' alignment in values.
        unsafe { args.launch(shape.channel_grid(vec)) }
    }

    /// `running = (1 - 0.1) running + 0.1 batch` over the first `n` values: the running
    /// statistics moved by the (summed) contributions of the train-mode forwards.
    pub fn update_running(
        &self,
        stream: &CudaStream,
        running: &mut impl DevicePtrMut<f32>,
        batch: &impl DevicePtr<f32>,
        n: usize,
    ) -> Result<()> {
        let args = Args::new(&self.running, stream)
            .output("running", running, n)?
            .input("batch", batch, n)?
            .long(n)
            .float(cpu::MOMENTUM as f32);
        // SAFETY: batch_norm_running_f32(float* running, const float* batch, long long n,
        // float momentum); both hold n.
        unsafe { args.launch(elementwise(n)) }
    }

    /// The train-mode backward from the forward's input `x`, statistics `saved` and output
    /// gradient `dy` (masked where the fused ReLU's output `relu_out` is not positive, when
    /// given): `dgamma`, `dbeta` (overwritten) and `dx`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Element, D: DevicePtr<f32> + DevicePtrMut<f32>, W: Workspace>(
        &self,
        stream: &CudaStream,
        shape: NormShape,
        x: &impl DevicePtr<T>,
        dy: &impl DevicePtr<T>,
        relu_out: Option<&impl DevicePtr<T>>,
        saved: &Saved,
        gamma: &impl DevicePtr<f32>,
        (dgamma, dbeta): (&mut D, &mut D),
        dx: &mut impl DevicePtrMut<T>,
        workspace: &mut W,
    ) -> Result<()> {
        let (x_dy, rows) = ((x, dy, relu_out), shape.rows);
        self.backward_sums(stream, shape, x_dy, saved, (dgamma, dbeta), workspace)?;
        let sums = (&*dgamma, &*dbeta, rows);
        self.backward_input(stream, shape, x_dy, saved, gamma, sums, dx)
    }

    /// The backward's reductions over this GPU's rows: `dgamma = sum g xhat` and `dbeta =
    /// sum g` (overwritten), `g` being `dy` masked by the fused ReLU's output when given.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub fn backward_sums<T: Element, D: DevicePtrMut<f32>, R: DevicePtr<T>>(
        &self,
        stream: &CudaStream,
        shape: NormShape,
        (x, dy, relu_out): (&impl DevicePtr<T>, &impl DevicePtr<T>, Option<&R>),
        saved: &Saved,
        (dgamma, dbeta): (&mut D, &mut D),
        workspace: &mut impl Workspace,
    ) -> Result<()> {
        shape.check("backward")?;
        let (n, c) = (shape.len(), shape.channels);
        let (splits, per) = shape.splits();
        let args = Args::new(by_dtype::<T>(&self.backward_reduce), stream)
            .input("x", x, n)?
            .input("dy", dy, n)?
            .optional("relu output", relu_out, n)?
            .input("mean", &saved.mean, c)?
            .input("invstd", &saved.invstd, c)?
            .output("workspace", workspace, shape.workspace_len())?
            .int("rows", shape.rows)?
            .int("channels", c)?
            .int("rows per split", per)?;
        // SAFETY: batch_norm_backward_reduce_<dtype>(const T* x, const T* dy, const T* y
        // (nullable), const float* mean, invstd, float* partial, int rows, int c, int
        // per_split) on the reduction grid.
        unsafe { args.launch(shape.reduction_grid())? };
        let args = Args::new(&self.backward_finalize, stream)
            .input("workspace", &*workspace, shape.workspace_len())?
            .int("splits", splits)?
            .int("channels", c)?
            .output("dgamma", dgamma, c)?
            .output("dbeta", dbeta, c)?;
        // SAFETY: batch_norm_backward_finalize_f32(const float* partial, int splits, int c,
        // float* dgamma, float* dbeta).
        unsafe { args.launch(finalize_grid(c)) }
    }

    /// `dx` from the sums `dgamma` and `dbeta` over `count` rows: this GPU's
    /// ([`backward_sums`](Self::backward_sums), `count = shape.rows`), or the step's
    /// (synchronised batch norm: every GPU's sums added, over the step's rows).
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub fn backward_input<T: Element, R: DevicePtr<T>>(
        &self,
        stream: &CudaStream,
        shape: NormShape,
        (x, dy, relu_out): (&impl DevicePtr<T>, &impl DevicePtr<T>, Option<&R>),
        saved: &Saved,
        gamma: &impl DevicePtr<f32>,
        (dgamma, dbeta, count): (&impl DevicePtr<f32>, &impl DevicePtr<f32>, usize),
        dx: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        shape.check("backward")?;
        let (n, c) = (shape.len(), shape.channels);
        let mut addrs = vec![ptr(x, stream), ptr(dy, stream), ptr_mut(dx, stream)];
        addrs.extend(relu_out.map(|r| ptr(r, stream)));
        let vec = vector_width::<T>(c, &addrs);
        let args = Args::new(by_dtype::<T>(&self.backward_apply), stream)
            .input("x", x, n)?
            .input("dy", dy, n)?
            .optional("relu output", relu_out, n)?
            .output("dx", dx, n)?
            .input("mean", &saved.mean, c)?
            .input("invstd", &saved.invstd, c)?
            .input("gamma", gamma, c)?
            .input("dgamma", dgamma, c)?
            .input("dbeta", dbeta, c)?
            .int("rows", shape.rows)?
            .int("channels", c)?
            .int("count", count)?
            .int("vec", vec)?;
        // SAFETY: batch_norm_backward_apply_<dtype>(const T* x, const T* dy, const T* y
        // (nullable), T* dx, const float* mean, invstd, gamma, dgamma, dbeta, int rows, int
        // c, int count, int vec); the activations hold rows x c, the rest c; vec divides c
        // and every activation's alignment in values.
        unsafe { args.launch(shape.channel_grid(vec)) }
    }
}
