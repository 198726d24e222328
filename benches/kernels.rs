//! Criterion benches of each op of the inference engine at the released size (c=256, 8 heads
//! of hd=32, ff=2048, 704 tokens, 6 decoder layers), batch 1, with the shapes, epilogues and
//! tables the GPU engine launches them with. One group per op, named after it (ids
//! `op/name[/precision]`):
//! - `linear`: the encoder's QKV projection writing each head's window layout
//!   (`qkv_windows`), its output projection (`output_split_k`, before `add_layer_norm`), its
//!   FFN linears (`ffn1_bias_relu`, `ffn2_split_k`), and the decoder's: the cross-attention
//!   keys and values of all layers (`decoder_memory_kv`), a c x c projection of the one query
//!   (`decoder_projection`), the FFN linears on one row (`decoder_ffn1_bias_relu`,
//!   `decoder_ffn2_split_k`), and that last one with its bias + residual + LayerNorm in the
//!   same launch, as the decoder runs it (`decoder_ffn2_split_k_norm`: against
//!   `decoder_ffn2_split_k` plus an `add_layer_norm` launch);
//! - `window_attention` (per precision: the two products on CUDA cores in f32, on tensor cores
//!   in tf32 and bf16): one head per window size (`w1` .. `w8`) with the key splits the engine
//!   gives it, the `w = 1` head unsplit (`w1/unsplit`), all 8 heads of a layer in one launch
//!   of the fused kernel (`fused_8_heads`: the engine's splits, as the `fused` mode runs them;
//!   `/unsplit`; `/splitsN`: every head split N ways, to see where splitting pays), and the
//!   decoder's cross attention of one query over 704 keys, 8 heads in one launch, with the
//!   engine's split (`<precision>/decoder_cross_attention`);
//! - `layer_norm`: plain LayerNorm, and `add_layer_norm` summing a k-split linear's partial
//!   products, bias and residual (after the output projection and after FFN2).
//!
//! Linears and attention run in f32 (CUDA cores), tf32 and bf16 (tensor cores); LayerNorm is
//! f32 only.
//!
//! Timing: `iter_custom` with CUDA events around all of a sample's launches, queued back to
//! back as they are inside a forward pass: per launch, the kernel's GPU time (or the host's
//! launch rate, a few microseconds, for a kernel shorter than that). Throughput: the matrix
//! products' FLOPs as "elements" (criterion's elem/s reads as FLOP/s; counted as in
//! `cswintt::flops`), and where memory bounds the kernel the bytes it must move at least
//! (each operand read once, each result written once).
//!
//! Without a usable GPU or compiled kernels it prints one line saying why and exits 0
//! (with `ATTNRT_REQUIRE_GPU=1` it fails instead).
//!
//! Run: `cargo bench --bench kernels [-- FILTER] [--warm-up-time S] [--measurement-time S]`.

#[allow(dead_code)] // each bench uses part of it
mod common;

use std::time::Duration;

use attnrt::Result;
use attnrt::cswintt::{HeadPlan, Plan, Precision};
use attnrt::gpu::testing::gpu_or_skip;
use attnrt::gpu::{CudaStream, DeviceBuffer, Gpu, time_ms, upload};
use attnrt::kernels::layer_norm::{Extra, LayerNormKernels, NormInput};
use attnrt::kernels::linear::{Epilogue, LinearKernels, RowNorm, split_k};
use attnrt::kernels::window_attention::{
    AttentionOperands, AttentionShape, KeySplit, PreparedAttention, SlotLayout,
    WindowAttentionKernels,
};
use attnrt::model::config::Config;
use attnrt::model::weights::{LN_EPS, Weights};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Group<'a> = BenchmarkGroup<'a, WallTime>;

const PRECISIONS: [Precision; 3] = [Precision::F32, Precision::Tf32, Precision::Bf16];
const F32: u64 = std::mem::size_of::<f32>() as u64;

fn main() {
    let Some(gpu) = gpu_or_skip("kernels bench") else {
        return;
    };
    let weights = common::released_weights();
    let mut c = common::criterion();
    linear(&mut c, &gpu, &weights.config);
    window_attention(&mut c, &gpu, &weights);
    layer_norm(&mut c, &gpu, &weights.config);
    c.final_summary();
}

/// Benches `launch` (one kernel launch on `stream`) as `id`, timing all of a sample's
/// launches back to back between one pair of CUDA events.
fn bench_launches<I: Into<String>>(
    group: &mut Group<'_>,
    id: I,
    stream: &CudaStream,
    mut launch: impl FnMut() -> Result<()>,
) {
    group.bench_function(id.into(), |b| {
        b.iter_custom(|iters| {
            let ms =
                time_ms(stream, || (0..iters).try_for_each(|_| launch())).expect("timed launches");
            Duration::from_secs_f64(ms / 1e3)
        })
    });
}

/// `n` values uniform in [-1, 1) on the device (the values do not change the time).
fn random(gpu: &Gpu, n: usize) -> DeviceBuffer<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
    let host: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    upload(gpu.stream(), &host).expect("uploading bench data")
}

/// `n` zeros on the device (outputs, and key padding that pads nothing).
fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    gpu: &Gpu,
    n: usize,
) -> DeviceBuffer<T> {
    gpu.stream().alloc_zeros(n).expect("allocating bench data")
}

/// A linear layer `out = x W^T + bias` of shape `(n, m, k)` with its operands on the device.
struct Linear {
    shape: (usize, usize, usize),
    x: DeviceBuffer<f32>,
    weight: DeviceBuffer<f32>,
    bias: DeviceBuffer<f32>,
    out: DeviceBuffer<f32>,
}

impl Linear {
    /// Operands for `(n, m, k)`, with room for `splits` partial products.
    fn new(gpu: &Gpu, (n, m, k): (usize, usize, usize), splits: usize) -> Linear {
        Linear {
            shape: (n, m, k),
            x: random(gpu, n * k),
            weight: random(gpu, m * k),
            bias: random(gpu, m),
            out: zeros(gpu, splits * n * m),
        }
    }

    /// FLOPs of the product, and the bytes it moves at least.
    fn throughput(&self) -> Throughput {
        let (n, m, k) = self.shape;
        Throughput::ElementsAndBytes {
            elements: (2 * n * m * k) as u64,
            bytes: F32 * (n * k + m * k + m + self.out.len()) as u64,
        }
    }

    /// Benches this linear in every precision as `{name}/{precision}`, with the epilogue
    /// `epilogue` makes for each launch.
    fn bench<'e>(
        &mut self,
        group: &mut Group<'_>,
        gpu: &Gpu,
        name: &str,
        epilogue: impl Fn() -> Epilogue<'e>,
    ) {
        group.throughput(self.throughput());
        let Linear {
            shape,
            x,
            weight,
            bias,
            out,
        } = self;
        let s = gpu.stream();
        for precision in PRECISIONS {
            let kernels = LinearKernels::load_precision(gpu, precision).expect("loading linear.cu");
            bench_launches(group, format!("{name}/{precision}"), s, || {
                kernels.run(s, x, weight, bias, *shape, out, epilogue())
            });
        }
    }
}

/// A k-split linear of `shape`, with room for its partial products, and the split count the
/// engine picks for that shape.
fn split_k_linear(gpu: &Gpu, shape: (usize, usize, usize)) -> (Linear, usize) {
    let splits = split_k(shape.0, shape.1, shape.2);
    (Linear::new(gpu, shape, splits), splits)
}

/// The encoder's QKV, output and FFN linears, and the decoder's.
fn linear(c: &mut Criterion, gpu: &Gpu, cfg: &Config) {
    let (n, d, ff, h) = (cfg.l_all(), cfg.d_model, cfg.dim_feedforward, cfg.nhead);
    let plan = Plan::new(cfg).expect("the released config is valid");
    let token_slot: Vec<u32> = plan.heads.iter().flat_map(|p| p.reverse_index()).collect();
    let token_slot = &upload(gpu.stream(), &token_slot).expect("upload");
    let scale = (cfg.hd() as f32).powf(-0.5);
    let mut group = c.benchmark_group("linear");

    Linear::new(gpu, (n, 3 * d, d), 1).bench(&mut group, gpu, "qkv_windows", || {
        Epilogue::QkvWindows {
            token_slot,
            batch: 1,
            heads: h,
            scale,
        }
    });
    let (mut output, splits) = split_k_linear(gpu, (n, d, d));
    output.bench(&mut group, gpu, "output_split_k", move || {
        Epilogue::SplitK { splits }
    });
    Linear::new(gpu, (n, ff, d), 1).bench(&mut group, gpu, "ffn1_bias_relu", || Epilogue::BiasRelu);
    let (mut ffn2, splits) = split_k_linear(gpu, (n, d, ff));
    ffn2.bench(&mut group, gpu, "ffn2_split_k", move || Epilogue::SplitK {
        splits,
    });

    let bias = || Epilogue::Bias { scale: 1.0 };
    let kv_row = cfg.dec_layers * 2 * d;
    Linear::new(gpu, (n, kv_row, d), 1).bench(&mut group, gpu, "decoder_memory_kv", bias);
    Linear::new(gpu, (1, d, d), 1).bench(&mut group, gpu, "decoder_projection", bias);
    Linear::new(gpu, (1, ff, d), 1).bench(&mut group, gpu, "decoder_ffn1_bias_relu", || {
        Epilogue::BiasRelu
    });
    let (mut ffn2, splits) = split_k_linear(gpu, (1, d, ff));
    ffn2.bench(&mut group, gpu, "decoder_ffn2_split_k", move || {
        Epilogue::SplitK { splits }
    });
    decoder_ffn2_norm(&mut group, gpu, (1, d, ff));
    group.finish();
}

/// The decoder's FFN2 with its bias + residual + LayerNorm in the same launch
/// (`Epilogue::SplitKNorm`), in every precision as `decoder_ffn2_split_k_norm/{precision}`.
fn decoder_ffn2_norm(group: &mut Group<'_>, gpu: &Gpu, shape: (usize, usize, usize)) {
    let (mut ffn2, splits) = split_k_linear(gpu, shape);
    let (n, m, _) = shape;
    let (residual, gamma, beta) = (random(gpu, n * m), random(gpu, m), random(gpu, m));
    let mut y = zeros(gpu, n * m);
    let mut arrived = zeros::<u32>(gpu, 1);
    let mut throughput = ffn2.throughput();
    if let Throughput::ElementsAndBytes { bytes, .. } = &mut throughput {
        // Also reads the residual, gamma and beta and writes y.
        *bytes += F32 * (2 * n * m + 2 * m) as u64;
    }
    group.throughput(throughput);
    let s = gpu.stream();
    let Linear {
        shape,
        x,
        weight,
        bias,
        out,
    } = &mut ffn2;
    for precision in PRECISIONS {
        let kernels = LinearKernels::load_precision(gpu, precision).expect("loading linear.cu");
        let id = format!("decoder_ffn2_split_k_norm/{precision}");
        bench_launches(group, id, s, || {
            let norm = Box::new(RowNorm {
                residual: residual.as_view(),
                gamma: gamma.as_view(),
                beta: beta.as_view(),
                eps: LN_EPS as f32,
                y: y.as_view_mut(),
                plus: None,
                arrived: arrived.as_view_mut(),
            });
            let epilogue = Epilogue::SplitKNorm { splits, norm };
            kernels.run(s, x, weight, bias, *shape, out, epilogue)
        });
    }
}

/// One encoder head's tables on the device, as the engine uploads them.
struct Head {
    plan: HeadPlan,
    slot_token: DeviceBuffer<u32>,
    sr: DeviceBuffer<f32>,
    bias: Option<DeviceBuffer<f32>>,
    /// No padding: `(1, L_all)` zeros.
    key_pad: DeviceBuffer<u8>,
    /// Split workspace for up to one split per key chunk (counters zero).
    partial: DeviceBuffer<f32>,
    arrived: DeviceBuffer<u32>,
}

impl Head {
    fn new(gpu: &Gpu, weights: &Weights, h: usize) -> Head {
        let plan = HeadPlan::new(&weights.config, h);
        let table = weights.rel_bias_tables.get(&plan.w).map(|t| t.as_slice());
        let s = gpu.stream();
        let bias = plan
            .gathered_bias(table)
            .expect("the synthetic model's bias tables");
        let mut head = Head {
            slot_token: upload(s, &plan.partition_index()).expect("upload"),
            sr: upload(s, &plan.sr_table()).expect("upload"),
            bias: bias.map(|b| upload(s, &b).expect("upload")),
            key_pad: zeros(gpu, plan.l_all),
            partial: zeros(gpu, 1),
            arrived: zeros(gpu, 1),
            plan,
        };
        let shape = head.shape();
        head.partial = zeros(gpu, KeySplit::partial_len(&shape, shape.n_keys));
        head.arrived = zeros(gpu, KeySplit::arrived_len(&shape));
        head
    }

    /// This head's attention at batch 1.
    fn shape(&self) -> AttentionShape {
        self.plan.attention_shape(1)
    }

    /// This head's attention for batch 1 reading its q, k, v from `qkv` (`(3, H, L_all, hd)`,
    /// the QKV projection's window layout) and writing its channels of `concat`, its keys
    /// split `splits` ways through the head's workspace.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &mut self,
        kernel: &WindowAttentionKernels,
        s: &CudaStream,
        qkv: &DeviceBuffer<f32>,
        heads: usize,
        concat: &mut DeviceBuffer<f32>,
        splits: usize,
    ) -> PreparedAttention {
        let shape = self.shape();
        let p = &self.plan;
        let block = p.l_all * p.hd;
        let at = |which: usize| qkv.slice((which * heads + p.head) * block..);
        let layout = SlotLayout {
            batch: block,
            slot: p.hd,
        };
        let ops = AttentionOperands {
            q: at(0),
            q_layout: layout,
            k: at(1),
            v: at(2),
            kv_layout: layout,
            bias: self.bias.as_ref().map(|b| b.as_view()),
            key_pad: self.key_pad.as_view(),
            sr: Some(self.sr.as_view()),
            slot_token: Some(self.slot_token.as_view()),
            out: concat.as_view_mut(),
            out_row: heads * p.hd,
            out_channel: p.channel_offset,
            head_out: None,
            split: (splits > 1).then(|| KeySplit {
                splits,
                partial: self.partial.as_view_mut(),
                arrived: self.arrived.as_view_mut(),
            }),
        };
        kernel.prepare(s, &shape, ops).expect("a valid attention")
    }
}

/// FLOPs of one head's attention at batch 1 (`cswintt::flops`): `2 * 2*L_all^2*hd`.
fn head_flops(p: &HeadPlan) -> u64 {
    (4 * p.l_all * p.l_all * p.hd) as u64
}

/// Per precision: one head per window size with the engine's key splits, the `w = 1` head
/// unsplit, then all heads in one fused launch with the engine's splits, unsplit, and split
/// evenly `N` ways.
fn window_attention(c: &mut Criterion, gpu: &Gpu, weights: &Weights) {
    let cfg = &weights.config;
    let s = gpu.stream();
    let mut heads: Vec<Head> = (0..cfg.nhead).map(|h| Head::new(gpu, weights, h)).collect();
    let qkv = random(gpu, 3 * cfg.l_all() * cfg.d_model);
    let mut concat = zeros(gpu, cfg.l_all() * cfg.d_model);
    let sms = gpu.multiprocessors().expect("the multiprocessor count");
    let shapes: Vec<AttentionShape> = heads.iter().map(Head::shape).collect();
    let engine_splits = KeySplit::for_heads(&shapes, sms);
    let all: u64 = heads.iter().map(|h| head_flops(&h.plan)).sum();

    let mut group = c.benchmark_group("window_attention");
    for precision in PRECISIONS {
        let kernel = WindowAttentionKernels::load_precision(gpu, precision)
            .expect("loading window_attention.cu");
        let mut prepare = |heads: &mut [Head], splits: &dyn Fn(usize) -> usize| {
            heads
                .iter_mut()
                .enumerate()
                .map(|(h, head)| head.prepare(&kernel, s, &qkv, cfg.nhead, &mut concat, splits(h)))
                .collect::<Vec<PreparedAttention>>()
        };
        let engine = prepare(&mut heads, &|h| engine_splits[h]);
        let unsplit = prepare(&mut heads, &|_| 1);
        let mut windows_done = Vec::new();
        for (h, head) in heads.iter().enumerate() {
            if windows_done.contains(&head.plan.w) {
                continue; // the shifted heads cost the same as the unshifted ones
            }
            windows_done.push(head.plan.w);
            group.throughput(Throughput::Elements(head_flops(&head.plan)));
            let id = format!("{precision}/w{}", head.plan.w);
            bench_launches(&mut group, &id, s, || kernel.launch(s, &engine[h]));
            if head.plan.w == 1 {
                bench_launches(&mut group, format!("{id}/unsplit"), s, || {
                    kernel.launch(s, &unsplit[h])
                });
            }
        }
        group.throughput(Throughput::Elements(all));
        let fused = format!("{precision}/fused_{}_heads", heads.len());
        bench_launches(&mut group, &fused, s, || kernel.launch_fused(s, &engine));
        bench_launches(&mut group, format!("{fused}/unsplit"), s, || {
            kernel.launch_fused(s, &unsplit)
        });
        for n in [2, 3, 4, 6, 11] {
            let even = prepare(&mut heads, &|_| n);
            bench_launches(&mut group, format!("{fused}/splits{n}"), s, || {
                kernel.launch_fused(s, &even)
            });
        }
        cross_attention(&mut group, gpu, &kernel, cfg);
    }
    group.finish();
    // The prepared launches hold the raw addresses of `qkv`, `concat` and the heads' tables
    // and workspaces, which live to the end of this function.
}

/// Plain LayerNorm, and the add + LayerNorm epilogues of the encoder's k-split linears.
fn layer_norm(c: &mut Criterion, gpu: &Gpu, cfg: &Config) {
    let kernel = LayerNormKernels::load(gpu).expect("loading layer_norm.cu");
    let s = gpu.stream();
    let (rows, d) = (cfg.l_all(), cfg.d_model);
    let (gamma, beta, bias) = (random(gpu, d), random(gpu, d), random(gpu, d));
    let residual = random(gpu, rows * d);
    let mut y = zeros(gpu, rows * d);
    let eps = LN_EPS as f32;
    let mut norm =
        |input: NormInput<'_>| kernel.forward(s, input, &gamma, &beta, eps, &mut y, Extra::Nothing);
    let mut group = c.benchmark_group("layer_norm");

    // Reads x and writes y.
    group.throughput(Throughput::Bytes(F32 * (2 * rows * d + 2 * d) as u64));
    bench_launches(&mut group, "layer_norm", s, || {
        norm(NormInput::of(residual.as_view()))
    });

    for (after, k) in [("output_projection", d), ("ffn2", cfg.dim_feedforward)] {
        let splits = split_k(rows, d, k);
        let parts = random(gpu, splits * rows * d);
        // Reads the partial products and the residual, writes y.
        let bytes = F32 * ((splits + 2) * rows * d + 3 * d) as u64;
        group.throughput(Throughput::Bytes(bytes));
        bench_launches(&mut group, format!("add_layer_norm/{after}"), s, || {
            norm(NormInput {
                parts: parts.as_view(),
                n_parts: splits,
                bias: Some(bias.as_view()),
                residual: Some(residual.as_view()),
            })
        });
    }
    group.finish();
}

/// Layer 0's cross attention in the decoder: the one query against its k and v in the
/// rows of all layers' keys and values (`decoder_memory_kv`'s output), 8 heads in one launch.
fn cross_attention(
    group: &mut Group<'_>,
    gpu: &Gpu,
    kernel: &WindowAttentionKernels,
    cfg: &Config,
) {
    let (l_all, d, h) = (cfg.l_all(), cfg.d_model, cfg.nhead);
    let kv_row = cfg.dec_layers * 2 * d;
    let s = gpu.stream();
    let (q, key_pad, mem) = (
        random(gpu, d),
        zeros::<u8>(gpu, l_all),
        random(gpu, l_all * kv_row),
    );
    let mut out = zeros(gpu, d);
    let shape = AttentionShape {
        w: 1,
        hd: cfg.hd(),
        n_queries: 1,
        n_keys: l_all,
        batch: 1,
        heads: h,
        head_stride: cfg.hd(),
    };
    let sms = gpu.multiprocessors().expect("the multiprocessor count");
    let splits = KeySplit::for_heads(&[shape], sms)[0];
    let mut partial = zeros(gpu, KeySplit::partial_len(&shape, splits));
    let mut arrived = zeros(gpu, KeySplit::arrived_len(&shape));
    let ops = AttentionOperands {
        q: q.as_view(),
        q_layout: SlotLayout { batch: d, slot: 0 },
        k: mem.slice(..),
        v: mem.slice(d..),
        kv_layout: SlotLayout {
            batch: kv_row,
            slot: kv_row,
        },
        bias: None,
        key_pad: key_pad.as_view(),
        sr: None,
        slot_token: None,
        out: out.as_view_mut(),
        out_row: d,
        out_channel: 0,
        head_out: None,
        split: (splits > 1).then(|| KeySplit {
            splits,
            partial: partial.as_view_mut(),
            arrived: arrived.as_view_mut(),
        }),
    };
    let prepared = kernel.prepare(s, &shape, ops).expect("a valid attention");
    // One query against L_all keys, scores and output (`cswintt::flops`); k and v read once.
    group.throughput(Throughput::ElementsAndBytes {
        elements: (4 * l_all * d) as u64,
        bytes: F32 * (2 * l_all * d + 2 * d) as u64,
    });
    let id = format!("{}/decoder_cross_attention", kernel.precision());
    bench_launches(group, id, s, || kernel.launch(s, &prepared));
}
