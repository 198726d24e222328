//! Criterion bench group `conv2d`: cuDNN's convolutions ([`Conv2dKernels`]) on the shapes that
//! matter, in f32 (FMA), tf32 and bf16. Ids `conv2d/<shape>/<precision>/<pass>`:
//! - the tracker's backbone at batch 1 on the 384 x 384 search crop (ResNet-50 to layer3, batch
//!   norm folded into a bias): the stem, each stage's 3x3 and 1x1 convolutions, the strided
//!   ones, the downsample shortcut, and a corner-head 3x3; passes `fused` (bias + ReLU, or
//!   bias + residual + ReLU for a bottleneck's last 1x1, through cuDNN's fused call) and
//!   `unfused` (the plain convolution, then our epilogue kernel), which tells whether the
//!   fused call pays;
//! - training shapes at batch 32 on 224 x 224 inputs (ResNet-50 3x3s, ResNeXt's grouped 3x3,
//!   ShuffleNet's depthwise 3x3): passes `forward`, `backward_data`, `backward_filter`.
//!
//! Each shape prints the plan cuDNN chose (algorithms, math, workspace, fused or not) once.
//! Timing: CUDA events around all of a sample's calls, queued back to back. Throughput: the
//! convolution's FLOPs as criterion's elements (elem/s reads as FLOP/s).
//!
//! Without a usable GPU, compiled kernels or cuDNN it prints one line saying why and exits 0
//! (`ATTNRT_REQUIRE_GPU=1` makes that a failure).
//!
//! Run: `cargo bench --bench conv2d [-- FILTER] [--warm-up-time S] [--measurement-time S]`.

// The shared bench helpers; this bench needs only their criterion settings.
#[allow(dead_code)]
mod common;

use std::time::Duration;

use attnrt::Error;
use attnrt::base::Precision;
use attnrt::gpu::testing::{REQUIRE_GPU_VAR, gpu_or_skip};
use attnrt::gpu::{DeviceBuffer, Gpu, time_ms, upload};
use attnrt::kernels::conv2d::{Conv2dKernels, Conv2dShape, Element, Epilogue, Passes};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Throughput};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Group<'a> = BenchmarkGroup<'a, WallTime>;

/// What follows a tracker convolution.
#[derive(Clone, Copy, PartialEq)]
enum Tail {
    BiasRelu,
    BiasResidualRelu,
    Bias,
}

/// The tracker's backbone and head at batch 1: (name, shape, epilogue).
fn tracker_shapes() -> Vec<(&'static str, Conv2dShape, Tail)> {
    let s =
        |hw: usize, cin: usize, cout: usize, k: usize| Conv2dShape::new(1, [hw, hw], cin, cout, k);
    vec![
        (
            "stem_7x7_s2",
            s(384, 3, 64, 7).with_stride(2).with_pad(3),
            Tail::BiasRelu,
        ),
        ("layer1_1x1_in", s(96, 256, 64, 1), Tail::BiasRelu),
        ("layer1_3x3", s(96, 64, 64, 3).with_pad(1), Tail::BiasRelu),
        ("layer1_1x1_out", s(96, 64, 256, 1), Tail::BiasResidualRelu),
        (
            "layer2_3x3_s2",
            s(96, 128, 128, 3).with_stride(2).with_pad(1),
            Tail::BiasRelu,
        ),
        (
            "layer2_downsample",
            s(96, 256, 512, 1).with_stride(2),
            Tail::Bias,
        ),
        ("layer2_3x3", s(48, 128, 128, 3).with_pad(1), Tail::BiasRelu),
        (
            "layer3_3x3_s2",
            s(48, 256, 256, 3).with_stride(2).with_pad(1),
            Tail::BiasRelu,
        ),
        ("layer3_1x1_in", s(24, 1024, 256, 1), Tail::BiasRelu),
        ("layer3_3x3", s(24, 256, 256, 3).with_pad(1), Tail::BiasRelu),
        (
            "layer3_1x1_out",
            s(24, 256, 1024, 1),
            Tail::BiasResidualRelu,
        ),
        ("head_3x3", s(24, 256, 256, 3).with_pad(1), Tail::BiasRelu),
    ]
}

/// Training shapes at batch 32, 224 x 224 inputs.
fn training_shapes() -> Vec<(&'static str, Conv2dShape)> {
    let s =
        |hw: usize, cin: usize, cout: usize, k: usize| Conv2dShape::new(32, [hw, hw], cin, cout, k);
    vec![
        ("resnet50_stem", s(224, 3, 64, 7).with_stride(2).with_pad(3)),
        ("resnet50_layer1_3x3", s(56, 64, 64, 3).with_pad(1)),
        ("resnet50_layer3_3x3", s(14, 256, 256, 3).with_pad(1)),
        ("resnet50_layer1_1x1", s(56, 64, 256, 1)),
        (
            "resnext50_layer2_3x3_g32",
            s(28, 256, 256, 3).with_pad(1).with_groups(32),
        ),
        (
            "shufflenet_depthwise_3x3",
            s(28, 116, 116, 3).with_pad(1).with_groups(116),
        ),
    ]
}

fn main() {
    let Some(gpu) = gpu_or_skip("conv2d bench") else {
        return;
    };
    let mut c = common::criterion();
    let mut group = c.benchmark_group("conv2d");
    for precision in Precision::ALL {
        let conv = match Conv2dKernels::load(&gpu, precision) {
            Ok(conv) => conv,
            Err(e @ Error::MissingLibrary { .. })
                if std::env::var(REQUIRE_GPU_VAR).map_or(true, |v| v != "1") =>
            {
                println!("conv2d bench: skipped: {e}");
                return;
            }
            Err(e) => panic!("conv2d bench: {e}"),
        };
        if precision == Precision::Bf16 {
            bench_precision::<bf16>(&mut group, &gpu, conv);
        } else {
            bench_precision::<f32>(&mut group, &gpu, conv);
        }
    }
    group.finish();
    c.final_summary();
}

/// `n` values uniform in [-1, 1) on the device (the values do not change the time).
fn random<T: Element>(gpu: &Gpu, n: usize) -> DeviceBuffer<T> {
    let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
    let host: Vec<T> = (0..n)
        .map(|_| T::from_f32(rng.random_range(-1.0f32..1.0)))
        .collect();
    upload(gpu.stream(), &host).expect("uploading bench data")
}

/// Benches `call` (one convolution call) as `id`, all of a sample's calls back to back
/// between one pair of CUDA events; a call cuDNN refuses is reported and not timed, so the
/// other shapes still run.
fn bench_calls(
    group: &mut Group<'_>,
    gpu: &Gpu,
    id: String,
    mut call: impl FnMut() -> attnrt::Result<()>,
) {
    if let Err(e) = call() {
        println!("{id}: not timed: {e}");
        return;
    }
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let ms = time_ms(gpu.stream(), || (0..iters).try_for_each(|_| call()))
                .expect("timed convolutions");
            Duration::from_secs_f64(ms / 1e3)
        })
    });
}

fn bench_precision<T: Element>(group: &mut Group<'_>, gpu: &Gpu, mut conv: Conv2dKernels) {
    let precision = conv.precision();
    for (name, shape, tail) in tracker_shapes() {
        if let Err(e) = conv.prepare(&shape, Passes::Forward) {
            println!("conv2d {name} {precision}: not timed: {e}");
            continue;
        }
        let x = random::<T>(gpu, shape.input_len());
        let w = random::<T>(gpu, shape.weight_len());
        let bias = random::<T>(gpu, shape.out_channels);
        let residual = random::<T>(gpu, shape.output_len());
        let mut y = random::<T>(gpu, shape.output_len());
        group.throughput(Throughput::Elements(shape.flops() as u64));
        for fused in [true, false] {
            conv.set_fused(fused);
            let pass = if fused { "fused" } else { "unfused" };
            bench_calls(group, gpu, format!("{name}/{precision}/{pass}"), || {
                let epilogue = match tail {
                    Tail::BiasRelu => Epilogue::bias_relu(bias.as_view()),
                    Tail::BiasResidualRelu => {
                        Epilogue::bias_add_relu(bias.as_view(), residual.as_view())
                    }
                    Tail::Bias => Epilogue::bias(bias.as_view()),
                };
                conv.forward(&shape, &x, &w, epilogue, &mut y)
            });
        }
        conv.set_fused(true);
        println!("{}", conv.describe(&shape).unwrap_or_default());
    }
    for (name, shape) in training_shapes() {
        if let Err(e) = conv.prepare(&shape, Passes::Training) {
            println!("conv2d {name} {precision}: not timed: {e}");
            continue;
        }
        let x = random::<T>(gpu, shape.input_len());
        let w = random::<T>(gpu, shape.weight_len());
        let mut y = random::<T>(gpu, shape.output_len());
        let dy = random::<T>(gpu, shape.output_len());
        let mut dx = random::<T>(gpu, shape.input_len());
        let mut dw = random::<T>(gpu, shape.weight_len());
        group.throughput(Throughput::Elements(shape.flops() as u64));
        bench_calls(group, gpu, format!("{name}/{precision}/forward"), || {
            conv.forward(&shape, &x, &w, Epilogue::none(), &mut y)
        });
        bench_calls(
            group,
            gpu,
            format!("{name}/{precision}/backward_data"),
            || conv.backward_data(&shape, &w, &dy, &mut dx, false),
        );
        bench_calls(
            group,
            gpu,
            format!("{name}/{precision}/backward_filter"),
            || conv.backward_filter(&shape, &x, &dy, &mut dw, false),
        );
        println!("{}", conv.describe(&shape).unwrap_or_default());
    }
    println!(
        "conv2d {precision}: {} MiB of workspace shared by every shape",
        conv.workspace_bytes() >> 20
    );
}
