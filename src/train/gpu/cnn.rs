//! The CNNs' forward and backward pass on one GPU ([`CnnNet`]): the walker of
//! [`crate::train::models::cnn::cpu`] over the same [`Graph`] and the same flat parameters
//! (PyTorch's layouts, so checkpoints, `init_weights` and the optimizer are shared), layer for
//! layer on the ops of [`crate::kernels`]: convolutions on cuDNN ([`Conv2dKernels`]), the
//! linear layers through [`Linear`](crate::train::gpu::linear::Linear) (cuBLASLt), batch norm, pooling, dropout, the channel
//! copies and ReLU through our kernels.
//!
//! Activations are NHWC in the walker's type `T` ([`Storage`]): f32, or bf16 for
//! `precision = "bf16"` (convolutions on bf16 tensors with f32 accumulation, batch norm's
//! statistics and every parameter f32: the master weights stay f32 and each step casts the
//! convolutions' copy). The convolutions' filters are kept in cuDNN's KRSC order in a buffer
//! of their own, transposed from the parameters once per step; each layer's gradients, made in
//! a scratch the size of the largest layer's, are transposed back into the gradient buffer's
//! PyTorch order right after its backward filter pass.
//!
//! Memory: a value that the backward pass reads (a convolution's, batch norm's or linear
//! layer's input, a ReLU's output) has its own buffer for the shard capacity. A batch norm's
//! or residual add's output that only a ReLU reads is never made: the two run as one kernel
//! (and the backward is masked by the ReLU's output). Every other value (a batch norm's
//! output that a residual add reads, a pooling's or channel copy's output that only such
//! layers read, ...) is needed only until its last reader has run forward: it takes a buffer
//! from a pool and gives it back then, as a PyTorch allocator would. Gradients of values come
//! from the same pool: a buffer goes back to it once the layer that made the value has run
//! backward, so only the gradients in flight are held (the first pass at a capacity allocates
//! and is traced; the pool's buffers are then planned from its requests and later passes
//! reuse them: [`BufferPool`]).
//!
//! Batch norm's running statistics: each layer writes its contribution (the shard's share
//! of the batch times its mean and unbiased variance) after the parameters' gradient in the
//! gradient buffer, in [`Graph::buffers`]' layout; the trainer's all-reduce sums it with the
//! gradients and the replica applies it ([`crate::train::gpu::replica::Replica`]).
//!
//! Synchronised batch norm (a pass given a [`NormSync`](crate::train::gpu::replica::NormSync)): each batch norm writes its moments
//! into the walker's exchange buffer, sums them over the step's GPUs and normalises with the
//! total; its backward adds its `dgamma` and `dbeta` to the gradient as usual (the all-reduce
//! sums them) and sums a copy over the GPUs for the input's gradient. Each GPU's share of the
//! running statistics' contribution is then its share of the batch times the step's
//! statistics, so the all-reduce's sum is the step's statistics once.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut};
use half::bf16;

use crate::base::Precision;
use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::{Gpu, download};
use crate::kernels::avg_pool::{AvgPoolKernels, AvgWindows};
use crate::kernels::batch_norm::{Affine, BatchNormKernels, NormShape, Saved};
use crate::kernels::bias_grad::BiasGradKernels;
use crate::kernels::cast::{CastKernels, Storage};
use crate::kernels::channel_copy::{ChannelCopyKernels, Copy2d};
use crate::kernels::conv2d::{Conv2dKernels, Conv2dShape, Epilogue, Passes};
use crate::kernels::dropout::DropoutKernels;
use crate::kernels::elementwise::ElementwiseKernels;
use crate::kernels::max_pool::MaxPoolKernels;
use crate::kernels::pool::Pool2d;
use crate::kernels::softmax_cross_entropy::SoftmaxCrossEntropyKernels;
use crate::train::gpu::buffer_pool::BufferPool;
use crate::train::gpu::linear::GemmEpilogue;
use crate::train::gpu::replica::{Input, Pass, Replica};
use crate::train::models::cnn::golden::{StepInput, StepOutput};
use crate::train::models::cnn::{Graph, Node, Op};
use crate::train::optim::Optimizer;

fn copy<T>(s: &Arc<CudaStream>, x: &CudaView<'_, T>, y: &mut CudaViewMut<'_, T>) -> Result<()> {
    s.memcpy_dtod(x, y)
        .cuda(|| format!("copying {} values on the GPU", x.len()))
}

/// The CNN pass of a replica, in its precision.
pub struct CnnNet {
    walker: Walkers,
}

enum Walkers {
    F32(Box<Walker<f32>>),
    Bf16(Box<Walker<bf16>>),
}

impl CnnNet {
    /// The pass of `graph` with activations in `precision` (f32 or bf16).
    pub fn new(gpu: &Arc<Gpu>, graph: Graph, precision: Precision) -> Result<CnnNet> {
        let walker = match precision {
            Precision::F32 => Walkers::F32(Box::new(Walker::new(gpu, graph, precision)?)),
            Precision::Bf16 => Walkers::Bf16(Box::new(Walker::new(gpu, graph, precision)?)),
            Precision::Tf32 => {
                return Err(Error::invalid(
                    graph.config.arch.name(),
                    "the CNNs train in f32 or bf16, not tf32",
                ));
            }
        };
        Ok(CnnNet { walker })
    }

    pub fn graph(&self) -> &Graph {
        match &self.walker {
            Walkers::F32(w) => &w.graph,
            Walkers::Bf16(w) => &w.graph,
        }
    }

    /// Enqueues forward and backward over the shard of `p`: the gradient of `p.scale *
    /// sum(loss)` and, after it, the running statistics' contributions.
    pub fn forward_backward(&mut self, p: Pass) -> Result<()> {
        match &mut self.walker {
            Walkers::F32(w) => w.forward_backward(p),
            Walkers::Bf16(w) => w.forward_backward(p),
        }
    }

    /// `buffers = (1 - momentum) buffers + momentum contributions`: the running statistics
    /// moved by the batch's (the contributions every GPU's pass wrote, summed).
    pub fn update_buffers(
        &self,
        s: &CudaStream,
        buffers: &mut CudaSlice<f32>,
        contributions: &CudaView<'_, f32>,
    ) -> Result<()> {
        let bn = match &self.walker {
            Walkers::F32(w) => &w.bn,
            Walkers::Bf16(w) => &w.bn,
        };
        let n = buffers.len();
        bn.update_running(s, buffers, contributions, n)
    }

    /// Only deterministic cuDNN algorithms from the next pass on (bit-identical gradients run
    /// to run; see [`Conv2dKernels::set_deterministic`]).
    pub fn set_deterministic(&mut self, deterministic: bool) {
        match &mut self.walker {
            Walkers::F32(w) => w.conv.set_deterministic(deterministic),
            Walkers::Bf16(w) => w.conv.set_deterministic(deterministic),
        }
    }

    /// Whether f32 convolutions may use cuDNN's FFT and Winograd algorithms from the next pass
    /// on, as PyTorch's f32 does ([`Conv2dKernels::set_transforms`]).
    pub fn set_conv_transforms(&mut self, transforms: bool) {
        match &mut self.walker {
            Walkers::F32(w) => w.conv.set_transforms(transforms),
            Walkers::Bf16(w) => w.conv.set_transforms(transforms),
        }
    }

    /// One line per convolution: its module name and what cuDNN runs for it at the planned
    /// batch ([`Conv2dKernels::describe`]); empty before the first pass.
    pub fn describe_convs(&self) -> Vec<String> {
        match &self.walker {
            Walkers::F32(w) => w.describe_convs(),
            Walkers::Bf16(w) => w.describe_convs(),
        }
    }

    /// The device memory the pass holds, in bytes by what it is for ([`Walker::held`]).
    pub fn held(&self) -> Vec<(&'static str, usize)> {
        match &self.walker {
            Walkers::F32(w) => w.held(),
            Walkers::Bf16(w) => w.held(),
        }
    }

    /// The synchronised batch norms' exchange buffer and the exchanges a pass makes
    /// ([`Replica::norm_buffer`]); `None` without batch norm.
    pub fn norm_buffer(&mut self) -> Option<(&mut CudaSlice<f32>, usize)> {
        let (buf, graph) = match &mut self.walker {
            Walkers::F32(w) => (&mut w.sync_buf, &w.graph),
            Walkers::Bf16(w) => (&mut w.sync_buf, &w.graph),
        };
        // One exchange in each batch norm's forward and one in its backward.
        let norms = graph
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::BatchNorm { .. }))
            .count();
        (norms > 0).then_some((buf, 2 * norms))
    }

    /// The last pass's forward values on the host (f32, NHWC, by value index, the logits
    /// last; `None` for a batch norm's output that its fused ReLU replaced): what
    /// [`forward_backward_along`](crate::train::models::cnn::cpu::forward_backward_along)
    /// walks along to check this pass's gradients.
    pub fn forward_values(&self, gpu: &Gpu) -> Result<Vec<Option<Vec<f32>>>> {
        match &self.walker {
            Walkers::F32(w) => w.forward_values(gpu),
            Walkers::Bf16(w) => w.forward_values(gpu),
        }
    }

    /// The last pass's logits, `rows x classes` (f32).
    pub fn logits(&self) -> &CudaSlice<f32> {
        match &self.walker {
            Walkers::F32(w) => &w.logits,
            Walkers::Bf16(w) => &w.logits,
        }
    }
}

/// One training step of a golden file ([`check_with`](crate::train::models::cnn::golden::check_with)) on GPU `ordinal`, in f32:
/// forward, loss, backward and the running statistics' update, no optimizer step.
pub fn golden_step(ordinal: usize, input: &StepInput<'_>) -> Result<StepOutput> {
    let gpu = Gpu::open(ordinal)?;
    let (g, n) = (input.graph, input.labels.len());
    let mut replica = Replica::for_graph(
        gpu.clone(),
        g.clone(),
        Optimizer::sgd(0.0),
        Precision::F32,
        input.params,
        &[],
    )?;
    replica.upload(input.params, &[], input.buffers)?;
    replica.set_seed(0);
    replica.forward_backward(input.images, input.labels, 1.0 / n as f32)?;
    replica.update_buffers()?;
    let loss = replica.stats()?.loss;
    let logits = replica
        .logits()
        .map(|l| gpu.stream().clone_dtoh(&l.slice(..n * g.config.classes)))
        .transpose()
        .cuda(|| "reading the logits".into())?
        .unwrap_or_default();
    let (state, grads) = replica.download()?;
    let values = replica.forward_values().transpose()?;
    Ok(StepOutput {
        logits,
        loss,
        grads,
        buffers: state.buffers,
        values,
    })
}

/// How the forward walks the nodes: one at a time, or a batch norm or a residual add and the
/// ReLU that alone reads it as one kernel (`relu`: that ReLU's node; the value between the
/// two is never made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    node: usize,
    relu: Option<usize>,
}

impl Step {
    /// The value the step makes: its ReLU's output when it has one.
    fn output(&self, g: &Graph) -> usize {
        g.nodes[self.relu.unwrap_or(self.node)].output
    }
}

/// Where a convolution's filters (KRSC) and bias sit in the convolution buffers, and their
/// parameters' ranges.
#[derive(Clone, Debug)]
struct ConvSlot {
    shape: Conv2dShape,
    weight: usize,
    bias: Option<usize>,
    params: std::ops::Range<usize>,
    bias_params: Option<std::ops::Range<usize>>,
}

impl ConvSlot {
    /// Where the bias's gradient starts in the gradient scratch: after the filters',
    /// aligned for cuDNN.
    fn grad_bias_at(&self) -> usize {
        self.shape.weight_len().div_ceil(ALIGN) * ALIGN
    }

    /// The scratch this convolution's filter and bias gradients need.
    fn grad_len(&self) -> usize {
        self.grad_bias_at() + self.bias.map_or(0, |_| self.shape.out_channels)
    }

    /// The filters' transpose from PyTorch's `(out, in / groups, kh, kw)` to KRSC, or back.
    fn transpose(&self, to_krsc: bool) -> Copy2d {
        let s = &self.shape;
        let (cin, khw) = (s.group_in_channels(), s.kernel_h * s.kernel_w);
        if to_krsc {
            Copy2d::transpose(s.out_channels, cin, khw)
        } else {
            Copy2d::transpose(s.out_channels, khw, cin)
        }
    }
}

/// A linear layer's f32 operands (the activations may be bf16; cuBLASLt's GEMMs take f32
/// and round themselves).
struct LinearBufs {
    /// The input widened to f32: allocated by the first forward pass that widens one (bf16
    /// activations), since f32 inputs are read where they are.
    x: Option<CudaSlice<f32>>,
    y: CudaSlice<f32>,
    dy: CudaSlice<f32>,
    dx: CudaSlice<f32>,
}

/// cuDNN wants 16-byte aligned tensors: offsets in the convolution buffers are multiples of
/// 8 values (16 bytes of bf16, 32 of f32).
const ALIGN: usize = 8;

struct Walker<T: Storage> {
    graph: Graph,
    plan: Vec<Step>,
    /// Per node: its convolution's place (convolutions only).
    conv_slots: Vec<Option<ConvSlot>>,
    /// Per node: its batch norm's offset in the running statistics' layout.
    norm_at: Vec<usize>,
    conv: Conv2dKernels,
    bn: BatchNormKernels,
    avg: AvgPoolKernels,
    max: MaxPoolKernels,
    dropout: DropoutKernels,
    copy: ChannelCopyKernels,
    elementwise: ElementwiseKernels,
    cast: CastKernels,
    loss: SoftmaxCrossEntropyKernels,
    bias_grad: BiasGradKernels,
    /// Images the buffers hold, and the last pass's.
    capacity: usize,
    rows: usize,
    /// Per value: its buffer while it is held (always for those the backward reads, see
    /// `kept`; never for the output of a step's fused ReLU input).
    values: Vec<Option<CudaSlice<T>>>,
    /// Per value: whether the backward pass reads it (so it keeps its own buffer).
    kept: Vec<bool>,
    /// Per step: the values whose last forward reader it is and that are not kept, given
    /// back to the pool after it.
    release: Vec<Vec<usize>>,
    /// Per node: a max pooling's argmax, a batch norm's statistics, a linear's operands.
    argmax: Vec<Option<CudaSlice<i32>>>,
    saved: Vec<Option<Saved>>,
    linears: Vec<Option<LinearBufs>>,
    norm_work: CudaSlice<f32>,
    /// Synchronised batch norm's moments or backward sums, summed over the GPUs in place:
    /// allocated once, so peers can keep its address.
    sync_buf: CudaSlice<f32>,
    /// The filters and biases (KRSC) as cuDNN reads them, in the activations' type: one
    /// converting, transposing copy from the f32 parameters (no f32 staging copy of every
    /// filter).
    conv_w: CudaSlice<T>,
    /// One convolution's filter and bias gradients (KRSC), the largest's size: each layer's
    /// are copied back into the gradient buffer's PyTorch order as soon as its backward has
    /// made them, so no whole-model copy of the gradients in the activations' type is held
    /// (45 MiB of bf16 for ResNet-50).
    conv_dw: CudaSlice<T>,
    logits: CudaSlice<f32>,
    dlogits: CudaSlice<f32>,
    /// The values' gradients in flight, and the pool they and the values that are not kept
    /// come from.
    dvalues: Vec<Option<CudaSlice<T>>>,
    pool: BufferPool<T>,
}

/// Values in `shape` for `n` images.
fn numel(shape: [usize; 3], n: usize) -> usize {
    n * shape.iter().product::<usize>()
}

pub(super) fn alloc<U: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    gpu: &Gpu,
    n: usize,
    what: &str,
) -> Result<CudaSlice<U>> {
    gpu.stream()
        .alloc_zeros::<U>(n.max(1))
        .cuda(|| format!("allocating {n} values for {what}"))
}

impl<T: Storage> Walker<T> {
    fn new(gpu: &Arc<Gpu>, graph: Graph, precision: Precision) -> Result<Walker<T>> {
        let nodes = &graph.nodes;
        // Who reads each value.
        let mut readers = vec![0usize; graph.shapes.len()];
        for n in nodes {
            n.inputs.iter().for_each(|&i| readers[i] += 1);
        }
        let mut plan = Vec::with_capacity(nodes.len());
        let mut i = 0;
        while i < nodes.len() {
            let fused = matches!(nodes[i].op, Op::BatchNorm { .. } | Op::Add)
                && nodes.get(i + 1).is_some_and(|r| {
                    r.op == Op::Relu
                        && r.inputs == [nodes[i].output]
                        && readers[nodes[i].output] == 1
                });
            let relu = fused.then_some(i + 1);
            plan.push(Step { node: i, relu });
            i += 1 + usize::from(fused);
        }
        let (kept, release) = lifetimes(&graph, &plan);
        let mut conv_slots = vec![None; nodes.len()];
        let mut conv_len = 0;
        let mut take = |len: usize| {
            let at = conv_len;
            conv_len += len.div_ceil(ALIGN) * ALIGN;
            at
        };
        let mut widest_conv = 0;
        for (i, n) in nodes.iter().enumerate() {
            if let Op::Conv {
                shape,
                weight,
                bias,
            } = &n.op
            {
                let slot = ConvSlot {
                    shape: *shape,
                    weight: take(shape.weight_len()),
                    bias: bias.map(|_| take(shape.out_channels)),
                    params: graph.layout.slots[*weight].range(),
                    bias_params: bias.map(|b| graph.layout.slots[b].range()),
                };
                widest_conv = widest_conv.max(slot.grad_len());
                conv_slots[i] = Some(slot);
            }
        }
        let mut norm_at = vec![0; nodes.len()];
        let mut at = 0;
        for (i, n) in nodes.iter().enumerate() {
            if let Op::BatchNorm { norm, .. } = n.op {
                norm_at[i] = at;
                at += 2 * graph.norms[norm].1;
            }
        }
        let values = graph.shapes.len();
        let widest = graph.norms.iter().map(|n| n.1).max().unwrap_or(0);
        Ok(Walker {
            plan,
            conv_slots,
            norm_at,
            conv: Conv2dKernels::load(gpu, precision)?,
            bn: BatchNormKernels::load(gpu)?,
            avg: AvgPoolKernels::load(gpu)?,
            max: MaxPoolKernels::load(gpu)?,
            dropout: DropoutKernels::load(gpu)?,
            copy: ChannelCopyKernels::load(gpu)?,
            elementwise: ElementwiseKernels::load(gpu)?,
            cast: CastKernels::load(gpu)?,
            loss: SoftmaxCrossEntropyKernels::load(gpu)?,
            bias_grad: BiasGradKernels::load(gpu)?,
            capacity: 0,
            rows: 0,
            values: (0..values).map(|_| None).collect(),
            kept,
            release,
            argmax: (0..nodes.len()).map(|_| None).collect(),
            saved: (0..nodes.len()).map(|_| None).collect(),
            linears: (0..nodes.len()).map(|_| None).collect(),
            norm_work: alloc(gpu, 1, "batch norm")?,
            sync_buf: alloc(
                gpu,
                BatchNormKernels::moments_len(widest),
                "synchronised batch norm",
            )?,
            conv_w: alloc(gpu, conv_len, "the filters")?,
            conv_dw: alloc(gpu, widest_conv, "a convolution's filter gradients")?,
            logits: alloc(gpu, 1, "logits")?,
            dlogits: alloc(gpu, 1, "logits")?,
            dvalues: (0..values).map(|_| None).collect(),
            pool: BufferPool::new(),
            graph,
        })
    }

    /// The device memory the walker holds, in bytes by what it is for: where a pass's peak
    /// goes (every buffer it allocates stays held, the pool's included, so after a pass the
    /// sum is its high-water mark but for cuBLASLt's and cuDNN's own allocations).
    fn held(&self) -> Vec<(&'static str, usize)> {
        let sum =
            |bufs: &[Option<CudaSlice<T>>]| bufs.iter().flatten().map(CudaSlice::num_bytes).sum();
        let linear = self.linears.iter().flatten();
        let saved = self.saved.iter().flatten();
        vec![
            ("values kept for the backward pass", sum(&self.values)),
            ("gradients in flight", sum(&self.dvalues)),
            ("pool of free buffers", self.pool.held_bytes()),
            (
                "filters and one layer's gradients (KRSC)",
                self.conv_w.num_bytes() + self.conv_dw.num_bytes(),
            ),
            (
                "cuDNN workspace and channel-major copies",
                self.conv.workspace_bytes(),
            ),
            (
                "linear layers' f32 operands",
                linear
                    .map(|l| {
                        l.x.as_ref().map_or(0, CudaSlice::num_bytes)
                            + l.y.num_bytes()
                            + l.dy.num_bytes()
                            + l.dx.num_bytes()
                    })
                    .sum(),
            ),
            (
                "max pooling's argmax",
                self.argmax.iter().flatten().map(CudaSlice::num_bytes).sum(),
            ),
            (
                "batch norm's statistics and work",
                saved
                    .map(|b| b.mean.num_bytes() + b.invstd.num_bytes())
                    .sum::<usize>()
                    + self.norm_work.num_bytes()
                    + self.sync_buf.num_bytes(),
            ),
            ("logits", self.logits.num_bytes() + self.dlogits.num_bytes()),
        ]
    }

    fn describe_convs(&self) -> Vec<String> {
        let convs = self.graph.nodes.iter().filter_map(|node| match &node.op {
            Op::Conv { shape, .. } => Some((&node.name, shape)),
            _ => None,
        });
        convs
            .filter_map(|(name, shape)| {
                let line = self.conv.describe(&batched(shape, self.capacity))?;
                Some(format!("{name}: {line}"))
            })
            .collect()
    }

    /// Buffers for `n` images (kept when they hold as many already), and every convolution
    /// planned for that batch (cuDNN's benchmark runs once per shape).
    fn reserve(&mut self, gpu: &Gpu, n: usize) -> Result<()> {
        if n <= self.capacity {
            return Ok(());
        }
        let g = &self.graph;
        // The convolutions first, with no values held (the old ones, if any, go back in
        // stream order, after the work that reads them): cuDNN's benchmarks, the timing of the
        // other paths and its tensors come on top of what is held then, and on top of the kept
        // values they could set the run's peak.
        self.values.iter_mut().for_each(|v| *v = None);
        // Until the end, so that a failure leaves nothing that looks reserved.
        self.capacity = 0;
        for node in &g.nodes {
            if let Op::Conv { shape, .. } = &node.op {
                // The images (value 0) take no gradient: the backward pass skips the first
                // layer's backward data, so planning it would only grow the workspace.
                let passes = match node.inputs[0] {
                    0 => Passes::ForwardAndFilter,
                    _ => Passes::Training,
                };
                self.conv.prepare(&batched(shape, n), passes)?;
            }
        }
        for (v, shape) in g.shapes.iter().enumerate() {
            self.values[v] = if self.kept[v] {
                Some(alloc(gpu, numel(*shape, n), "activations")?)
            } else {
                None
            };
        }
        let mut work = 0;
        for (i, node) in g.nodes.iter().enumerate() {
            let [h, w, c] = g.shapes[node.inputs[0]];
            let out = numel(g.shapes[node.output], n);
            match &node.op {
                Op::MaxPool { .. } => self.argmax[i] = Some(alloc(gpu, out, "max pooling")?),
                Op::BatchNorm { .. } => {
                    self.saved[i] = Some(Saved::new(gpu, c)?);
                    let shape = NormShape {
                        rows: n * h * w,
                        channels: c,
                    };
                    work = work.max(shape.workspace_len());
                }
                Op::Linear { .. } => {
                    let din = h * w * c;
                    self.linears[i] = Some(LinearBufs {
                        x: None,
                        y: alloc(gpu, out, "a linear layer")?,
                        dy: alloc(gpu, out, "a linear layer")?,
                        dx: alloc(gpu, n * din, "a linear layer")?,
                    });
                }
                _ => {}
            }
        }
        self.norm_work = alloc(gpu, work, "batch norm")?;
        let classes = g.config.classes;
        self.logits = alloc(gpu, n * classes, "logits")?;
        self.dlogits = alloc(gpu, n * classes, "logits")?;
        // The first pass at this capacity is traced; the pool is planned from it.
        self.pool.retrace();
        self.capacity = n;
        Ok(())
    }

    fn forward_backward(&mut self, mut p: Pass) -> Result<()> {
        let n = p.rows;
        self.reserve(p.gpu, n)?;
        self.rows = n;
        let s = p.gpu.stream().clone();
        self.stage_filters(&s, p.params)?;
        self.forward(&s, &mut p)?;
        let classes = self.graph.config.classes;
        self.loss.run(
            &s,
            &self.logits,
            p.labels,
            &mut self.dlogits,
            p.stats,
            (n, classes),
            p.scale,
        )?;
        self.backward(&s, &mut p)?;
        // After the first pass at a capacity: the pool's buffers planned from its requests.
        self.pool.plan(p.gpu)
    }

    /// The parameters' filters in KRSC order (and the biases) into the convolution buffer, in
    /// the activations' type.
    fn stage_filters(&mut self, s: &Arc<CudaStream>, params: &CudaSlice<f32>) -> Result<()> {
        for slot in self.conv_slots.iter().flatten() {
            let (r, at) = (slot.params.clone(), slot.weight);
            let mut dst = self.conv_w.slice_mut(at..at + r.len());
            self.copy
                .run(s, &slot.transpose(true), &params.slice(r), &mut dst, false)?;
            if let (Some(r), Some(at)) = (slot.bias_params.clone(), slot.bias) {
                let mut dst = self.conv_w.slice_mut(at..at + r.len());
                let whole = Copy2d::take(1, r.len(), 0, r.len());
                self.copy
                    .run(s, &whole, &params.slice(r), &mut dst, false)?;
            }
        }
        Ok(())
    }

    /// One convolution's filter gradients (KRSC, at the start of the scratch) back into the
    /// gradient buffer in PyTorch's order, and its bias's (after them).
    fn unstage_filter_grads(
        &mut self,
        s: &Arc<CudaStream>,
        slot: &ConvSlot,
        grads: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let r = slot.params.clone();
        let src = self.conv_dw.slice(..r.len());
        self.copy.run(
            s,
            &slot.transpose(false),
            &src,
            &mut grads.slice_mut(r),
            false,
        )?;
        if let Some(r) = slot.bias_params.clone() {
            let at = slot.grad_bias_at();
            let src = self.conv_dw.slice(at..at + r.len());
            let whole = Copy2d::take(1, r.len(), 0, r.len());
            self.copy
                .run(s, &whole, &src, &mut grads.slice_mut(r), false)?;
        }
        Ok(())
    }

    fn forward(&mut self, s: &Arc<CudaStream>, p: &mut Pass) -> Result<()> {
        let n = p.rows;
        let g = &self.graph;
        // The image, channel-major as the datasets give it (f32, or already rounded to bf16
        // for bf16 activations: `replica::Images`), to NHWC in the activations' type, in one
        // copy.
        let [h, w, c] = g.shapes[0];
        let len = numel(g.shapes[0], n);
        let to_nhwc = Copy2d::transpose(n, c, h * w);
        let x0 = &mut self.values[0]
            .as_mut()
            .expect("reserve allocates the image")
            .slice_mut(..len);
        match p.input {
            Input::F32(x) => self.copy.run(s, &to_nhwc, &x.slice(..len), x0, false),
            Input::Bf16(x) => self.copy.run(s, &to_nhwc, &x.slice(..len), x0, false),
        }?;
        let last = g.nodes.len() - 1;
        for (k, step) in self.plan.clone().into_iter().enumerate() {
            let i = step.node;
            if i == last {
                self.linear_forward(s, p, i, true)?;
                continue;
            }
            let out = step.output(&self.graph);
            let out_len = numel(self.graph.shapes[out], n);
            let mut y = match self.values[out].take() {
                Some(y) => y,
                None => self.pool.take(p.gpu, out_len)?,
            };
            let r = self.node_forward(s, p, i, step.relu.is_some(), &mut y.slice_mut(..out_len));
            self.values[out] = Some(y);
            r?;
            for &v in &self.release[k] {
                let b = self.values[v]
                    .take()
                    .expect("a value is held until its last reader");
                self.pool.give(s, b);
            }
        }
        Ok(())
    }

    fn node_forward(
        &mut self,
        s: &Arc<CudaStream>,
        p: &mut Pass,
        i: usize,
        relu: bool,
        y: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let n = p.rows;
        let g = &self.graph;
        let node = &g.nodes[i];
        let in_shape = g.shapes[node.inputs[0]];
        let [h, w, c] = in_shape;
        let rows = n * h * w;
        let x = view(&self.values, &self.graph, node.inputs[0], n);
        match &node.op {
            Op::Conv { shape, .. } => {
                let slot = self.conv_slots[i].clone().expect("a convolution's slot");
                let wt = self
                    .conv_w
                    .slice(slot.weight..slot.weight + shape.weight_len());
                let bias = slot
                    .bias
                    .map(|b| self.conv_w.slice(b..b + shape.out_channels));
                let epilogue = bias.map_or_else(Epilogue::none, Epilogue::bias);
                self.conv.forward(&batched(shape, n), &x, &wt, epilogue, y)
            }
            Op::BatchNorm { weight, bias, .. } => {
                let shape = NormShape { rows, channels: c };
                let (gamma, beta) = (
                    p.params.slice(g.layout.slots[*weight].range()),
                    p.params.slice(g.layout.slots[*bias].range()),
                );
                let affine = Affine {
                    gamma: &gamma,
                    beta: &beta,
                };
                let at = g.layout.total + self.norm_at[i];
                let mut contrib = p.grads.slice_mut(at..at + 2 * c);
                let weight = n as f32 * p.scale;
                let saved = self.saved[i]
                    .as_mut()
                    .expect("reserve allocates statistics");
                let contrib = Some((&mut contrib, weight));
                let Some(sync) = p.sync else {
                    let work = &mut self.norm_work;
                    return self
                        .bn
                        .forward_train(s, shape, &x, affine, y, saved, work, contrib, relu);
                };
                let m = BatchNormKernels::moments_len(c);
                let mut moments = self.sync_buf.slice_mut(..m);
                self.bn
                    .moments(s, shape, &x, &mut self.norm_work, &mut moments)?;
                sync.sum(p.gpu, &mut self.sync_buf, m)?;
                let total = (&self.sync_buf.slice(..m), sync.images() * h * w);
                self.bn
                    .forward_from_moments(s, shape, total, &x, affine, y, saved, contrib, relu)
            }
            Op::Relu => self.elementwise.relu(s, &x, y, x.len()),
            Op::MaxPool {
                kernel,
                stride,
                pad,
            } => {
                let pool = Pool2d::new(n, in_shape, *kernel, *stride, *pad);
                let idx = self.argmax[i].as_mut().expect("reserve allocates argmax");
                let mut idx = idx.slice_mut(..y.len());
                self.max.forward(s, &pool, &x, y, &mut idx)
            }
            Op::AvgPool { .. } | Op::AdaptiveAvgPool { .. } => {
                self.avg.forward(s, &windows(g, node, n), &x, y)
            }
            Op::Add => {
                let other = view(&self.values, &self.graph, node.inputs[1], n);
                if relu {
                    return self.elementwise.add_relu(s, &x, &other, y, other.len());
                }
                copy(s, &x, y)?;
                self.elementwise.add(s, y, &other, other.len())
            }
            Op::Concat => {
                let total = g.shapes[node.output][2];
                let mut at = 0;
                for j in 0..node.inputs.len() {
                    let ci = g.shapes[node.inputs[j]][2];
                    let put = Copy2d::put(rows, total, at, ci);
                    self.copy.run(
                        s,
                        &put,
                        &view(&self.values, &self.graph, node.inputs[j], n),
                        y,
                        false,
                    )?;
                    at += ci;
                }
                Ok(())
            }
            Op::Channels { start, len } => {
                let take = Copy2d::take(rows, c, *start, *len);
                self.copy.run(s, &take, &x, y, false)
            }
            Op::Shuffle { groups } => {
                let t = Copy2d::transpose(rows, *groups, c / groups);
                self.copy.run(s, &t, &x, y, false)
            }
            Op::Flatten => {
                let t = Copy2d::transpose(n, h * w, c);
                self.copy.run(s, &t, &x, y, false)
            }
            Op::Dropout { p: drop } => {
                copy(s, &x, y)?;
                let len = y.len();
                self.dropout.run(s, y, len, *drop, p.seed ^ i as u64)
            }
            Op::Linear { .. } => {
                let len = y.len();
                self.linear_forward(s, p, i, false)?;
                let out = &self.linears[i].as_ref().expect("a linear's buffers").y;
                T::narrow(&self.cast, s, &out.slice(..len), y)
            }
        }
    }

    /// A linear layer into its f32 output (the logits when `last`).
    fn linear_forward(
        &mut self,
        s: &Arc<CudaStream>,
        p: &mut Pass,
        i: usize,
        last: bool,
    ) -> Result<()> {
        let n = p.rows;
        let g = &self.graph;
        let node = &g.nodes[i];
        let Op::Linear { weight, bias } = node.op else {
            return Err(Error::invalid(
                &node.name,
                "the last layer of a CNN graph must be a linear one",
            ));
        };
        let (din, dout) = (numel(g.shapes[node.inputs[0]], 1), g.shapes[node.output][2]);
        let bufs = self.linears[i]
            .as_mut()
            .expect("reserve allocates a linear's buffers");
        let xv = self.values[node.inputs[0]]
            .as_ref()
            .expect("a linear's input");
        let x = match T::as_f32(xv) {
            Some(x) => x,
            None => {
                let len = n * din;
                let wide = match bufs.x {
                    Some(ref mut x) => x,
                    None => bufs
                        .x
                        .insert(alloc(p.gpu, self.capacity * din, "a linear layer")?),
                };
                T::widen(&self.cast, s, &xv.slice(..len), &mut wide.slice_mut(..len))?;
                wide
            }
        };
        let w = p.params.slice(g.layout.slots[weight].range());
        let b = p.params.slice(g.layout.slots[bias].range());
        let y = if last { &mut self.logits } else { &mut bufs.y };
        p.linear
            .forward(x, &w, GemmEpilogue::Bias(b), y, n, din, dout)
    }

    /// The last pass's forward values as f32 on the host, by value index, the logits last;
    /// `None` for a value that a fused ReLU replaced and for one no backward reads (its
    /// buffer went back to the pool). bf16 values are
    /// widened through one scratch buffer of the largest value; f32 ones are read directly.
    fn forward_values(&self, gpu: &Gpu) -> Result<Vec<Option<Vec<f32>>>> {
        let s = gpu.stream();
        let logits = self.graph.nodes[self.graph.nodes.len() - 1].output;
        let len = |v: usize| numel(self.graph.shapes[v], self.rows);
        let mut wide: Option<CudaSlice<f32>> = None;
        let mut out = Vec::with_capacity(self.values.len());
        for (v, value) in self.values.iter().enumerate() {
            let n = len(v);
            let host = match value {
                _ if v == logits => Some(download(s, &self.logits.slice(..n))?),
                Some(b) => match T::as_f32(b) {
                    Some(b) => Some(download(s, &b.slice(..n))?),
                    None => {
                        if wide.is_none() {
                            let most = (0..self.values.len()).map(len).max().unwrap_or(0);
                            wide = Some(alloc::<f32>(gpu, most, "a forward value")?);
                        }
                        let w = wide.as_mut().expect("allocated above");
                        T::widen(&self.cast, s, &b.slice(..n), &mut w.slice_mut(..n))?;
                        Some(download(s, &w.slice(..n))?)
                    }
                },
                None => None,
            };
            out.push(host);
        }
        Ok(out)
    }

    /// Hands `grad` (the first `len` values) to value `v`'s gradient: it becomes the
    /// gradient, or is added to the one there (and goes back to the pool).
    fn deliver(
        &mut self,
        s: &Arc<CudaStream>,
        v: usize,
        grad: CudaSlice<T>,
        len: usize,
    ) -> Result<()> {
        match &mut self.dvalues[v] {
            Some(acc) => {
                let r = self
                    .elementwise
                    .add(s, &mut acc.slice_mut(..len), &grad.slice(..len), len);
                self.pool.give(s, grad);
                r
            }
            empty => {
                *empty = Some(grad);
                Ok(())
            }
        }
    }

    /// Value `v`'s gradient buffer to write, and whether to add to it (it holds another
    /// reader's gradient) or overwrite it (fresh; zeroed first when `zeroed`).
    fn target(
        &mut self,
        gpu: &Gpu,
        v: usize,
        len: usize,
        zeroed: bool,
    ) -> Result<(CudaSlice<T>, bool)> {
        match self.dvalues[v].take() {
            Some(b) => Ok((b, true)),
            None => {
                let mut b = self.pool.take(gpu, len)?;
                if zeroed {
                    gpu.stream()
                        .memset_zeros(&mut b.slice_mut(..len))
                        .cuda(|| "zeroing a gradient".into())?;
                }
                Ok((b, zeroed))
            }
        }
    }

    fn backward(&mut self, s: &Arc<CudaStream>, p: &mut Pass) -> Result<()> {
        let last = self.graph.nodes.len() - 1;
        for step in self.plan.clone().into_iter().rev() {
            let i = step.node;
            if i == last {
                self.linear_backward(s, p, i, None)?;
                continue;
            }
            let Some(dy) = self.dvalues[step.output(&self.graph)].take() else {
                continue;
            };
            self.node_backward(s, p, i, step.relu.is_some(), dy)?;
        }
        for d in &mut self.dvalues {
            if let Some(b) = d.take() {
                self.pool.give(s, b);
            }
        }
        Ok(())
    }

    /// Node `i`'s backward from its output's gradient `dy` (which it consumes).
    fn node_backward(
        &mut self,
        s: &Arc<CudaStream>,
        p: &mut Pass,
        i: usize,
        relu: bool,
        mut dy: CudaSlice<T>,
    ) -> Result<()> {
        let n = p.rows;
        let gpu = p.gpu;
        let node = self.graph.nodes[i].clone();
        let in_shape = self.graph.shapes[node.inputs[0]];
        let [h, w, c] = in_shape;
        let rows = n * h * w;
        let input = node.inputs[0];
        let in_len = numel(in_shape, n);
        let out_v = if relu {
            self.graph.nodes[i + 1].output
        } else {
            node.output
        };
        let out_len = numel(self.graph.shapes[out_v], n);
        match &node.op {
            Op::Conv { shape, .. } => {
                let call = batched(shape, n);
                let slot = self.conv_slots[i].clone().expect("a convolution's slot");
                let x = view(&self.values, &self.graph, node.inputs[0], n);
                let dyv = dy.slice(..out_len);
                let wl = shape.weight_len();
                let mut dw = self.conv_dw.slice_mut(..wl);
                self.conv.backward_filter(&call, &x, &dyv, &mut dw, false)?;
                if slot.bias.is_some() {
                    let at = slot.grad_bias_at();
                    let mut db = self.conv_dw.slice_mut(at..at + shape.out_channels);
                    self.conv.backward_bias(&call, &dyv, &mut db, false)?;
                }
                // The scratch is the next convolution's: its gradients go home now (in
                // stream order, before the next backward filter pass overwrites them).
                self.unstage_filter_grads(s, &slot, p.grads)?;
                if input != 0 {
                    let (mut dx, acc) = self.target(gpu, input, in_len, false)?;
                    let wt = self.conv_w.slice(slot.weight..slot.weight + wl);
                    let r = self.conv.backward_data(
                        &call,
                        &wt,
                        &dy.slice(..out_len),
                        &mut dx.slice_mut(..in_len),
                        acc,
                    );
                    self.dvalues[input] = Some(dx);
                    r?;
                }
            }
            Op::BatchNorm { weight, bias, .. } => {
                let shape = NormShape { rows, channels: c };
                let layout = &self.graph.layout;
                let (wr, br) = (layout.slots[*weight].range(), layout.slots[*bias].range());
                let gamma = p.params.slice(wr.clone());
                let mut dx = self.pool.take(gpu, in_len)?;
                {
                    let (mut lo, mut hi) = p.grads.split_at_mut(br.start);
                    let (mut dg, mut db) = (lo.slice_mut(wr.start..), hi.slice_mut(..c));
                    let x = view(&self.values, &self.graph, node.inputs[0], n);
                    let mask = relu.then(|| {
                        self.values[out_v]
                            .as_ref()
                            .expect("a fused ReLU's output")
                            .slice(..out_len)
                    });
                    let saved = self.saved[i].as_ref().expect("the forward's statistics");
                    let x_dy = (&x, &dy.slice(..out_len), mask.as_ref());
                    let mut dxv = dx.slice_mut(..in_len);
                    match p.sync {
                        None => self.bn.backward(
                            s,
                            shape,
                            x_dy.0,
                            x_dy.1,
                            x_dy.2,
                            saved,
                            &gamma,
                            (&mut dg, &mut db),
                            &mut dxv,
                            &mut self.norm_work,
                        )?,
                        Some(sync) => {
                            let sums = (&mut dg, &mut db);
                            self.bn.backward_sums(
                                s,
                                shape,
                                x_dy,
                                saved,
                                sums,
                                &mut self.norm_work,
                            )?;
                            // This GPU's sums stay in the gradient (the all-reduce adds
                            // them up); the input's gradient needs the step's.
                            let (mut tg, mut tb) = self.sync_buf.split_at_mut(c);
                            copy(s, &dg.as_view(), &mut tg.slice_mut(..c))?;
                            copy(s, &db.as_view(), &mut tb.slice_mut(..c))?;
                            sync.sum(gpu, &mut self.sync_buf, 2 * c)?;
                            let (tg, tb) =
                                (self.sync_buf.slice(..c), self.sync_buf.slice(c..2 * c));
                            let total = (&tg, &tb, sync.images() * h * w);
                            self.bn
                                .backward_input(s, shape, x_dy, saved, &gamma, total, &mut dxv)?;
                        }
                    }
                }
                self.deliver(s, input, dx, in_len)?;
            }
            Op::Relu => {
                let y = self.values[node.output].as_ref().expect("a ReLU's output");
                self.elementwise.relu_backward(
                    s,
                    &mut dy.slice_mut(..out_len),
                    &y.slice(..out_len),
                    out_len,
                )?;
                return self.deliver(s, input, dy, in_len);
            }
            Op::MaxPool {
                kernel,
                stride,
                pad,
            } => {
                let pool = Pool2d::new(n, in_shape, *kernel, *stride, *pad);
                let mut dx = self.pool.take(gpu, in_len)?;
                let idx = self.argmax[i].as_ref().expect("the forward's argmax");
                self.max.backward(
                    s,
                    &pool,
                    &dy.slice(..out_len),
                    &idx.slice(..out_len),
                    &mut dx.slice_mut(..in_len),
                )?;
                self.deliver(s, input, dx, in_len)?;
            }
            Op::AvgPool { .. } | Op::AdaptiveAvgPool { .. } => {
                let win = windows(&self.graph, &node, n);
                let mut dx = self.pool.take(gpu, in_len)?;
                self.avg
                    .backward(s, &win, &dy.slice(..out_len), &mut dx.slice_mut(..in_len))?;
                self.deliver(s, input, dx, in_len)?;
            }
            Op::Add => {
                if relu {
                    let y = self.values[out_v].as_ref().expect("a fused ReLU's output");
                    let (mut dyv, yv) = (dy.slice_mut(..out_len), y.slice(..out_len));
                    self.elementwise.relu_backward(s, &mut dyv, &yv, out_len)?;
                }
                let other = node.inputs[1];
                let mut copy_of = self.pool.take(gpu, in_len)?;
                copy(s, &dy.slice(..in_len), &mut copy_of.slice_mut(..in_len))?;
                self.deliver(s, other, copy_of, in_len)?;
                return self.deliver(s, input, dy, in_len);
            }
            Op::Concat => {
                let total = self.graph.shapes[node.output][2];
                let mut at = 0;
                for &v in &node.inputs {
                    let ci = self.graph.shapes[v][2];
                    let len = numel(self.graph.shapes[v], n);
                    let (mut dx, acc) = self.target(gpu, v, len, false)?;
                    let take = Copy2d::take(rows, total, at, ci);
                    let r = self.copy.run(
                        s,
                        &take,
                        &dy.slice(..out_len),
                        &mut dx.slice_mut(..len),
                        acc,
                    );
                    self.dvalues[v] = Some(dx);
                    r?;
                    at += ci;
                }
            }
            Op::Channels { start, len } => {
                let (mut dx, _) = self.target(gpu, input, in_len, true)?;
                let put = Copy2d::put(rows, c, *start, *len);
                let r = self.copy.run(
                    s,
                    &put,
                    &dy.slice(..out_len),
                    &mut dx.slice_mut(..in_len),
                    true,
                );
                self.dvalues[input] = Some(dx);
                r?;
            }
            Op::Shuffle { groups } => {
                let (mut dx, acc) = self.target(gpu, input, in_len, false)?;
                let t = Copy2d::transpose(rows, c / groups, *groups);
                let r = self.copy.run(
                    s,
                    &t,
                    &dy.slice(..out_len),
                    &mut dx.slice_mut(..in_len),
                    acc,
                );
                self.dvalues[input] = Some(dx);
                r?;
            }
            Op::Flatten => {
                let (mut dx, acc) = self.target(gpu, input, in_len, false)?;
                let t = Copy2d::transpose(n, c, h * w);
                let r = self.copy.run(
                    s,
                    &t,
                    &dy.slice(..out_len),
                    &mut dx.slice_mut(..in_len),
                    acc,
                );
                self.dvalues[input] = Some(dx);
                r?;
            }
            Op::Dropout { p: drop } => {
                self.dropout.run(
                    s,
                    &mut dy.slice_mut(..out_len),
                    out_len,
                    *drop,
                    p.seed ^ i as u64,
                )?;
                return self.deliver(s, input, dy, in_len);
            }
            Op::Linear { .. } => {
                self.linear_backward(s, p, i, Some(&dy))?;
            }
        }
        self.pool.give(s, dy);
        Ok(())
    }

    /// A linear layer's backward from `dy` (`None`: the logits' gradient), its input's
    /// gradient delivered.
    fn linear_backward(
        &mut self,
        s: &Arc<CudaStream>,
        p: &mut Pass,
        i: usize,
        dy: Option<&CudaSlice<T>>,
    ) -> Result<()> {
        let n = p.rows;
        let node = self.graph.nodes[i].clone();
        let Op::Linear { weight, bias } = node.op else {
            unreachable!("linear_backward of a linear layer")
        };
        let input = node.inputs[0];
        let (din, dout) = (
            numel(self.graph.shapes[input], 1),
            self.graph.shapes[node.output][2],
        );
        let layout = &self.graph.layout;
        let (wr, br) = (layout.slots[weight].range(), layout.slots[bias].range());
        let bufs = self.linears[i].as_mut().expect("a linear's buffers");
        if let Some(dy) = dy {
            let len = n * dout;
            T::widen(
                &self.cast,
                s,
                &dy.slice(..len),
                &mut bufs.dy.slice_mut(..len),
            )?;
        }
        let dyf = if dy.is_some() {
            &bufs.dy
        } else {
            &self.dlogits
        };
        let xv = self.values[input].as_ref().expect("a linear's input");
        // The forward pass widened a bf16 input into `bufs.x`, which only this layer writes.
        let x = T::as_f32(xv)
            .or(bufs.x.as_ref())
            .expect("the forward pass widened a linear's input");
        let wants_dx = input != 0;
        let w = p.params.slice(wr.clone());
        let dx = wants_dx.then_some((w, &mut bufs.dx));
        p.linear
            .backward(x, dyf, &mut p.grads.slice_mut(wr), dx, n, din, dout)?;
        self.bias_grad
            .run(s, dyf, &mut p.grads.slice_mut(br), n, dout)?;
        if wants_dx {
            let len = n * din;
            let mut g = self.pool.take(p.gpu, len)?;
            let dx = &self.linears[i].as_ref().expect("a linear's buffers").dx;
            T::narrow(&self.cast, s, &dx.slice(..len), &mut g.slice_mut(..len))?;
            self.deliver(s, input, g, len)?;
        }
        Ok(())
    }
}

/// Value `v` of `n` images, as a view.
fn view<'a, T>(
    values: &'a [Option<CudaSlice<T>>],
    g: &Graph,
    v: usize,
    n: usize,
) -> CudaView<'a, T> {
    values[v]
        .as_ref()
        .expect("a value a layer reads is kept")
        .slice(..numel(g.shapes[v], n))
}

/// `shape` for `n` images.
fn batched(shape: &Conv2dShape, n: usize) -> Conv2dShape {
    Conv2dShape { batch: n, ..*shape }
}

/// The windows of an average pooling node over `n` images.
fn windows(g: &Graph, node: &Node, n: usize) -> AvgWindows {
    let [h, w, c] = g.shapes[node.inputs[0]];
    match node.op {
        Op::AvgPool { kernel, stride } => {
            AvgWindows::Fixed(Pool2d::new(n, [h, w, c], kernel, stride, 0))
        }
        Op::AdaptiveAvgPool { out } => AvgWindows::Adaptive {
            input: [n, h, w, c],
            out,
        },
        _ => unreachable!("windows of a pooling layer"),
    }
}

/// Which values the backward pass reads (`kept`: the image, a ReLU's output, the input of a
/// convolution, batch norm or linear layer), and per step of `plan` the other values whose
/// last forward reader it is (freed after it).
fn lifetimes(g: &Graph, plan: &[Step]) -> (Vec<bool>, Vec<Vec<usize>>) {
    let mut kept = vec![false; g.shapes.len()];
    kept[0] = true;
    let mut last_reader = vec![None; g.shapes.len()];
    for (k, step) in plan.iter().enumerate() {
        let node = &g.nodes[step.node];
        if step.relu.is_some() || node.op == Op::Relu {
            kept[step.output(g)] = true;
        }
        for &v in &node.inputs {
            if matches!(
                node.op,
                Op::Conv { .. } | Op::BatchNorm { .. } | Op::Linear { .. }
            ) {
                kept[v] = true;
            }
            last_reader[v] = Some(k);
        }
    }
    let mut release = vec![Vec::new(); plan.len()];
    for (v, reader) in last_reader.into_iter().enumerate() {
        if let (false, Some(k)) = (kept[v], reader) {
            release[k].push(v);
        }
    }
    (kept, release)
}
