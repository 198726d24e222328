//! The graph walker on the CPU: a [`Graph`]'s forward pass in train mode (batch statistics)
//! and its backward pass, through the ops' CPU references (f64 accumulation). Every value is
//! kept for the backward pass; a value read by several layers (a shortcut, DenseNet's
//! features) sums the gradients they send back. In bf16 the convolutions and linears read
//! operands rounded to bf16 ([`Precision::operand`]), as the MLP's CPU pass does.
//!
//! Several shards of one step can walk together, layer by layer, with their batch norms
//! synchronised ([`forward_backward_synced`]): each batch norm sums the shards' moments
//! before normalising and their backward sums before the input's gradient, as devices
//! exchanging those sums would, so the shards compute what one device with the whole batch
//! does.

use crate::base::Precision;
use crate::kernels::avg_pool::cpu::{Windows, avg_pool, avg_pool_backward};
use crate::kernels::batch_norm::cpu::{
    BatchStats, Moments, NormGrads, backward_input, backward_sums, batch_norm_apply,
    batch_norm_backward, batch_norm_train,
};
use crate::kernels::bias_grad::cpu::bias_grad;
use crate::kernels::conv2d::cpu::{Conv2d, backward_data, backward_filter, conv2d};
use crate::kernels::dropout::cpu::dropout;
use crate::kernels::elementwise::cpu::relu_backward;
use crate::kernels::linear::cpu::{linear, linear_backward};
use crate::kernels::max_pool::cpu::{max_pool, max_pool_backward};
use crate::kernels::pool::Pool2d;
use crate::kernels::softmax_cross_entropy::cpu::softmax_cross_entropy;
use crate::train::models::cpu::ShardStats;
use crate::{Error, Result};

use super::{Graph, Node, Op};

/// What one shard's pass gives besides the parameters' gradient.
#[derive(Clone, Debug, PartialEq)]
pub struct Pass {
    pub stats: ShardStats,
    /// `n x classes`.
    pub logits: Vec<f32>,
    /// Each batch norm's statistics over this shard (for the running statistics).
    pub norms: Vec<BatchStats>,
}

/// What a layer's forward keeps for its backward besides the values.
enum Saved {
    None,
    Norm(BatchStats),
    Argmax(Vec<i32>),
}

/// Forward and backward over one shard of `n` images, `x` `n x (3, h, w)` (channel-major, as
/// the datasets give them), in train mode. Writes the gradient of `scale * sum(cross_entropy)`
/// into `grads` (overwriting it). `seed` draws the dropout masks.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward(
    graph: &Graph,
    precision: Precision,
    params: &[f32],
    x: &[f32],
    labels: &[u32],
    scale: f32,
    seed: u64,
    grads: &mut [f32],
) -> Result<Pass> {
    forward_backward_along(graph, precision, params, x, labels, scale, seed, &[], grads)
}

/// [`forward_backward`] along another implementation's forward pass: each value that
/// `along` holds (by value index, NHWC, `None` or missing where it has none, e.g. a batch norm's output
/// that a fused ReLU replaced) replaces the CPU's own as soon as its layer has run, so the
/// later layers, the batch norms' statistics and every ReLU's mask in the backward pass are
/// that implementation's. The gradient is then the one it should have computed from its own
/// forward values: a ReLU input within rounding of zero, which one f32 computation passes and
/// another blocks, no longer separates the two (at a small batch, batch norm spreads one such
/// flip into percent-level changes of every gradient before it).
#[allow(clippy::too_many_arguments)]
pub fn forward_backward_along(
    graph: &Graph,
    precision: Precision,
    params: &[f32],
    x: &[f32],
    labels: &[u32],
    scale: f32,
    seed: u64,
    along: &[Option<Vec<f32>>],
    grads: &mut [f32],
) -> Result<Pass> {
    let shard = Shard { x, labels, seed };
    let mut passes = walk(
        graph,
        precision,
        params,
        &[shard],
        scale,
        false,
        along,
        grads,
    )?;
    Ok(passes.remove(0))
}

/// One shard of a step: its images (as [`forward_backward`]'s `x`), labels and dropout seed.
#[derive(Clone, Copy, Debug)]
pub struct Shard<'a> {
    pub x: &'a [f32],
    pub labels: &'a [u32],
    pub seed: u64,
}

/// Forward and backward over the shards of one step with synchronised batch norm: every
/// batch norm normalises with the statistics of all the shards' samples, and its backward
/// uses all the shards' sums. Writes the sum of the shards' gradients of
/// `scale * sum(cross_entropy)` into `grads` (overwriting it). Each [`Pass`] holds its
/// shard's loss and logits; their `norms` are the whole step's statistics. An empty shard
/// takes no part and gets an empty pass.
pub fn forward_backward_synced(
    graph: &Graph,
    precision: Precision,
    params: &[f32],
    shards: &[Shard],
    scale: f32,
    grads: &mut [f32],
) -> Result<Vec<Pass>> {
    walk(graph, precision, params, shards, scale, true, &[], grads)
}

/// One shard's walk: its values, what each layer kept, and the gradients flowing back.
struct Walk<'a> {
    shard: Shard<'a>,
    values: Vec<Vec<f32>>,
    saved: Vec<Saved>,
    dvalues: Vec<Option<Vec<f32>>>,
}

/// The walker of [`forward_backward`], [`forward_backward_along`] and
/// [`forward_backward_synced`]: the shards go through the graph together, layer by layer;
/// with `sync` their batch norms are one; `along` (one shard; empty for none) replaces the
/// values it holds.
#[allow(clippy::too_many_arguments)]
fn walk(
    graph: &Graph,
    precision: Precision,
    params: &[f32],
    shards: &[Shard],
    scale: f32,
    sync: bool,
    along: &[Option<Vec<f32>>],
    grads: &mut [f32],
) -> Result<Vec<Pass>> {
    grads.fill(0.0);
    let [h, w, c] = graph.shapes[0];
    for s in shards {
        let n = s.labels.len();
        if s.x.len() != n * h * w * c || params.len() != graph.layout.total {
            return Err(Error::invalid(
                graph.config.arch.name(),
                format!(
                    "{} input values for {n} images of {c}x{h}x{w}, {} parameters for {}",
                    s.x.len(),
                    params.len(),
                    graph.layout.total
                ),
            ));
        }
    }
    let slot = |i: usize| &params[graph.layout.slots[i].range()];
    // The image, channel-major, to NHWC.
    let mut walks: Vec<Walk> = shards
        .iter()
        .filter(|s| !s.labels.is_empty())
        .map(|s| {
            let mut input = vec![0.0f32; s.x.len()];
            for b in 0..s.labels.len() {
                for ch in 0..c {
                    for p in 0..h * w {
                        input[(b * h * w + p) * c + ch] = s.x[(b * c + ch) * h * w + p];
                    }
                }
            }
            Ok(Walk {
                shard: *s,
                values: vec![adopt(graph, along, 0, input)?],
                saved: Vec::with_capacity(graph.nodes.len()),
                dvalues: Vec::new(),
            })
        })
        .collect::<Result<_>>()?;

    for (i, node) in graph.nodes.iter().enumerate() {
        // A synchronised batch norm's statistics: the shards' moments summed.
        let synced = match node.op {
            Op::BatchNorm { .. } if sync => {
                let ch = graph.shapes[node.inputs[0]][2];
                let parts: Vec<Moments> = walks
                    .iter()
                    .map(|w| Moments::of(&w.values[node.inputs[0]], ch))
                    .collect();
                Some(Moments::stats(&parts))
            }
            _ => None,
        };
        for w in &mut walks {
            let n = w.shard.labels.len();
            let seed = w.shard.seed ^ i as u64;
            let (y, s) = forward(
                graph,
                node,
                n,
                &w.values,
                &slot,
                precision,
                seed,
                synced.as_ref(),
            )?;
            debug_assert_eq!(w.values.len(), node.output);
            w.values.push(adopt(graph, along, node.output, y)?);
            w.saved.push(s);
        }
    }

    // Each shard's batch statistics, in the graph's batch norm order (the whole step's when
    // synchronised).
    let norms: Vec<Vec<BatchStats>> = walks
        .iter()
        .map(|w| {
            w.saved
                .iter()
                .filter_map(|s| match s {
                    Saved::Norm(stats) => Some(stats.clone()),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let classes = graph.config.classes;
    let mut losses = Vec::with_capacity(walks.len());
    for w in &mut walks {
        let logits = w.values.last().expect("a graph has layers").clone();
        let (loss, dlogits) = softmax_cross_entropy(&logits, w.shard.labels, classes, scale);
        w.dvalues = vec![None; w.values.len()];
        *w.dvalues.last_mut().expect("logits") = Some(dlogits);
        losses.push((loss, logits));
    }
    for (k, node) in graph.nodes.iter().enumerate().rev() {
        let dys: Vec<Option<Vec<f32>>> = walks
            .iter_mut()
            .map(|w| w.dvalues[node.output].take())
            .collect();
        match node.op {
            Op::BatchNorm { weight, bias, .. } if sync => {
                // The shards share the step's statistics (no walk: no shard has samples).
                let Some(Saved::Norm(stats)) = walks.first().map(|w| &w.saved[k]) else {
                    continue;
                };
                let stats = stats.clone();
                let input = node.inputs[0];
                let parts: Vec<NormGrads> = walks
                    .iter()
                    .zip(&dys)
                    .filter_map(|(w, dy)| {
                        dy.as_ref()
                            .map(|dy| backward_sums(&w.values[input], dy, &stats))
                    })
                    .collect::<Result<_>>()?;
                let total = NormGrads::total(&parts);
                for part in &parts {
                    let (dgamma, dbeta) = part.to_f32();
                    add(grads, graph, weight, &dgamma);
                    add(grads, graph, bias, &dbeta);
                }
                for (w, dy) in walks.iter_mut().zip(dys) {
                    let Some(dy) = dy else { continue };
                    let dx = backward_input(&w.values[input], &dy, slot(weight), &stats, &total);
                    send_back(&mut w.dvalues, node, vec![Some(dx)]);
                    w.values[node.output] = Vec::new();
                }
            }
            _ => {
                for (w, dy) in walks.iter_mut().zip(dys) {
                    let Some(dy) = dy else { continue };
                    let n = w.shard.labels.len();
                    let dxs = backward(
                        graph,
                        node,
                        n,
                        &w.values,
                        &w.saved[k],
                        &dy,
                        &slot,
                        precision,
                        grads,
                        w.shard.seed,
                    )?;
                    send_back(&mut w.dvalues, node, dxs);
                    // Values no later layer reads are dropped as the walk passes their
                    // producer.
                    w.values[node.output] = Vec::new();
                }
            }
        }
    }
    let mut done = losses.into_iter().zip(norms);
    Ok(shards
        .iter()
        .map(|s| match s.labels.is_empty() {
            true => Pass {
                stats: ShardStats::default(),
                logits: Vec::new(),
                norms: Vec::new(),
            },
            false => {
                let ((loss, logits), norms) = done.next().expect("a walk per non-empty shard");
                Pass {
                    stats: ShardStats::from(loss),
                    logits,
                    norms,
                }
            }
        })
        .collect())
}

/// Value `v`: `along`'s when it holds one (of the same length as the CPU's `own`), else `own`.
fn adopt(graph: &Graph, along: &[Option<Vec<f32>>], v: usize, own: Vec<f32>) -> Result<Vec<f32>> {
    match along.get(v).and_then(Option::as_ref) {
        None => Ok(own),
        Some(theirs) if theirs.len() == own.len() => Ok(theirs.clone()),
        Some(theirs) => Err(Error::invalid(
            format!("{} value {v}", graph.config.arch.name()),
            format!(
                "the forward values to walk along hold {} numbers, the CPU's {}",
                theirs.len(),
                own.len()
            ),
        )),
    }
}

/// Adds `g` to parameter slot `i`'s gradient (each shard's share of the step's gradient).
fn add(grads: &mut [f32], graph: &Graph, i: usize, g: &[f32]) {
    grads[graph.layout.slots[i].range()]
        .iter_mut()
        .zip(g)
        .for_each(|(a, b)| *a += b);
}

/// Sends a layer's input gradients back to the values it read; a value read by several
/// layers sums them.
fn send_back(dvalues: &mut [Option<Vec<f32>>], node: &Node, dxs: Vec<Option<Vec<f32>>>) {
    for (&input, dx) in node.inputs.iter().zip(dxs) {
        let Some(dx) = dx else { continue };
        match &mut dvalues[input] {
            Some(acc) => acc.iter_mut().zip(&dx).for_each(|(a, d)| *a += d),
            empty => *empty = Some(dx),
        }
    }
}
fn conv_call(shape: &crate::kernels::conv2d::Conv2dShape, n: usize) -> Conv2d {
    Conv2d::nhwc(crate::kernels::conv2d::Conv2dShape { batch: n, ..*shape })
}

fn pool_call(
    graph: &Graph,
    node: &Node,
    n: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
) -> Pool2d {
    Pool2d::new(n, graph.shapes[node.inputs[0]], kernel, stride, pad)
}

fn windows(graph: &Graph, node: &Node, n: usize) -> Result<Windows> {
    let [h, w, c] = graph.shapes[node.inputs[0]];
    match node.op {
        Op::AvgPool { kernel, stride } => {
            Windows::fixed(&pool_call(graph, node, n, kernel, stride, 0))
        }
        Op::AdaptiveAvgPool { out } => Windows::adaptive([n, h, w, c], out),
        _ => unreachable!("windows of a pooling layer"),
    }
}

/// The permutation of [`Op::Shuffle`]: output channel `i * g + j` is input channel
/// `j * (c / g) + i`.
fn shuffled(c: usize, groups: usize) -> Vec<usize> {
    let per = c / groups;
    (0..c).map(|o| (o % groups) * per + o / groups).collect()
}

/// Rows of `c` channels of `x` mapped to rows of `out` channels: `y[r][k] = x[r][map[k]]`.
fn gather(x: &[f32], c: usize, map: &[usize]) -> Vec<f32> {
    x.chunks(c)
        .flat_map(|row| map.iter().map(move |&k| row[k]))
        .collect()
}

/// The adjoint of [`gather`]: `dx[r][map[k]] += dy[r][k]`.
fn scatter(dy: &[f32], c: usize, map: &[usize]) -> Vec<f32> {
    let rows = dy.len() / map.len().max(1);
    let mut dx = vec![0.0f32; rows * c];
    for (dxr, dyr) in dx.chunks_mut(c).zip(dy.chunks(map.len())) {
        for (&k, &g) in map.iter().zip(dyr) {
            dxr[k] += g;
        }
    }
    dx
}

/// NHWC `(h, w, c)` to PyTorch's flattened `c * h * w` order: feature `ch * h * w + p` is
/// pixel `p`'s channel `ch`, as a map of one sample's values.
fn flatten_map([h, w, c]: [usize; 3]) -> Vec<usize> {
    (0..c * h * w)
        .map(|f| (f % (h * w)) * c + f / (h * w))
        .collect()
}

/// A layer's output and what it keeps for the backward pass; a batch norm normalises with
/// `synced` when given (the statistics of every shard of the step), else with its own.
#[allow(clippy::too_many_arguments)]
fn forward<'a>(
    graph: &Graph,
    node: &Node,
    n: usize,
    values: &[Vec<f32>],
    slot: &dyn Fn(usize) -> &'a [f32],
    precision: Precision,
    seed: u64,
    synced: Option<&BatchStats>,
) -> Result<(Vec<f32>, Saved)> {
    let x = &values[node.inputs[0]];
    let [_, _, c] = graph.shapes[node.inputs[0]];
    let [_, _, out_c] = graph.shapes[node.output];
    Ok(match &node.op {
        Op::Conv {
            shape,
            weight,
            bias,
        } => {
            let (xo, wo) = (precision.operand(x), precision.operand(slot(*weight)));
            let y = conv2d(&conv_call(shape, n), &xo, &wo, bias.map(slot), None)?;
            (y, Saved::None)
        }
        Op::BatchNorm { weight, bias, .. } => match synced {
            Some(stats) => (
                batch_norm_apply(x, c, slot(*weight), slot(*bias), stats)?,
                Saved::Norm(stats.clone()),
            ),
            None => {
                let (y, stats) = batch_norm_train(x, c, slot(*weight), slot(*bias))?;
                (y, Saved::Norm(stats))
            }
        },
        Op::Relu => (x.iter().map(|&v| v.max(0.0)).collect(), Saved::None),
        Op::MaxPool {
            kernel,
            stride,
            pad,
        } => {
            let (y, idx) = max_pool(&pool_call(graph, node, n, *kernel, *stride, *pad), x)?;
            (y, Saved::Argmax(idx))
        }
        Op::AvgPool { .. } | Op::AdaptiveAvgPool { .. } => {
            (avg_pool(&windows(graph, node, n)?, x)?, Saved::None)
        }
        Op::Add => {
            let other = &values[node.inputs[1]];
            (
                x.iter().zip(other).map(|(a, b)| a + b).collect(),
                Saved::None,
            )
        }
        Op::Concat => {
            let rows = x.len() / c;
            let mut y = vec![0.0f32; rows * out_c];
            let mut at = 0;
            for &i in &node.inputs {
                let ci = graph.shapes[i][2];
                for (yr, xr) in y.chunks_mut(out_c).zip(values[i].chunks(ci)) {
                    yr[at..at + ci].copy_from_slice(xr);
                }
                at += ci;
            }
            (y, Saved::None)
        }
        Op::Channels { start, len } => {
            let map: Vec<usize> = (*start..start + len).collect();
            (gather(x, c, &map), Saved::None)
        }
        Op::Shuffle { groups } => (gather(x, c, &shuffled(c, *groups)), Saved::None),
        Op::Flatten => {
            let shape = graph.shapes[node.inputs[0]];
            (
                gather(x, shape.iter().product(), &flatten_map(shape)),
                Saved::None,
            )
        }
        Op::Dropout { p } => {
            let mut y = x.clone();
            dropout(&mut y, *p, seed);
            (y, Saved::None)
        }
        Op::Linear { weight, bias } => {
            let (xo, wo) = (precision.operand(x), precision.operand(slot(*weight)));
            (linear(&xo, &wo, slot(*bias), (n, out_c, c)), Saved::None)
        }
    })
}

/// The gradients of a layer's inputs (None for the image, which needs none) from its
/// output's `dy`; parameter gradients are added to `grads`.
#[allow(clippy::too_many_arguments)]
fn backward<'a>(
    graph: &Graph,
    node: &Node,
    n: usize,
    values: &[Vec<f32>],
    saved: &Saved,
    dy: &[f32],
    slot: &dyn Fn(usize) -> &'a [f32],
    precision: Precision,
    grads: &mut [f32],
    seed: u64,
) -> Result<Vec<Option<Vec<f32>>>> {
    let x = &values[node.inputs[0]];
    let [_, _, c] = graph.shapes[node.inputs[0]];
    let [_, _, out_c] = graph.shapes[node.output];
    let wants_dx = node.inputs[0] != 0;
    let mut put = |i: usize, g: Vec<f32>| add(grads, graph, i, &g);
    let dx = match (&node.op, saved) {
        (
            Op::Conv {
                shape,
                weight,
                bias,
            },
            _,
        ) => {
            let call = conv_call(shape, n);
            let dyo = precision.operand(dy);
            put(
                *weight,
                backward_filter(&call, &precision.operand(x), &dyo)?,
            );
            if let Some(b) = bias {
                put(*b, bias_grad(dy, out_c));
            }
            if wants_dx {
                Some(backward_data(
                    &call,
                    &precision.operand(slot(*weight)),
                    &dyo,
                )?)
            } else {
                None
            }
        }
        (Op::BatchNorm { weight, bias, .. }, Saved::Norm(stats)) => {
            let (dx, dgamma, dbeta) = batch_norm_backward(x, dy, slot(*weight), stats)?;
            put(*weight, dgamma);
            put(*bias, dbeta);
            Some(dx)
        }
        (Op::Relu, _) => {
            let mut dx = dy.to_vec();
            relu_backward(&mut dx, &values[node.output]);
            Some(dx)
        }
        (
            Op::MaxPool {
                kernel,
                stride,
                pad,
            },
            Saved::Argmax(idx),
        ) => {
            let pool = pool_call(graph, node, n, *kernel, *stride, *pad);
            Some(max_pool_backward(&pool, idx, dy)?)
        }
        (Op::AvgPool { .. } | Op::AdaptiveAvgPool { .. }, _) => {
            Some(avg_pool_backward(&windows(graph, node, n)?, dy)?)
        }
        (Op::Add, _) => return Ok(vec![Some(dy.to_vec()), Some(dy.to_vec())]),
        (Op::Concat, _) => {
            let mut at = 0;
            let mut dxs = Vec::with_capacity(node.inputs.len());
            for &i in &node.inputs {
                let ci = graph.shapes[i][2];
                let map: Vec<usize> = (at..at + ci).collect();
                dxs.push(Some(gather(dy, out_c, &map)));
                at += ci;
            }
            return Ok(dxs);
        }
        (Op::Channels { start, len }, _) => {
            let map: Vec<usize> = (*start..start + len).collect();
            Some(scatter(dy, c, &map))
        }
        (Op::Shuffle { groups }, _) => Some(scatter(dy, c, &shuffled(c, *groups))),
        (Op::Flatten, _) => {
            let shape = graph.shapes[node.inputs[0]];
            Some(scatter(dy, shape.iter().product(), &flatten_map(shape)))
        }
        (Op::Dropout { p }, _) => {
            let i = graph
                .nodes
                .iter()
                .position(|m| m.output == node.output)
                .unwrap_or(0);
            let mut dx = dy.to_vec();
            dropout(&mut dx, *p, seed ^ i as u64);
            Some(dx)
        }
        (Op::Linear { weight, bias }, _) => {
            let dyo = precision.operand(dy);
            let wo = precision.operand(slot(*weight));
            let (dw, dx) =
                linear_backward(&precision.operand(x), &wo, &dyo, (n, out_c, c), wants_dx);
            put(*weight, dw);
            put(*bias, bias_grad(dy, out_c));
            dx
        }
        (Op::BatchNorm { .. } | Op::MaxPool { .. }, _) => {
            unreachable!("the forward saves a batch norm's statistics and a max pool's argmax")
        }
    };
    Ok(vec![dx])
}
