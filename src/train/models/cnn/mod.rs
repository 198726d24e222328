//! The five torchvision classifiers (`resnet50`, `resnext50_32x4d`, `densenet121`, `alexnet`,
//! `shufflenet_v2_x1_0`) as one graph description each: a list of layers over numbered values,
//! built from torchvision's modules with torchvision's parameter names, which one walker runs
//! forward and backward ([`cpu`]). Activations are NHWC; parameters keep PyTorch's layouts
//! (`(out, in / groups, kh, kw)` filters, `(out, in)` linears) in the flat [`Layout`], in
//! `state_dict` order. Batch norm's running statistics are buffers, outside the parameters
//! ([`Graph::buffers`]).

pub mod cpu;
pub mod golden;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::base::TensorFile;
use crate::kernels::batch_norm::cpu::{BatchStats, update_running};
use crate::kernels::conv2d::Conv2dShape;
use crate::kernels::pool::Pool2d;
use crate::train::data::ImageShape;
use crate::train::models::Layout;
use crate::{Error, Result};

/// One of the five architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    ResNet50,
    ResNext50,
    DenseNet121,
    AlexNet,
    ShuffleNetV2,
}

impl Arch {
    pub const ALL: [Arch; 5] = [
        Arch::ResNet50,
        Arch::DenseNet121,
        Arch::AlexNet,
        Arch::ResNext50,
        Arch::ShuffleNetV2,
    ];

    /// torchvision's name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet50 => "resnet50",
            Arch::ResNext50 => "resnext50_32x4d",
            Arch::DenseNet121 => "densenet121",
            Arch::AlexNet => "alexnet",
            Arch::ShuffleNetV2 => "shufflenet_v2_x1_0",
        }
    }

    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The smallest square input the architecture takes (every layer keeps at least one
    /// pixel; AlexNet's three poolings without padding need 63).
    pub fn min_size(self) -> usize {
        (1..1024)
            .find(|&s| {
                assemble(
                    CnnConfig {
                        arch: self,
                        classes: 1,
                        image: ImageShape {
                            channels: 3,
                            height: s,
                            width: s,
                        },
                    },
                    "",
                )
                .is_ok()
            })
            .unwrap_or(1024)
    }
}

/// A model: the architecture, its classes and the input images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CnnConfig {
    pub arch: Arch,
    pub classes: usize,
    pub image: ImageShape,
}

/// A layer's operation. Shapes are per sample; the batch is the walker's.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A convolution (its shape with batch 1), weight slot and optional bias slot.
    Conv {
        shape: Conv2dShape,
        weight: usize,
        bias: Option<usize>,
    },
    /// Train-mode batch norm: weight and bias slots, and which of [`Graph::norms`] it is.
    BatchNorm {
        weight: usize,
        bias: usize,
        norm: usize,
    },
    Relu,
    MaxPool {
        kernel: usize,
        stride: usize,
        pad: usize,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
    },
    AdaptiveAvgPool {
        out: [usize; 2],
    },
    /// The sum of two values of one shape.
    Add,
    /// The inputs' channels one after another.
    Concat,
    /// Channels `[start, start + len)` of the input.
    Channels {
        start: usize,
        len: usize,
    },
    /// ShuffleNet's channel shuffle: `(g, c/g)` channels transposed to `(c/g, g)`.
    Shuffle {
        groups: usize,
    },
    /// `(h, w, c)` to `c * h * w` features in PyTorch's (channel-major) order.
    Flatten,
    Dropout {
        p: f32,
    },
    /// `y = x W^T + b`: weight and bias slots.
    Linear {
        weight: usize,
        bias: usize,
    },
}

/// One layer: its module name (torchvision's, for the description), operation, input values
/// and the value it makes.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<usize>,
    pub output: usize,
}

/// A model's graph: value 0 is the input image, the last node's output the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub config: CnnConfig,
    pub nodes: Vec<Node>,
    /// Per value: `[height, width, channels]` of one sample.
    pub shapes: Vec<[usize; 3]>,
    pub layout: Layout,
    /// Every batch norm's module name (its buffers: `NAME.running_mean`, `NAME.running_var`,
    /// `NAME.num_batches_tracked`), with its channels.
    pub norms: Vec<(String, usize)>,
}

impl Graph {
    /// The running statistics' layout: `running_mean` then `running_var` of each batch norm.
    pub fn buffers(&self) -> Layout {
        let mut l = Layout::default();
        for (name, c) in &self.norms {
            l.push(format!("{name}.running_mean"), vec![*c]);
            l.push(format!("{name}.running_var"), vec![*c]);
        }
        l
    }

    /// Fresh running statistics: means 0, variances 1 (PyTorch's).
    pub fn initial_buffers(&self) -> Vec<f32> {
        self.norms
            .iter()
            .flat_map(|(_, c)| std::iter::repeat_n(0.0, *c).chain(std::iter::repeat_n(1.0, *c)))
            .collect()
    }

    /// The same graph with dropout off (the golden files' AlexNet, comparisons with PyTorch,
    /// which draws other masks).
    pub fn without_dropout(self) -> Graph {
        self.with_dropout(0.0)
    }

    /// The same graph with every dropout layer's probability set to `p` (a job's `dropout`).
    pub fn with_dropout(mut self, p: f32) -> Graph {
        for n in &mut self.nodes {
            if let Op::Dropout { p: q } = &mut n.op {
                *q = p;
            }
        }
        self
    }

    /// Whether the model has a dropout layer (AlexNet's classifier).
    pub fn has_dropout(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.op, Op::Dropout { .. }))
    }

    /// Forward multiply-adds times two per sample: convolutions and linears.
    pub fn flops(&self) -> f64 {
        self.nodes.iter().map(|n| self.node_flops(n)).sum()
    }

    fn node_flops(&self, n: &Node) -> f64 {
        match &n.op {
            Op::Conv { shape, .. } => shape.flops(),
            Op::Linear { weight, .. } => 2.0 * self.layout.slots[*weight].len as f64,
            _ => 0.0,
        }
    }

    /// One line per layer (name, operation, output shape, parameters, FLOPs), then the totals.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let [h, w, c] = self.shapes[n.output];
            let params: usize = match &n.op {
                Op::Conv { weight, bias, .. } => {
                    self.layout.slots[*weight].len + bias.map_or(0, |b| self.layout.slots[b].len)
                }
                Op::BatchNorm { weight, bias, .. } | Op::Linear { weight, bias } => {
                    self.layout.slots[*weight].len + self.layout.slots[*bias].len
                }
                _ => 0,
            };
            let op = match &n.op {
                Op::Conv { shape, .. } => format!(
                    "conv {}x{} s{} p{} g{}",
                    shape.kernel_h, shape.kernel_w, shape.stride, shape.pad, shape.groups
                ),
                Op::BatchNorm { .. } => "batch_norm".into(),
                Op::Relu => "relu".into(),
                Op::MaxPool {
                    kernel,
                    stride,
                    pad,
                } => format!("max_pool {kernel} s{stride} p{pad}"),
                Op::AvgPool { kernel, stride } => format!("avg_pool {kernel} s{stride}"),
                Op::AdaptiveAvgPool { out } => format!("adaptive_avg_pool {}x{}", out[0], out[1]),
                Op::Add => "add".into(),
                Op::Concat => format!("concat {}", n.inputs.len()),
                Op::Channels { start, len } => format!("channels {start}..{}", start + len),
                Op::Shuffle { groups } => format!("channel_shuffle {groups}"),
                Op::Flatten => "flatten".into(),
                Op::Dropout { p } => format!("dropout {p}"),
                Op::Linear { .. } => "linear".into(),
            };
            out.push_str(&format!(
                "{:<36} {:<24} {:>4}x{:<4}x{:>5} {:>10} {:>14.0}\n",
                n.name,
                op,
                h,
                w,
                c,
                params,
                self.node_flops(n)
            ));
        }
        out.push_str(&format!("parameters: {}\n", self.layout.total));
        out.push_str(&format!("FLOPs per sample: {:.4e}\n", self.flops()));
        out
    }

    /// Initial parameters drawn from `seed`, as torchvision initialises these models:
    /// convolutions Kaiming-normal (fan out, ReLU gain), batch norm scales 1 and shifts 0,
    /// linear layers and convolution biases uniform in `±1/sqrt(fan_in)`.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut params = vec![0.0f32; self.layout.total];
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC0_4E75);
        for n in &self.nodes {
            match &n.op {
                Op::Conv {
                    shape,
                    weight,
                    bias,
                } => {
                    let fan_out = shape.out_channels * shape.kernel_h * shape.kernel_w;
                    let normal = Normal::new(0.0, (2.0 / fan_out as f64).sqrt()).expect("std > 0");
                    let w = &mut params[self.layout.slots[*weight].range()];
                    w.iter_mut()
                        .for_each(|v| *v = normal.sample(&mut rng) as f32);
                    if let Some(b) = bias {
                        let fan_in = shape.group_in_channels() * shape.kernel_h * shape.kernel_w;
                        let bound = 1.0 / (fan_in as f32).sqrt();
                        params[self.layout.slots[*b].range()]
                            .iter_mut()
                            .for_each(|v| *v = rng.random_range(-bound..bound));
                    }
                }
                Op::BatchNorm { weight, .. } => {
                    params[self.layout.slots[*weight].range()].fill(1.0);
                }
                Op::Linear { weight, bias } => {
                    let fan_in = self.layout.slots[*weight].shape[1];
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    for s in [weight, bias] {
                        params[self.layout.slots[*s].range()]
                            .iter_mut()
                            .for_each(|v| *v = rng.random_range(-bound..bound));
                    }
                }
                _ => {}
            }
        }
        params
    }
}

impl Graph {
    /// Updates every batch norm's running statistics (`buffers`, in [`Graph::buffers`]'s
    /// layout) from the statistics of the shards a batch was normalised in, each with its
    /// weight (its share of the batch; empty shards have no statistics and are left out).
    pub fn update_buffers(
        &self,
        buffers: &mut [f32],
        shards: &[(f64, &Vec<BatchStats>)],
    ) -> Result<()> {
        let want = self.buffers().total;
        if buffers.len() != want {
            return Err(Error::invalid(
                format!("{} running statistics", self.config.arch.name()),
                format!("{} values, expected {want}", buffers.len()),
            ));
        }
        let mut at = 0;
        for (i, (_, c)) in self.norms.iter().enumerate() {
            let parts: Vec<_> = shards
                .iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(w, s)| (*w, &s[i]))
                .collect();
            let (mean, var) = buffers[at..at + 2 * c].split_at_mut(*c);
            update_running(&parts, mean, var)?;
            at += 2 * c;
        }
        Ok(())
    }

    /// The parameters and running statistics stored in `file` under torchvision's names
    /// (after `prefix`), each checked for its shape; a missing tensor, a wrong shape and a
    /// tensor the model does not have (a name of another model) are errors naming the file
    /// and the tensor. `num_batches_tracked` counters are accepted and not used.
    pub fn load(&self, file: &TensorFile, prefix: &str) -> Result<(Vec<f32>, Vec<f32>)> {
        let read = |layout: &Layout| -> Result<Vec<f32>> {
            let mut v = vec![0.0f32; layout.total];
            for s in &layout.slots {
                let name = format!("{prefix}{}", s.name);
                let t = file.f32_shaped(&name, &s.shape)?;
                v[s.range()].copy_from_slice(&t.data);
            }
            Ok(v)
        };
        let (layout, buffers) = (&self.layout, self.buffers());
        let params = read(layout)?;
        let stats = read(&buffers)?;
        let known: std::collections::HashSet<&str> = layout
            .slots
            .iter()
            .chain(&buffers.slots)
            .map(|s| s.name.as_str())
            .collect();
        if let Some(extra) = file.names().into_iter().find(|n| {
            n.strip_prefix(prefix)
                .is_some_and(|n| !known.contains(n) && !n.ends_with(".num_batches_tracked"))
        }) {
            return Err(Error::invalid(
                file.context(&extra),
                format!("{} has no such tensor", self.config.arch.name()),
            ));
        }
        Ok((params, stats))
    }
}

/// The dropout seed of a shard's pass in training step `t` (from 1), the shard starting at
/// sample `start` of the batch: masks differ per step and per sample position, and every
/// engine draws the same ones.
pub fn step_seed(t: u64, start: usize) -> u64 {
    t.wrapping_mul(0x9E37_79B9) ^ (start as u64) << 40
}

/// The graph of a configuration [`build`] has accepted (a [`ModelSpec`](super::ModelSpec)'s).
pub fn graph(config: CnnConfig) -> Graph {
    assemble(config, "").expect("a configuration checked when the model was parsed")
}

/// Builds the graph of `config`; `context` names the job and key in errors (an input too
/// small for the architecture, zero classes, images that are not 3-channel).
pub fn build(config: CnnConfig, context: &str) -> Result<Graph> {
    assemble(config, context).map_err(|e| match e {
        Error::Invalid { problem, .. } if problem.contains("too small") => {
            let min = config.arch.min_size();
            Error::invalid(
                context,
                format!(
                    "{problem}; {} takes {min}x{min} or more",
                    config.arch.name()
                ),
            )
        }
        e => e,
    })
}

fn assemble(config: CnnConfig, context: &str) -> Result<Graph> {
    let name = config.arch.name();
    let img = config.image;
    if config.classes == 0 {
        return Err(Error::invalid(
            context,
            format!("{name} needs classes >= 1"),
        ));
    }
    if img.channels != 3 {
        return Err(Error::invalid(
            context,
            format!("{name} takes 3-channel images, not {}", img.channels),
        ));
    }
    let mut b = Builder {
        context: context.to_string(),
        arch: name,
        nodes: Vec::new(),
        shapes: vec![[img.height, img.width, img.channels]],
        layout: Layout::default(),
        norms: Vec::new(),
    };
    let logits = match config.arch {
        Arch::ResNet50 => resnet(&mut b, 1, 64, config.classes)?,
        Arch::ResNext50 => resnet(&mut b, 32, 4, config.classes)?,
        Arch::DenseNet121 => densenet(&mut b, config.classes)?,
        Arch::AlexNet => alexnet(&mut b, config.classes)?,
        Arch::ShuffleNetV2 => shufflenet(&mut b, config.classes)?,
    };
    debug_assert_eq!(b.shapes[logits], [1, 1, config.classes]);
    Ok(Graph {
        config,
        nodes: b.nodes,
        shapes: b.shapes,
        layout: b.layout,
        norms: b.norms,
    })
}

/// Appends layers, checking each one's geometry on the way.
struct Builder {
    context: String,
    arch: &'static str,
    nodes: Vec<Node>,
    shapes: Vec<[usize; 3]>,
    layout: Layout,
    norms: Vec<(String, usize)>,
}

impl Builder {
    fn node(&mut self, name: &str, op: Op, inputs: Vec<usize>, shape: [usize; 3]) -> usize {
        let output = self.shapes.len();
        self.shapes.push(shape);
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs,
            output,
        });
        output
    }

    fn too_small(&self, layer: &str) -> Error {
        let [h, w, _] = self.shapes[0];
        Error::invalid(
            &self.context,
            format!(
                "a {h}x{w} input is too small for {}: nothing is left for {layer}",
                self.arch
            ),
        )
    }

    fn channels(&self, x: usize) -> usize {
        self.shapes[x][2]
    }

    /// A convolution `name` (PyTorch `Conv2d` with `bias`).
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        x: usize,
        name: &str,
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        bias: bool,
    ) -> Result<usize> {
        let [h, w, c] = self.shapes[x];
        let shape = Conv2dShape::new(1, [h, w], c, out, k)
            .with_stride(stride)
            .with_pad(pad)
            .with_groups(groups);
        if shape.check().is_err() {
            return Err(self.too_small(name));
        }
        let weight = self.layout.slots.len();
        self.layout
            .push(format!("{name}.weight"), vec![out, c / groups, k, k]);
        let bias = bias.then(|| {
            self.layout.push(format!("{name}.bias"), vec![out]);
            weight + 1
        });
        let [oh, ow] = shape.out_size();
        Ok(self.node(
            name,
            Op::Conv {
                shape,
                weight,
                bias,
            },
            vec![x],
            [oh, ow, out],
        ))
    }

    fn bn(&mut self, x: usize, name: &str) -> usize {
        let c = self.channels(x);
        let weight = self.layout.slots.len();
        self.layout.push(format!("{name}.weight"), vec![c]);
        self.layout.push(format!("{name}.bias"), vec![c]);
        let norm = self.norms.len();
        self.norms.push((name.to_string(), c));
        let op = Op::BatchNorm {
            weight,
            bias: weight + 1,
            norm,
        };
        self.node(name, op, vec![x], self.shapes[x])
    }

    fn relu(&mut self, x: usize, name: &str) -> usize {
        self.node(name, Op::Relu, vec![x], self.shapes[x])
    }

    /// `conv` (no bias), batch norm, and ReLU when `relu`.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        x: usize,
        (conv, bn): (&str, &str),
        out: usize,
        k: usize,
        stride: usize,
        groups: usize,
        relu: bool,
    ) -> Result<usize> {
        let y = self.conv(x, conv, out, k, stride, k / 2, groups, false)?;
        let y = self.bn(y, bn);
        Ok(if relu {
            self.relu(y, &format!("{bn}.relu"))
        } else {
            y
        })
    }

    fn max_pool(
        &mut self,
        x: usize,
        name: &str,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Result<usize> {
        let c = self.channels(x);
        let pool = Pool2d::new(1, self.shapes[x], kernel, stride, pad);
        if pool.check("").is_err() {
            return Err(self.too_small(name));
        }
        let [oh, ow] = pool.out_size();
        Ok(self.node(
            name,
            Op::MaxPool {
                kernel,
                stride,
                pad,
            },
            vec![x],
            [oh, ow, c],
        ))
    }

    fn linear(&mut self, x: usize, name: &str, out: usize) -> usize {
        let [_, _, k] = self.shapes[x];
        let weight = self.layout.slots.len();
        self.layout.push(format!("{name}.weight"), vec![out, k]);
        self.layout.push(format!("{name}.bias"), vec![out]);
        let op = Op::Linear {
            weight,
            bias: weight + 1,
        };
        self.node(name, op, vec![x], [1, 1, out])
    }

    /// Global average pooling to `(1, 1, c)`: the heads of ResNet, DenseNet and ShuffleNet
    /// (`x.mean([2, 3])` is the same map).
    fn global_pool(&mut self, x: usize, name: &str) -> usize {
        let c = self.channels(x);
        self.node(
            name,
            Op::AdaptiveAvgPool { out: [1, 1] },
            vec![x],
            [1, 1, c],
        )
    }
}

/// torchvision's ResNet-50 (`groups = 1, width_per_group = 64`) and ResNeXt-50 32x4d
/// (`32, 4`): bottlenecks v1.5 (the stride on the 3x3).
fn resnet(b: &mut Builder, groups: usize, width_per_group: usize, classes: usize) -> Result<usize> {
    let x = b.conv_bn(0, ("conv1", "bn1"), 64, 7, 2, 1, true)?;
    let mut x = b.max_pool(x, "maxpool", 3, 2, 1)?;
    let mut channels = 64;
    for (l, (&planes, &blocks)) in [64, 128, 256, 512].iter().zip(&[3, 4, 6, 3]).enumerate() {
        let width = planes * width_per_group / 64 * groups;
        for i in 0..blocks {
            let stride = if i == 0 && l > 0 { 2 } else { 1 };
            let p = format!("layer{}.{i}", l + 1);
            let n = |s: &str| format!("{p}.{s}");
            let y = b.conv_bn(x, (&n("conv1"), &n("bn1")), width, 1, 1, 1, true)?;
            let y = b.conv_bn(y, (&n("conv2"), &n("bn2")), width, 3, stride, groups, true)?;
            let y = b.conv_bn(y, (&n("conv3"), &n("bn3")), planes * 4, 1, 1, 1, false)?;
            let shortcut = if stride != 1 || channels != planes * 4 {
                let s = b.conv(x, &n("downsample.0"), planes * 4, 1, stride, 0, 1, false)?;
                b.bn(s, &n("downsample.1"))
            } else {
                x
            };
            let shape = b.shapes[y];
            let sum = b.node(&n("add"), Op::Add, vec![y, shortcut], shape);
            x = b.relu(sum, &n("relu"));
            channels = planes * 4;
        }
    }
    let x = b.global_pool(x, "avgpool");
    Ok(b.linear(x, "fc", classes))
}

/// torchvision's DenseNet-121: growth 32, blocks (6, 12, 24, 16), 64 initial features,
/// bottleneck width 4 x 32, no dropout.
fn densenet(b: &mut Builder, classes: usize) -> Result<usize> {
    let x = b.conv(0, "features.conv0", 64, 7, 2, 3, 1, false)?;
    let x = b.bn(x, "features.norm0");
    let x = b.relu(x, "features.relu0");
    let mut x = b.max_pool(x, "features.pool0", 3, 2, 1)?;
    let blocks = [6, 12, 24, 16];
    for (i, &layers) in blocks.iter().enumerate() {
        let mut features = vec![x];
        for j in 1..=layers {
            let p = format!("features.denseblock{}.denselayer{j}", i + 1);
            let n = |s: &str| format!("{p}.{s}");
            let input = if features.len() == 1 {
                features[0]
            } else {
                let [h, w, _] = b.shapes[x];
                let c = features.iter().map(|&f| b.channels(f)).sum();
                b.node(&n("concat"), Op::Concat, features.clone(), [h, w, c])
            };
            let y = b.bn(input, &n("norm1"));
            let y = b.relu(y, &n("relu1"));
            let y = b.conv(y, &n("conv1"), 4 * 32, 1, 1, 0, 1, false)?;
            let y = b.bn(y, &n("norm2"));
            let y = b.relu(y, &n("relu2"));
            let y = b.conv(y, &n("conv2"), 32, 3, 1, 1, 1, false)?;
            features.push(y);
        }
        let [h, w, _] = b.shapes[x];
        let c = features.iter().map(|&f| b.channels(f)).sum();
        let name = format!("features.denseblock{}", i + 1);
        x = b.node(&name, Op::Concat, features, [h, w, c]);
        if i + 1 < blocks.len() {
            let p = format!("features.transition{}", i + 1);
            let y = b.bn(x, &format!("{p}.norm"));
            let y = b.relu(y, &format!("{p}.relu"));
            let y = b.conv(y, &format!("{p}.conv"), c / 2, 1, 1, 0, 1, false)?;
            let [h, w, c] = b.shapes[y];
            if h < 2 || w < 2 {
                return Err(b.too_small(&format!("{p}.pool")));
            }
            let op = Op::AvgPool {
                kernel: 2,
                stride: 2,
            };
            x = b.node(&format!("{p}.pool"), op, vec![y], [h / 2, w / 2, c]);
        }
    }
    let x = b.bn(x, "features.norm5");
    let x = b.relu(x, "relu");
    let x = b.global_pool(x, "adaptive_avg_pool2d");
    Ok(b.linear(x, "classifier", classes))
}

/// torchvision's AlexNet (the one-GPU variant: 64, 192, 384, 256, 256 filters), dropout 0.5
/// before the first two linears.
fn alexnet(b: &mut Builder, classes: usize) -> Result<usize> {
    let mut x = 0;
    let relu = |b: &mut Builder, x: usize, i: usize| b.relu(x, &format!("features.{i}"));
    x = b.conv(x, "features.0", 64, 11, 4, 2, 1, true)?;
    x = relu(b, x, 1);
    x = b.max_pool(x, "features.2", 3, 2, 0)?;
    x = b.conv(x, "features.3", 192, 5, 1, 2, 1, true)?;
    x = relu(b, x, 4);
    x = b.max_pool(x, "features.5", 3, 2, 0)?;
    x = b.conv(x, "features.6", 384, 3, 1, 1, 1, true)?;
    x = relu(b, x, 7);
    x = b.conv(x, "features.8", 256, 3, 1, 1, 1, true)?;
    x = relu(b, x, 9);
    x = b.conv(x, "features.10", 256, 3, 1, 1, 1, true)?;
    x = relu(b, x, 11);
    x = b.max_pool(x, "features.12", 3, 2, 0)?;
    x = b.node(
        "avgpool",
        Op::AdaptiveAvgPool { out: [6, 6] },
        vec![x],
        [6, 6, 256],
    );
    x = b.node("flatten", Op::Flatten, vec![x], [1, 1, 256 * 36]);
    for i in [0, 3] {
        let shape = b.shapes[x];
        x = b.node(
            &format!("classifier.{i}"),
            Op::Dropout { p: 0.5 },
            vec![x],
            shape,
        );
        x = b.linear(x, &format!("classifier.{}", i + 1), 4096);
        x = b.relu(x, &format!("classifier.{}", i + 2));
    }
    Ok(b.linear(x, "classifier.6", classes))
}

/// torchvision's ShuffleNet v2 x1.0: stages of 4, 8, 4 blocks, channels 24, 116, 232, 464,
/// 1024.
fn shufflenet(b: &mut Builder, classes: usize) -> Result<usize> {
    let x = b.conv_bn(0, ("conv1.0", "conv1.1"), 24, 3, 2, 1, true)?;
    let mut x = b.max_pool(x, "maxpool", 3, 2, 1)?;
    for (s, (&out, &repeats)) in [116, 232, 464].iter().zip(&[4, 8, 4]).enumerate() {
        for i in 0..repeats {
            let p = format!("stage{}.{i}", s + 2);
            let n = |s: &str| format!("{p}.{s}");
            let half = out / 2;
            let [h, w, c] = b.shapes[x];
            let (left, right) = if i == 0 {
                // branch1: depthwise 3x3 s2, BN, 1x1, BN, ReLU.
                let l = b.conv_bn(x, (&n("branch1.0"), &n("branch1.1")), c, 3, 2, c, false)?;
                let l = b.conv_bn(l, (&n("branch1.2"), &n("branch1.3")), half, 1, 1, 1, true)?;
                (l, x)
            } else {
                let l = b.node(
                    &n("chunk0"),
                    Op::Channels {
                        start: 0,
                        len: c / 2,
                    },
                    vec![x],
                    [h, w, c / 2],
                );
                let r = b.node(
                    &n("chunk1"),
                    Op::Channels {
                        start: c / 2,
                        len: c / 2,
                    },
                    vec![x],
                    [h, w, c / 2],
                );
                (l, r)
            };
            let stride = if i == 0 { 2 } else { 1 };
            let r = b.conv_bn(
                right,
                (&n("branch2.0"), &n("branch2.1")),
                half,
                1,
                1,
                1,
                true,
            )?;
            let r = b.conv_bn(
                r,
                (&n("branch2.3"), &n("branch2.4")),
                half,
                3,
                stride,
                half,
                false,
            )?;
            let r = b.conv_bn(r, (&n("branch2.5"), &n("branch2.6")), half, 1, 1, 1, true)?;
            let [oh, ow, _] = b.shapes[r];
            let cat = b.node(&n("concat"), Op::Concat, vec![left, r], [oh, ow, out]);
            x = b.node(
                &n("shuffle"),
                Op::Shuffle { groups: 2 },
                vec![cat],
                [oh, ow, out],
            );
        }
    }
    let x = b.conv_bn(x, ("conv5.0", "conv5.1"), 1024, 1, 1, 1, true)?;
    let x = b.global_pool(x, "mean");
    Ok(b.linear(x, "fc", classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(arch: Arch, size: usize) -> CnnConfig {
        CnnConfig {
            arch,
            classes: 10,
            image: ImageShape {
                channels: 3,
                height: size,
                width: size,
            },
        }
    }

    #[test]
    fn parameter_counts_are_torchvisions() {
        for (arch, want) in [
            (Arch::ResNet50, 23_528_522),
            (Arch::DenseNet121, 6_964_106),
            (Arch::AlexNet, 57_044_810),
            (Arch::ResNext50, 23_000_394),
            (Arch::ShuffleNetV2, 1_263_854),
        ] {
            let g = build(config(arch, 224), "test").unwrap();
            assert_eq!(g.layout.total, want, "{}", arch.name());
            let g32 = build(
                config(arch, if arch == Arch::AlexNet { 63 } else { 32 }),
                "test",
            );
            assert_eq!(g32.unwrap().layout.total, want, "{} small", arch.name());
        }
    }

    #[test]
    fn inputs_too_small_are_errors_naming_the_context() {
        assert_eq!(Arch::AlexNet.min_size(), 63);
        let e = build(config(Arch::AlexNet, 62), "job.toml: model").unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("job.toml: model") && e.contains("62x62") && e.contains("alexnet"),
            "{e}"
        );
        let zero = CnnConfig {
            classes: 0,
            ..config(Arch::ResNet50, 32)
        };
        assert!(
            build(zero, "x")
                .unwrap_err()
                .to_string()
                .contains("classes")
        );
    }
}
