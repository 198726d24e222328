//! One model replica on one GPU: its parameters, gradients and optimizer state (flat f32
//! vectors in the [`Layout`](crate::train::models::Layout) order), the shard's input staged through
//! page-locked memory, the model's buffers (batch norm's running statistics), and the
//! model's forward/backward pass ([`MlpNet`] here, the ViT in [`crate::train::gpu::vit`], the
//! CNNs in [`crate::train::gpu::cnn`]): the linear layers' GEMMs through cuBLASLt ([`crate::train::gpu::linear`], in the
//! replica's precision), attention's through cuBLAS ([`crate::train::gpu::blas`]), the rest through our
//! kernels.

use std::any::Any;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, PinnedHostSlice,
    ValidAsZeroBits,
};
use half::bf16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::base::Precision;
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::Gpu;
use crate::kernels::allreduce::AllreduceKernels;
use crate::kernels::bias_grad::BiasGradKernels;
use crate::kernels::elementwise::ElementwiseKernels;
use crate::kernels::optimizer::OptimizerKernels;
use crate::kernels::softmax_cross_entropy::SoftmaxCrossEntropyKernels;
use crate::train::data::batches::Batch;
use crate::train::gpu::cnn::CnnNet;
use crate::train::gpu::linear::{GemmEpilogue, Linear};
use crate::train::gpu::vit::VitNet;
use crate::train::models::ModelSpec;
use crate::train::models::cnn::Graph;
use crate::train::models::cpu::ShardStats;
use crate::train::optim::{Optimizer, Step};
use crate::train::run::engine::State;

/// What a model's pass gets: the device, its stream's cuBLAS handle and linear-layer GEMMs, the
/// parameters, the gradient buffer to fill (the parameters' gradient, then the buffers'
/// contributions), the shard (`rows` samples) and its labels, the loss scale, the stats buffer
/// the loss kernel adds to, the step's dropout seed, and synchronised batch norm's exchange
/// (`None`: each GPU normalises its own shard).
pub struct Pass<'a> {
    pub gpu: &'a Gpu,
    pub blas: &'a CudaBlas,
    pub linear: &'a mut Linear,
    pub params: &'a CudaSlice<f32>,
    pub grads: &'a mut CudaSlice<f32>,
    pub input: Input<'a>,
    pub labels: &'a CudaSlice<u32>,
    pub rows: usize,
    pub scale: f32,
    pub stats: &'a mut CudaSlice<f32>,
    pub seed: u64,
    pub sync: Option<&'a dyn NormSync>,
}

/// The shard's features on the device, as [`Images`] staged them.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    F32(&'a CudaSlice<f32>),
    Bf16(&'a CudaSlice<bf16>),
}

impl<'a> Input<'a> {
    /// The f32 features, for the models whose shards are always staged in f32 (the MLP and
    /// the ViT: [`Images::for_net`]).
    pub fn f32(self, model: &str) -> Result<&'a CudaSlice<f32>> {
        match self {
            Input::F32(x) => Ok(x),
            Input::Bf16(_) => Err(Error::invalid(model, "a shard staged in bf16, not f32")),
        }
    }
}

/// Synchronised batch norm's exchange among the GPUs of a step: each batch norm sums its
/// moments through it before normalising, and its backward sums before the input's gradient
/// (the CPU's `forward_backward_synced` does the same over shards).
pub trait NormSync {
    /// Images in the whole step (every GPU's shard).
    fn images(&self) -> usize;
    /// `buf[..len]` summed over the step's GPUs, into every GPU's `buf`, in the same order
    /// on each (so every GPU normalises with bit-identical statistics). `buf` is the
    /// replica's [`Replica::norm_buffer`].
    fn sum(&self, gpu: &Gpu, buf: &mut CudaSlice<f32>, len: usize) -> Result<()>;
}

/// A shard's features on their way to the device: staged through page-locked memory (one slot
/// per device buffer, so the next step's shard can be staged while this one's copy is pending)
/// into one of two device buffers. f32 as the datasets give them, except for a bf16 CNN: its first copy
/// rounds the image to bf16 anyway (to nearest even, as [`crate::kernels::cast`] does), so its
/// shards are rounded on the host while they are staged, with the same values on the device
/// and half the bytes to stage and upload (AlexNet at 224: 19.3 MB a step instead of 38.5).
trait Images: Send {
    /// Device buffers of at least `len` values (no copy into them may be pending).
    fn reserve(&mut self, s: &Arc<CudaStream>, len: usize) -> Result<()>;
    /// Page-locked staging slot `b` (one per device buffer) of exactly `len` values (a copy
    /// moves a whole pinned buffer; no copy from it may be pending).
    fn fit_staging(&mut self, gpu: &Gpu, b: usize, len: usize) -> Result<()>;
    /// Staging slot `b` (sized by `fit_staging`), moved out so that another thread can fill
    /// it while this one enqueues work; [`put_slot`](Self::put_slot) takes it back.
    fn take_slot(&mut self, b: usize) -> Box<dyn Slot>;
    fn put_slot(&mut self, b: usize, slot: Box<dyn Slot>);
    /// Fills slot `b` with `x` on this thread ([`Slot::fill`]).
    fn fill(&mut self, b: usize, x: &[f32]) -> Result<()>;
    /// Enqueues slot `b`'s copy into device buffer `b` on `c`.
    fn upload(&mut self, c: &Arc<CudaStream>, b: usize) -> Result<()>;
    fn input(&self, b: usize) -> Input<'_>;
    /// Bytes of the two device buffers.
    fn device_bytes(&self) -> usize;
}

/// A page-locked staging buffer of features, in the element type they are uploaded as.
trait Slot: Send {
    /// Writes `x` (as many values as the slot holds) into the slot, in parallel: one thread
    /// cannot move tens of MB a step fast enough.
    fn fill(&mut self, x: &[f32]) -> Result<()>;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<E: Staged> Slot for PinnedHostSlice<E> {
    fn fill(&mut self, x: &[f32]) -> Result<()> {
        self.as_mut_slice()
            .cuda(|| "waiting for staging".into())?
            .par_chunks_mut(1 << 16)
            .zip(x.par_chunks(1 << 16))
            .for_each(|(d, s)| E::convert(d, s));
        Ok(())
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// An element features are staged as.
trait Staged: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + 'static {
    fn convert(dst: &mut [Self], src: &[f32]);
    fn input(x: &CudaSlice<Self>) -> Input<'_>;
}

impl Staged for f32 {
    fn convert(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    fn input(x: &CudaSlice<f32>) -> Input<'_> {
        Input::F32(x)
    }
}

impl Staged for bf16 {
    fn convert(dst: &mut [bf16], src: &[f32]) {
        dst.convert_from_f32_slice(src);
    }
    fn input(x: &CudaSlice<bf16>) -> Input<'_> {
        Input::Bf16(x)
    }
}

struct StagedImages<E: Staged> {
    slots: [Option<PinnedHostSlice<E>>; 2],
    device: [CudaSlice<E>; 2],
}

impl<E: Staged> StagedImages<E> {
    fn boxed(s: &Arc<CudaStream>) -> Result<Box<dyn Images>> {
        let one = || s.alloc_zeros::<E>(1).cuda(|| "allocating".into());
        Ok(Box::new(StagedImages {
            slots: [None, None],
            device: [one()?, one()?],
        }))
    }
}

impl<E: Staged> Images for StagedImages<E> {
    fn reserve(&mut self, s: &Arc<CudaStream>, len: usize) -> Result<()> {
        for d in &mut self.device {
            *d = s
                .alloc_zeros::<E>(len)
                .cuda(|| "allocating the input".into())?;
        }
        Ok(())
    }

    fn fit_staging(&mut self, gpu: &Gpu, b: usize, len: usize) -> Result<()> {
        if self.slots[b].as_ref().is_some_and(|p| p.len() == len) {
            return Ok(());
        }
        self.slots[b] = None;
        // SAFETY: a slot is written in full before each copy reads it.
        let pinned = unsafe { gpu.ctx().alloc_pinned::<E>(len) }
            .cuda(|| "allocating pinned staging".into())?;
        self.slots[b] = Some(pinned);
        Ok(())
    }

    fn take_slot(&mut self, b: usize) -> Box<dyn Slot> {
        Box::new(self.slots[b].take().expect("fit_staging sizes the slot"))
    }

    fn fill(&mut self, b: usize, x: &[f32]) -> Result<()> {
        let slot = self.slots[b].as_mut().expect("fit_staging sizes the slot");
        Slot::fill(slot, x)
    }

    fn put_slot(&mut self, b: usize, slot: Box<dyn Slot>) {
        let slot = slot
            .into_any()
            .downcast()
            .expect("a slot taken from these images");
        self.slots[b] = Some(*slot);
    }

    fn upload(&mut self, c: &Arc<CudaStream>, b: usize) -> Result<()> {
        let pinned = self.slots[b].as_ref().expect("fit_staging sizes the slot");
        c.memcpy_htod(pinned, &mut self.device[b].slice_mut(..pinned.len()))
            .cuda(|| "copying the shard to the GPU".into())
    }

    fn input(&self, b: usize) -> Input<'_> {
        E::input(&self.device[b])
    }

    fn device_bytes(&self) -> usize {
        self.device.iter().map(CudaSlice::num_bytes).sum()
    }
}

enum Net {
    Mlp(Box<MlpNet>),
    Vit(Box<VitNet>),
    Cnn(Box<CnnNet>),
}

/// Steps whose stats may be pending at once: the trainer enqueues one step ahead.
const STATS_SLOTS: usize = 2;

pub struct Replica {
    gpu: Arc<Gpu>,
    blas: CudaBlas,
    linear: Linear,
    optimizer: Optimizer,
    optimizer_kernels: OptimizerKernels,
    features: usize,
    params: CudaSlice<f32>,
    /// The parameters' gradient, then the contributions to the buffers (summed over the
    /// GPUs with it): [`exchange_len`](Self::exchange_len) values.
    grads: CudaSlice<f32>,
    state: Vec<CudaSlice<f32>>,
    /// The model's buffers ([`ModelSpec::buffers`]); `None` for models without any.
    buffers: Option<CudaSlice<f32>>,
    /// The step's dropout seed, for the next pass.
    seed: u64,
    /// Samples each input and label buffer holds.
    capacity: usize,
    /// The shard's features: page-locked staging and two device buffers ([`Images`]).
    images: Box<dyn Images>,
    /// The next step's shard if [`staging_ahead`](Self::staging_ahead) staged it into slot
    /// `1 - current`: its batch and samples. Weak, so the trainer can recycle a batch this
    /// device has no step of; the allocation it keeps means no other batch has its address.
    ahead: Option<(Weak<Batch>, Range<usize>)>,
    /// Two device buffers for the shard (features in `images`, labels): the next shard is copied into one on
    /// `copy_stream` while the pass before may still read the other, so a large batch's upload
    /// (AlexNet at 224: 38.5 MB a step) does not queue behind the step before it.
    labels: [CudaSlice<u32>; 2],
    /// The buffer the next pass reads: the one the last shard went to.
    current: usize,
    copy_stream: Arc<CudaStream>,
    /// Per buffer, recorded on `copy_stream` after its shard's copy: the pass waits on it, and
    /// the staging buffers are not rewritten or freed before it. (Our contexts run without
    /// cudarc's event tracking, so a pinned slice's own event is never recorded.)
    copied: [CudaEvent; 2],
    /// Per buffer, recorded on the compute stream after the pass that read it: the next copy
    /// into it waits on it.
    consumed: [CudaEvent; 2],
    stats: CudaSlice<f32>,
    /// Page-locked staging for the shard's labels (the features' is in `images`), so the
    /// copy to the device is a real async DMA.
    pinned_y: Option<PinnedHostSlice<u32>>,
    /// Rows in the last shard, for [`stats`](Self::stats).
    last_rows: usize,
    /// Page-locked landing slots for the stats of steps whose read-back is deferred
    /// ([`stats_later`](Self::stats_later)), and the slots (with their shard's rows) not yet
    /// taken, oldest first.
    stats_slots: [(PinnedHostSlice<f32>, CudaEvent); STATS_SLOTS],
    stats_pending: VecDeque<(usize, usize)>,
    /// The host's time on the steps so far ([`HostTimes`]), the parts of the step being
    /// enqueued, and how many steps were enqueued.
    host: HostTimes,
    current_step: HostTimes,
    steps_enqueued: u64,
    net: Net,
}

/// The host time a replica's thread spent on its steps after its first (whose cuDNN planning
/// and first allocations would swamp the rest): enqueueing each step's work, waits inside it
/// included, and of that the parts spent copying the shard into page-locked memory, waiting
/// for the previous shard's copy to the device (before the staging buffer is rewritten), and
/// enqueueing the forward and backward passes; the rest is the exchange, the optimizer and
/// the stats' read-back. When enqueueing takes as long as the GPU's step, the host, or what
/// it waits for, sets the pace, and the parts say which.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostTimes {
    pub steps: u64,
    pub enqueue: Duration,
    pub staging: Duration,
    pub waiting: Duration,
    pub pass: Duration,
    /// Staging the next step's shard on another thread, off the step's path
    /// ([`Replica::staging_ahead`]), and the steps whose shard was staged so.
    pub ahead: Duration,
    pub staged_ahead: u64,
}

/// [`HostTimes`] in milliseconds a step.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct HostMs {
    pub enqueue: f64,
    pub staging: f64,
    pub waiting: f64,
    pub pass: f64,
    pub ahead: f64,
    /// Of the steps counted, the fraction whose shard was staged ahead.
    pub staged_ahead: f64,
}

impl HostTimes {
    /// Milliseconds a step; `None` before a step was counted.
    pub fn per_step_ms(&self) -> Option<HostMs> {
        let per = |d: Duration| d.as_secs_f64() * 1e3 / self.steps as f64;
        (self.steps > 0).then(|| HostMs {
            enqueue: per(self.enqueue),
            staging: per(self.staging),
            waiting: per(self.waiting),
            pass: per(self.pass),
            ahead: per(self.ahead),
            staged_ahead: self.staged_ahead as f64 / self.steps as f64,
        })
    }

    fn add(&mut self, other: &HostTimes) {
        self.steps += other.steps;
        self.enqueue += other.enqueue;
        self.staging += other.staging;
        self.waiting += other.waiting;
        self.pass += other.pass;
        self.ahead += other.ahead;
        self.staged_ahead += other.staged_ahead;
    }
}

impl Replica {
    /// A replica of `model` with parameters `params` and optimizer state `state` (one vector
    /// per [`Optimizer::state_slots`]), its linear layers computing in `precision`.
    pub fn new(
        gpu: Arc<Gpu>,
        model: &ModelSpec,
        optimizer: Optimizer,
        precision: Precision,
        params: &[f32],
        state: &[Vec<f32>],
    ) -> Result<Replica> {
        let net = match model {
            ModelSpec::Mlp { dims } => Net::Mlp(Box::new(MlpNet::new(&gpu, dims.clone())?)),
            ModelSpec::Vit(c) => Net::Vit(Box::new(VitNet::new(&gpu, *c)?)),
            ModelSpec::Cnn(c) => {
                let graph = crate::train::models::cnn::graph(*c);
                Net::Cnn(Box::new(CnnNet::new(&gpu, graph, precision)?))
            }
        };
        let model = (net, model.features(), model.initial_buffers());
        Replica::with_net(gpu, model, optimizer, precision, params, state)
    }

    /// A replica of a CNN given as its graph (e.g. [`Graph::without_dropout`]'s, for a
    /// comparison with PyTorch); its buffers start at [`Graph::initial_buffers`].
    pub fn for_graph(
        gpu: Arc<Gpu>,
        graph: Graph,
        optimizer: Optimizer,
        precision: Precision,
        params: &[f32],
        state: &[Vec<f32>],
    ) -> Result<Replica> {
        let features = graph.shapes[0].iter().product();
        let buffers = graph.initial_buffers();
        let net = Net::Cnn(Box::new(CnnNet::new(&gpu, graph, precision)?));
        Replica::with_net(
            gpu,
            (net, features, buffers),
            optimizer,
            precision,
            params,
            state,
        )
    }

    /// The replica around a model's pass, its input features and initial buffers.
    fn with_net(
        gpu: Arc<Gpu>,
        (net, features, buffers): (Net, usize, Vec<f32>),
        optimizer: Optimizer,
        precision: Precision,
        params: &[f32],
        state: &[Vec<f32>],
    ) -> Result<Replica> {
        let s = gpu.stream().clone();
        let blas = CudaBlas::new(s.clone()).map_err(|e| Error::Blas {
            what: format!("creating a cuBLAS handle on cuda:{}", gpu.ordinal()),
            source: e,
        })?;
        let up = |v: &[f32]| {
            s.clone_htod(v)
                .cuda(|| format!("uploading {} values", v.len()))
        };
        let one = |n: usize| s.alloc_zeros::<f32>(n).cuda(|| "allocating".into());
        let event = || {
            gpu.ctx()
                .new_event(None)
                .cuda(|| "creating an event".into())
        };
        let slot = || {
            // SAFETY: a slot is read only after a copy into it has completed (its event).
            let host = unsafe { gpu.ctx().alloc_pinned::<f32>(2) }
                .cuda(|| "allocating stats slots".into())?;
            Ok::<_, Error>((host, event()?))
        };
        let stats_slots = [slot()?, slot()?];
        let labels = || s.alloc_zeros::<u32>(1).cuda(|| "allocating".into());
        let images = match (&net, precision) {
            (Net::Cnn(_), Precision::Bf16) => StagedImages::<bf16>::boxed(&s)?,
            _ => StagedImages::<f32>::boxed(&s)?,
        };
        let copy_stream = gpu
            .ctx()
            .new_stream()
            .cuda(|| format!("creating cuda:{}'s copy stream", gpu.ordinal()))?;
        Ok(Replica {
            blas,
            linear: Linear::new(gpu.clone(), precision)?,
            optimizer,
            optimizer_kernels: OptimizerKernels::load(&gpu)?,
            features,
            params: up(params)?,
            grads: one(params.len() + buffers.len())?,
            buffers: if buffers.is_empty() {
                None
            } else {
                Some(up(&buffers)?)
            },
            seed: 0,
            state: state.iter().map(|v| up(v)).collect::<Result<Vec<_>>>()?,
            capacity: 0,
            images,
            ahead: None,
            labels: [labels()?, labels()?],
            current: 0,
            copy_stream,
            copied: [event()?, event()?],
            consumed: [event()?, event()?],
            stats: one(2)?,
            pinned_y: None,
            last_rows: 0,
            stats_slots,
            stats_pending: VecDeque::new(),
            host: HostTimes::default(),
            current_step: HostTimes::default(),
            steps_enqueued: 0,
            net,
            gpu,
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Values the all-reduce sums: the parameters' gradient and the buffers' contributions.
    pub fn exchange_len(&self) -> usize {
        self.grads.len()
    }

    /// The dropout seed of the next pass ([`crate::train::models::cnn::step_seed`]).
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    /// The gradient buffer's device address, for peers' all-reduce kernels.
    pub fn grads_ptr(&self) -> u64 {
        let (p, _) = self.grads.device_ptr(self.gpu.stream());
        p
    }

    pub fn grads_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.grads
    }

    /// Waits for the replica's pending work, then gives the device addresses of its parameters,
    /// optimizer state vectors and buffers (in that order), for a stale peer to copy from
    /// ([`copy_state_from`](Self::copy_state_from)).
    pub fn state_ptrs(&self) -> Result<Vec<u64>> {
        self.gpu.sync()?;
        let s = self.gpu.stream();
        Ok(std::iter::once(&self.params)
            .chain(&self.state)
            .chain(&self.buffers)
            .map(|b| b.device_ptr(s).0)
            .collect())
    }

    /// Overwrites parameters, optimizer state and buffers with a peer's, device to device, and
    /// waits for the copy. `src` is the peer's [`state_ptrs`](Self::state_ptrs).
    ///
    /// # Safety
    /// `src` must come from a replica of the same model and optimizer whose memory this GPU can
    /// reach (the same GPU, or a peer with peer access enabled), and that replica must not
    /// write those buffers until this returns.
    pub unsafe fn copy_state_from(&mut self, src: &[u64]) -> Result<()> {
        let own = 1 + self.state.len() + usize::from(self.buffers.is_some());
        if src.len() != own {
            return Err(Error::invalid(
                "refreshing a replica",
                format!(
                    "{} source buffers for {own} parameter, optimizer and model buffers",
                    src.len(),
                ),
            ));
        }
        let s = self.gpu.stream().clone();
        let copy = AllreduceKernels::load(&self.gpu)?;
        for (dst, &from) in std::iter::once(&mut self.params)
            .chain(self.state.iter_mut())
            .chain(self.buffers.iter_mut())
            .zip(src)
        {
            let len = dst.len();
            let (to, _) = dst.device_ptr_mut(&s);
            // SAFETY: `dst` is this GPU's and holds `len` values, as does the source (same
            // model and optimizer, caller's guarantee), which the caller keeps unwritten.
            unsafe { copy.copy_chunk(&s, to, from, (0, len))? };
        }
        self.gpu.sync()
    }

    /// Makes staging slot `b` and the labels' staging exactly `rows` samples long (a copy moves
    /// a whole pinned buffer) and the device inputs at least that long. Shard sizes change only
    /// with the DR, so this reallocates rarely.
    fn stage(&mut self, rows: usize, b: usize) -> Result<()> {
        let s = self.gpu.stream().clone();
        if rows > self.capacity {
            // No copy may still write the old buffers; passes that read them are on the
            // compute stream, which frees them after those passes (they were allocated on it).
            self.copy_stream
                .synchronize()
                .cuda(|| "waiting for the shard copies".into())?;
            self.images.reserve(&s, rows * self.features)?;
            for labels in &mut self.labels {
                *labels = s
                    .alloc_zeros::<u32>(rows)
                    .cuda(|| "allocating labels".into())?;
            }
            self.capacity = rows;
        }
        // The caller waited for the pending copies from the staging buffers.
        self.images
            .fit_staging(&self.gpu, b, rows * self.features)?;
        if self.pinned_y.as_ref().is_some_and(|p| p.len() == rows) {
            return Ok(());
        }
        // Drop the old buffer first.
        self.pinned_y = None;
        // SAFETY: the staging buffer is written in full before each copy reads it.
        let pinned = unsafe { self.gpu.ctx().alloc_pinned::<u32>(rows) }
            .cuda(|| "allocating pinned staging".into())?;
        self.pinned_y = Some(pinned);
        Ok(())
    }

    /// Enqueues forward and backward over a shard (`x`: `rows x features`), leaving the
    /// gradient of `scale * sum(loss)` in the gradient buffer. An empty shard zeroes it.
    pub fn forward_backward(&mut self, x: &[f32], labels: &[u32], scale: f32) -> Result<()> {
        self.load_shard(x, labels)?;
        self.pass(scale)
    }

    /// The buffer a CNN's synchronised batch norms exchange through [`NormSync::sum`] (its
    /// address is fixed for the replica's life), and how many exchanges one pass makes;
    /// `None` for models without batch norm.
    pub fn norm_buffer(&mut self) -> Option<(&mut CudaSlice<f32>, usize)> {
        match &mut self.net {
            Net::Cnn(net) => net.norm_buffer(),
            _ => None,
        }
    }

    /// Copies a shard (`x`: `rows x features`) through the page-locked staging buffers and
    /// enqueues its copy to the device on the copy stream, into the input buffer the last pass
    /// did not read. Split from [`pass`](Self::pass) so that `benches/train_step.rs` can time
    /// the two.
    pub fn load_shard(&mut self, x: &[f32], labels: &[u32]) -> Result<()> {
        self.ahead = None;
        self.load(x, labels, false)
    }

    /// [`load_shard`](Self::load_shard) of `batch`'s samples `shard`, whose features need no
    /// staging when [`staging_ahead`](Self::staging_ahead) staged them during the step before.
    pub fn load_from(&mut self, batch: &Arc<Batch>, shard: Range<usize>) -> Result<()> {
        let f = self.features;
        let x = batch
            .features
            .get(shard.start * f..shard.end * f)
            .ok_or_else(|| {
                Error::invalid(
                    "training step",
                    format!(
                        "{} feature values for {} samples of {f}",
                        batch.features.len(),
                        batch.len()
                    ),
                )
            })?;
        let staged = matches!(self.ahead.take(), Some((b, r)) if b.as_ptr() == Arc::as_ptr(batch) && r == shard);
        self.load(x, &batch.labels[shard], staged)
    }

    /// Loads a shard; `staged`: its features are in the slot already.
    fn load(&mut self, x: &[f32], labels: &[u32], staged: bool) -> Result<()> {
        let rows = labels.len();
        if x.len() != rows * self.features {
            return Err(Error::invalid(
                "loading a shard",
                format!(
                    "{} feature values for {rows} samples of {}",
                    x.len(),
                    self.features
                ),
            ));
        }
        self.last_rows = rows;
        if rows == 0 {
            return Ok(());
        }
        // The previous shard's copies may still be queued (the trainer runs a step ahead).
        let waiting = Instant::now();
        self.copied[self.current]
            .synchronize()
            .cuda(|| "waiting for the previous shard's copy".into())?;
        self.current_step.waiting += waiting.elapsed();
        let next = 1 - self.current;
        self.stage(rows, next)?;
        let py = self.pinned_y.as_mut().expect("stage allocates the staging");
        let started = Instant::now();
        if staged {
            self.current_step.staged_ahead += 1;
        } else {
            self.images.fill(next, x)?;
        }
        py.as_mut_slice()
            .cuda(|| "waiting for staging".into())?
            .copy_from_slice(labels);
        self.current_step.staging += started.elapsed();
        let c = &self.copy_stream;
        // The pass that last read this buffer (queued two shards ago) must be done with it.
        c.wait(&self.consumed[next])
            .cuda(|| "ordering the shard's copy after the pass before".into())?;
        self.images.upload(c, next)?;
        c.memcpy_htod(&*py, &mut self.labels[next].slice_mut(..rows))
            .cuda(|| "copying labels to the GPU".into())?;
        self.copied[next]
            .record(c)
            .cuda(|| "recording the shard's copy".into())?;
        self.current = next;
        Ok(())
    }

    /// Runs `work` (the rest of a step: its pass, exchange and update) while another thread
    /// stages `ahead`, the next step's batch and this replica's samples of it (the DR as now),
    /// into the slot the next [`load_from`](Self::load_from) fills; that load then has nothing
    /// to stage when the batch and samples are the same. Staging a large shard (AlexNet at
    /// 224: 1.5 ms) is then off the host's path through the step. `work` always runs (a
    /// step's devices meet at barriers inside it), and its error comes first.
    pub fn staging_ahead<R>(
        &mut self,
        ahead: Option<(&Arc<Batch>, Range<usize>)>,
        work: impl FnOnce(&mut Replica) -> Result<R>,
    ) -> Result<R> {
        self.ahead = None;
        let f = self.features;
        let Some((batch, shard, x)) = ahead.and_then(|(batch, shard)| {
            let x = batch.features.get(shard.start * f..shard.end * f)?;
            (!x.is_empty()).then_some((batch, shard, x))
        }) else {
            return work(self);
        };
        // The slot held the shard before this step's: its copy must be done before it is
        // rewritten (load_from waited for it unless this step's shard was empty).
        let b = 1 - self.current;
        let ready = self.copied[b]
            .synchronize()
            .cuda(|| "waiting for the previous shard's copy".into())
            .and_then(|()| self.images.fit_staging(&self.gpu, b, x.len()));
        if let Err(e) = ready {
            // `work` runs all the same: the step's other devices wait for this one at its
            // barriers.
            return work(self).and(Err(e));
        }
        let mut slot = self.images.take_slot(b);
        let (filled, done) = std::thread::scope(|s| {
            let filler = std::thread::Builder::new()
                .name("attnrt-staging".into())
                .spawn_scoped(s, || {
                    let started = Instant::now();
                    slot.fill(x).map(|()| started.elapsed())
                });
            let done = work(self);
            let filled = match filler {
                Ok(filler) => filler.join().unwrap_or_else(|_| {
                    Err(Error::invalid(
                        "staging the next shard",
                        "the staging thread panicked",
                    ))
                }),
                Err(e) => Err(Error::io("starting a thread to stage the next shard", e)),
            };
            (filled, done)
        });
        self.images.put_slot(b, slot);
        let done = done?;
        let took = filled?;
        self.current_step.ahead += took;
        self.ahead = Some((Arc::downgrade(batch), shard));
        Ok(done)
    }

    /// Counts a step whose work took `took` to enqueue on the host (its staging copy
    /// included) in [`host_times`](Self::host_times), from the second step on.
    pub fn record_step(&mut self, took: Duration) {
        let step = std::mem::take(&mut self.current_step);
        if self.steps_enqueued > 0 {
            self.host.add(&HostTimes {
                steps: 1,
                enqueue: took,
                ..step
            });
        }
        self.steps_enqueued += 1;
    }

    /// The host's time on the steps recorded so far ([`record_step`](Self::record_step)).
    pub fn host_times(&self) -> HostTimes {
        self.host
    }

    /// The stream the shards' copies to the device run on (for a benchmark's timing).
    pub fn copy_stream(&self) -> &Arc<CudaStream> {
        &self.copy_stream
    }

    /// Enqueues forward and backward over the shard [`load_shard`](Self::load_shard) loaded,
    /// with loss scale `scale`.
    pub fn pass(&mut self, scale: f32) -> Result<()> {
        self.pass_synced(scale, None)
    }

    /// As [`pass`](Self::pass), a CNN's batch norms normalising with the statistics of the
    /// whole step through `sync` when given.
    pub fn pass_synced(&mut self, scale: f32, sync: Option<&dyn NormSync>) -> Result<()> {
        let started = Instant::now();
        let enqueued = self.enqueue_pass(scale, sync);
        self.current_step.pass += started.elapsed();
        enqueued
    }

    fn enqueue_pass(&mut self, scale: f32, sync: Option<&dyn NormSync>) -> Result<()> {
        let rows = self.last_rows;
        let s = self.gpu.stream().clone();
        s.memset_zeros(&mut self.stats)
            .cuda(|| "zeroing stats".into())?;
        if rows == 0 {
            return s
                .memset_zeros(&mut self.grads)
                .cuda(|| "zeroing gradients".into());
        }
        let b = self.current;
        s.wait(&self.copied[b])
            .cuda(|| "waiting for the shard's copy".into())?;
        let pass = Pass {
            gpu: &self.gpu,
            blas: &self.blas,
            linear: &mut self.linear,
            params: &self.params,
            grads: &mut self.grads,
            input: self.images.input(b),
            labels: &self.labels[b],
            rows,
            scale,
            stats: &mut self.stats,
            seed: self.seed,
            sync,
        };
        match &mut self.net {
            Net::Mlp(net) => net.forward_backward(pass),
            Net::Vit(net) => net.forward_backward(pass),
            Net::Cnn(net) => net.forward_backward(pass),
        }?;
        self.consumed[b]
            .record(&s)
            .cuda(|| "recording the pass's read of its shard".into())
    }

    /// Waits for the step's work and returns the last shard's loss and correct count. Not
    /// while a deferred read-back ([`stats_later`](Self::stats_later)) is pending.
    pub fn stats(&mut self) -> Result<ShardStats> {
        if !self.stats_pending.is_empty() {
            return Err(Error::invalid(
                "reading stats",
                format!("{} deferred read-backs pending", self.stats_pending.len()),
            ));
        }
        self.stats_later()?;
        self.take_stats()
    }

    /// Enqueues the copy of the last shard's stats into a page-locked slot and returns at once:
    /// the host can enqueue the next step before this one's stats arrive, so the GPU does not
    /// wait for the host between steps. [`take_stats`](Self::take_stats) reads them.
    pub fn stats_later(&mut self) -> Result<()> {
        if self.stats_pending.len() == STATS_SLOTS {
            return Err(Error::invalid(
                "deferring a stats read-back",
                format!("{STATS_SLOTS} already pending"),
            ));
        }
        let slot = self
            .stats_pending
            .back()
            .map_or(0, |&(last, _)| (last + 1) % STATS_SLOTS);
        let s = self.gpu.stream();
        let (host, copied) = &mut self.stats_slots[slot];
        s.memcpy_dtoh(&self.stats, host)
            .cuda(|| "reading stats".into())?;
        copied
            .record(s)
            .cuda(|| "recording the stats copy".into())?;
        self.stats_pending.push_back((slot, self.last_rows));
        Ok(())
    }

    /// Waits for the oldest deferred stats (and so for every step enqueued before them) and
    /// returns them.
    pub fn take_stats(&mut self) -> Result<ShardStats> {
        let (slot, rows) = self
            .stats_pending
            .pop_front()
            .ok_or_else(|| Error::invalid("taking stats", "no read-back pending"))?;
        let (host, copied) = &self.stats_slots[slot];
        copied.synchronize().cuda(|| "waiting for stats".into())?;
        let v = host.as_slice().cuda(|| "reading stats".into())?;
        Ok(ShardStats {
            loss: f64::from(v[0]),
            correct: if rows == 0 { 0 } else { v[1] as u64 },
        })
    }

    /// Enqueues the buffers' update by the (summed) contributions after the gradient (batch
    /// norm's running statistics), then optimizer step `t` (from 1) with the gradient buffer as
    /// it is now.
    pub fn optimizer_step(&mut self, t: u64) -> Result<()> {
        self.update_buffers()?;
        let s = self.gpu.stream().clone();
        let k = &self.optimizer_kernels;
        match self.optimizer.at_step(t) {
            Step::Sgd(step) => k.sgd(&s, &mut self.params, &self.grads, &mut self.state[0], step),
            Step::AdamW(step) => {
                let (m, v) = self.state.split_at_mut(1);
                let mv = (&mut m[0], &mut v[0]);
                k.adamw(&s, &mut self.params, &self.grads, mv, step)
            }
        }
    }

    /// Enqueues the buffers' update by the contributions after the gradient (nothing for
    /// models without buffers).
    pub fn update_buffers(&mut self) -> Result<()> {
        let s = self.gpu.stream().clone();
        if let (Some(b), Net::Cnn(net)) = (&mut self.buffers, &self.net) {
            let n = self.params.len();
            let len = b.len();
            net.update_buffers(&s, b, &self.grads.slice(n..n + len))?;
        }
        Ok(())
    }

    /// Parameters, optimizer state and buffers, and the parameters' gradient, copied to the
    /// host.
    pub fn download(&self) -> Result<(State, Vec<f32>)> {
        let s = self.gpu.stream();
        let get = |b: &CudaSlice<f32>| s.clone_dtoh(b).cuda(|| "downloading state".into());
        let params = get(&self.params)?;
        let optimizer = self.state.iter().map(get).collect::<Result<Vec<_>>>()?;
        let mut grads = get(&self.grads)?;
        grads.truncate(params.len());
        let buffers = self
            .buffers
            .as_ref()
            .map(get)
            .transpose()?
            .unwrap_or_default();
        s.synchronize().cuda(|| "synchronising".into())?;
        Ok((
            State {
                params,
                optimizer,
                buffers,
            },
            grads,
        ))
    }

    /// Replaces parameters and optimizer state (resume), and the buffers when `buffers` has
    /// them (a state without buffers keeps the replica's).
    pub fn upload(&mut self, params: &[f32], state: &[Vec<f32>], buffers: &[f32]) -> Result<()> {
        let s = self.gpu.stream().clone();
        s.memcpy_htod(params, &mut self.params)
            .cuda(|| "uploading parameters".into())?;
        for (d, h) in self.state.iter_mut().zip(state) {
            s.memcpy_htod(h.as_slice(), d)
                .cuda(|| "uploading optimizer state".into())?;
        }
        if let Some(b) = &mut self.buffers
            && !buffers.is_empty()
        {
            if buffers.len() != b.len() {
                return Err(Error::invalid(
                    "uploading model buffers",
                    format!("{} values, expected {}", buffers.len(), b.len()),
                ));
            }
            s.memcpy_htod(buffers, b)
                .cuda(|| "uploading model buffers".into())?;
        }
        s.synchronize().cuda(|| "synchronising".into())
    }

    /// Only deterministic cuDNN algorithms from the next pass on (the CNNs; the other models'
    /// passes are deterministic already).
    pub fn set_deterministic(&mut self, deterministic: bool) {
        if let Net::Cnn(net) = &mut self.net {
            net.set_deterministic(deterministic);
        }
    }

    /// Whether a CNN's f32 convolutions may use cuDNN's FFT and Winograd algorithms from the
    /// next pass on ([`CnnNet::set_conv_transforms`]); the other models have none.
    pub fn set_conv_transforms(&mut self, transforms: bool) {
        if let Net::Cnn(net) = &mut self.net {
            net.set_conv_transforms(transforms);
        }
    }

    /// The device memory the replica holds, in bytes by what it is for: its state and shard
    /// buffers, then the CNNs' pass ([`CnnNet::held`]; the other models' passes are not
    /// itemised).
    pub fn held(&self) -> Vec<(&'static str, usize)> {
        let state = std::iter::once(&self.params)
            .chain(&self.state)
            .chain(&self.buffers)
            .map(CudaSlice::num_bytes)
            .sum::<usize>();
        let labels: usize = self.labels.iter().map(CudaSlice::num_bytes).sum();
        let shards = self.images.device_bytes() + labels;
        let mut held = vec![
            ("parameters, optimizer state and model buffers (f32)", state),
            ("gradient exchange buffer (f32)", self.grads.num_bytes()),
            ("shard input buffers (two)", shards),
        ];
        if let Net::Cnn(net) = &self.net {
            held.extend(net.held());
        }
        held
    }

    /// What cuDNN runs for each convolution (the CNNs; empty for the others).
    pub fn describe_convs(&self) -> Vec<String> {
        match &self.net {
            Net::Cnn(net) => net.describe_convs(),
            _ => Vec::new(),
        }
    }

    /// The last pass's forward values on the host, for the CNNs ([`CnnNet::forward_values`]).
    pub fn forward_values(&self) -> Option<Result<Vec<Option<Vec<f32>>>>> {
        match &self.net {
            Net::Cnn(net) => Some(net.forward_values(&self.gpu)),
            _ => None,
        }
    }

    /// The last pass's logits, for models that keep them on the device (the CNNs).
    pub fn logits(&self) -> Option<&CudaSlice<f32>> {
        match &self.net {
            Net::Cnn(net) => Some(net.logits()),
            _ => None,
        }
    }
}

impl Drop for Replica {
    /// Shard copies may still be queued on the copy stream: they must not outlive the staging
    /// and device buffers they read and write.
    fn drop(&mut self) {
        // Nothing to report to from a drop; a failed wait means the context is gone anyway.
        let _ = self.copy_stream.synchronize();
    }
}

/// The MLP's activations: `acts[l]` is layer `l`'s output (after ReLU but for the last), and
/// two gradient buffers of the widest layer, used in turns by the backward pass.
struct MlpNet {
    dims: Vec<usize>,
    capacity: usize,
    acts: Vec<CudaSlice<f32>>,
    dbuf: Vec<CudaSlice<f32>>,
    loss: SoftmaxCrossEntropyKernels,
    bias_grad: BiasGradKernels,
    elementwise: ElementwiseKernels,
}

impl MlpNet {
    fn new(gpu: &Gpu, dims: Vec<usize>) -> Result<MlpNet> {
        Ok(MlpNet {
            dims,
            capacity: 0,
            acts: Vec::new(),
            dbuf: Vec::new(),
            loss: SoftmaxCrossEntropyKernels::load(gpu)?,
            bias_grad: BiasGradKernels::load(gpu)?,
            elementwise: ElementwiseKernels::load(gpu)?,
        })
    }

    fn reserve(&mut self, gpu: &Gpu, rows: usize) -> Result<()> {
        if rows <= self.capacity {
            return Ok(());
        }
        let s = gpu.stream();
        let alloc = |n: usize| {
            s.alloc_zeros::<f32>(n)
                .cuda(|| format!("allocating {n} activations"))
        };
        self.acts = self.dims[1..]
            .iter()
            .map(|&d| alloc(rows * d))
            .collect::<Result<_>>()?;
        let widest = self.dims.iter().copied().max().unwrap_or(1);
        self.dbuf = vec![alloc(rows * widest)?, alloc(rows * widest)?];
        self.capacity = rows;
        Ok(())
    }

    fn forward_backward(&mut self, p: Pass) -> Result<()> {
        let (gpu, rows) = (p.gpu, p.rows);
        let input = p.input.f32("mlp")?;
        self.reserve(gpu, rows)?;
        let s = gpu.stream();
        let layers = self.dims.len() - 1;
        let mut offsets = Vec::with_capacity(layers);
        let mut at = 0;
        for w in self.dims.windows(2) {
            offsets.push((at, at + w[0] * w[1]));
            at += w[0] * w[1] + w[1];
        }
        for l in 0..layers {
            let (din, dout) = (self.dims[l], self.dims[l + 1]);
            let (wo, bo) = offsets[l];
            let (before, from) = self.acts.split_at_mut(l);
            let x = if l == 0 { input } else { &before[l - 1] };
            let b = p.params.slice(bo..bo + dout);
            let epilogue = if l + 1 < layers {
                GemmEpilogue::BiasRelu(b)
            } else {
                GemmEpilogue::Bias(b)
            };
            let w = p.params.slice(wo..bo);
            p.linear
                .forward(x, &w, epilogue, &mut from[0], rows, din, dout)?;
        }
        let classes = self.dims[layers];
        let (d0, d1) = self.dbuf.split_at_mut(1);
        let (mut dy, mut dx) = (&mut d0[0], &mut d1[0]);
        let logits = &self.acts[layers - 1];
        let shape = (rows, classes);
        self.loss
            .run(s, logits, p.labels, dy, p.stats, shape, p.scale)?;
        for l in (0..layers).rev() {
            let (din, dout) = (self.dims[l], self.dims[l + 1]);
            let (wo, bo) = offsets[l];
            let x = if l == 0 { input } else { &self.acts[l - 1] };
            // The first layer has no input gradient.
            let input = (l > 0).then(|| (p.params.slice(wo..bo), &mut *dx));
            let gw = &mut p.grads.slice_mut(wo..bo);
            p.linear.backward(x, &*dy, gw, input, rows, din, dout)?;
            let db = &mut p.grads.slice_mut(bo..bo + dout);
            self.bias_grad.run(s, &*dy, db, rows, dout)?;
            if l > 0 {
                self.elementwise.relu_backward(s, dx, x, rows * din)?;
                std::mem::swap(&mut dy, &mut dx);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_times_per_step() {
        assert_eq!(HostTimes::default().per_step_ms(), None);
        let ms = Duration::from_millis;
        let mut times = HostTimes::default();
        for _ in 0..4 {
            let step = HostTimes {
                steps: 1,
                enqueue: ms(10),
                staging: ms(6),
                waiting: ms(1),
                pass: ms(2),
                ahead: ms(3),
                staged_ahead: 1,
            };
            times.add(&step);
        }
        let per = times.per_step_ms().unwrap();
        let want = [10.0, 6.0, 1.0, 2.0, 3.0, 1.0];
        let got = [
            per.enqueue,
            per.staging,
            per.waiting,
            per.pass,
            per.ahead,
            per.staged_ahead,
        ];
        assert!(
            got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-9),
            "{per:?}"
        );
    }
}
