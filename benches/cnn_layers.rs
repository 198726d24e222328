//! Criterion bench groups of the CNN layers besides the convolution (`conv2d.rs` has that),
//! one group per op, at the training shapes of the five torchvision models (batch 32, 224 x
//! 224 inputs):
//! - `max_pool`: the stem's k3 s2 p1 pooling of ResNet-50 / DenseNet-121 (64 channels on
//!   112 x 112) and ShuffleNet v2 (24 channels), and AlexNet's first k3 s2 (64 channels on
//!   55 x 55); passes `forward/f32`, `forward/bf16` and `backward/f32`;
//! - `batch_norm`: train-mode forward (statistics and normalisation, the fused ReLU) and
//!   backward of ResNet-50's widest (64 channels on 112 x 112) and a deep one (1024 on 14 x
//!   14), f32 and bf16;
//! - `avg_pool`: DenseNet-121's first transition (k2 s2, 128 channels on 56 x 56) and
//!   ResNet-50's global pooling (2048 on 7 x 7), forward and backward, f32 and bf16;
//! - `dropout`: AlexNet's classifier input (9216 features), f32 and bf16;
//! - `channel_copy`: a DenseNet concatenation (32 channels into 256 on 56 x 56) and
//!   ShuffleNet's shuffle (116 channels on 28 x 28), f32 and bf16.
//!
//! Timing: CUDA events around all of a sample's launches, queued back to back. Throughput:
//! the bytes a pass must move at least (input read once, output and indices written once; the
//! backward reads dy and the indices and writes dx).
//!
//! Without a usable GPU or compiled kernels it prints one line saying why and exits 0
//! (`ATTNRT_REQUIRE_GPU=1` makes that a failure).
//!
//! Run: `cargo bench --bench cnn_layers [-- FILTER] [--warm-up-time S] [--measurement-time S]`.

// The shared bench helpers; this bench needs only their criterion settings.
#[allow(dead_code)]
mod common;

use std::time::Duration;

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::gpu::{DeviceBuffer, Gpu, time_ms, upload};
use attnrt::kernels::avg_pool::{AvgPoolKernels, AvgWindows};
use attnrt::kernels::batch_norm::{Affine, BatchNormKernels, NormShape, Saved};
use attnrt::kernels::channel_copy::{ChannelCopyKernels, Copy2d};
use attnrt::kernels::conv2d::Element;
use attnrt::kernels::dropout::DropoutKernels;
use attnrt::kernels::max_pool::MaxPoolKernels;
use attnrt::kernels::pool::Pool2d;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Throughput};
use cudarc::driver::DeviceRepr;
use half::bf16;

type Group<'a> = BenchmarkGroup<'a, WallTime>;
/// One op's bench group.
type GroupFn = fn(&mut Group<'_>, &Gpu);

fn main() {
    let Some(gpu) = gpu_or_skip("cnn_layers bench") else {
        return;
    };
    let mut c = common::criterion();
    let groups: [(&str, GroupFn); 5] = [
        ("max_pool", max_pool),
        ("batch_norm", batch_norm::<f32>),
        ("avg_pool", avg_pool),
        ("dropout", dropout),
        ("channel_copy", channel_copy),
    ];
    for (name, run) in groups {
        let mut group = c.benchmark_group(name);
        run(&mut group, &gpu);
        if name == "batch_norm" {
            batch_norm::<bf16>(&mut group, &gpu);
        }
        group.finish();
    }
    c.final_summary();
}

/// `n` copies of `v` on the device (the values do not change the time).
fn filled<T: DeviceRepr + Copy>(gpu: &Gpu, n: usize, v: T) -> DeviceBuffer<T> {
    upload(gpu.stream(), &vec![v; n]).expect("uploading bench data")
}

/// Benches `launch` as `id`, all of a sample's launches back to back between one pair of
/// CUDA events.
fn bench_launches(
    group: &mut Group<'_>,
    gpu: &Gpu,
    id: String,
    mut launch: impl FnMut() -> attnrt::Result<()>,
) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let ms = time_ms(gpu.stream(), || (0..iters).try_for_each(|_| launch()))
                .expect("timed launches");
            Duration::from_secs_f64(ms / 1e3)
        })
    });
}

fn max_pool(group: &mut Group<'_>, gpu: &Gpu) {
    let kernels = MaxPoolKernels::load(gpu).expect("loading max_pool.cu");
    let s = gpu.stream();
    let pool = |channels: usize, size: usize, pad: usize| Pool2d {
        batch: 32,
        channels,
        height: size,
        width: size,
        kernel: 3,
        stride: 2,
        pad,
    };
    for (name, p) in [
        ("resnet_stem", pool(64, 112, 1)),
        ("shufflenet_stem", pool(24, 112, 1)),
        ("alexnet_first", pool(64, 55, 0)),
    ] {
        let (n, m) = (p.input_len() as u64, p.output_len() as u64);
        let x = filled(gpu, p.input_len(), 0.5f32);
        let xb = filled(gpu, p.input_len(), bf16::from_f32(0.5));
        let mut y = filled(gpu, p.output_len(), 0.0f32);
        let mut yb = filled(gpu, p.output_len(), bf16::ZERO);
        let mut idx = filled(gpu, p.output_len(), 0i32);
        let mut dx = filled(gpu, p.input_len(), 0.0f32);
        group.throughput(Throughput::Bytes(4 * n + 8 * m));
        bench_launches(group, gpu, format!("{name}/forward/f32"), || {
            kernels.forward(s, &p, &x, &mut y, &mut idx)
        });
        group.throughput(Throughput::Bytes(2 * n + 6 * m));
        bench_launches(group, gpu, format!("{name}/forward/bf16"), || {
            kernels.forward(s, &p, &xb, &mut yb, &mut idx)
        });
        group.throughput(Throughput::Bytes(4 * n + 8 * m));
        bench_launches(group, gpu, format!("{name}/backward/f32"), || {
            kernels.backward(s, &p, &y, &idx, &mut dx)
        });
    }
}

fn batch_norm<T: Element>(group: &mut Group<'_>, gpu: &Gpu) {
    let kernels = BatchNormKernels::load(gpu).expect("loading batch_norm.cu");
    let s = gpu.stream();
    let bytes = std::mem::size_of::<T>() as u64;
    for (name, rows, c) in [
        ("resnet_64x112", 32 * 112 * 112, 64),
        ("resnet_1024x14", 32 * 14 * 14, 1024),
    ] {
        let shape = NormShape { rows, channels: c };
        let n = (rows * c) as u64;
        let x = filled(gpu, rows * c, T::from_f32(0.5));
        let mut y = filled(gpu, rows * c, T::default());
        let mut dx = filled(gpu, rows * c, T::default());
        let (g, b) = (filled(gpu, c, 1.0f32), filled(gpu, c, 0.0f32));
        let (mut dg, mut db) = (filled(gpu, c, 0.0f32), filled(gpu, c, 0.0f32));
        let mut saved = Saved::new(gpu, c).expect("statistics");
        let mut work = filled(gpu, shape.workspace_len(), 0.0f32);
        // Statistics read x once, the normalisation reads it again and writes y.
        group.throughput(Throughput::Bytes(3 * bytes * n));
        bench_launches(
            group,
            gpu,
            format!("{name}/forward_relu/{}", T::NAME),
            || {
                let affine = Affine {
                    gamma: &g,
                    beta: &b,
                };
                kernels.forward_train(
                    s, shape, &x, affine, &mut y, &mut saved, &mut work, None, true,
                )
            },
        );
        // The reduction reads x, dy, y; the application reads them again and writes dx.
        group.throughput(Throughput::Bytes(7 * bytes * n));
        bench_launches(
            group,
            gpu,
            format!("{name}/backward_relu/{}", T::NAME),
            || {
                kernels.backward(
                    s,
                    shape,
                    &x,
                    &x,
                    Some(&y),
                    &saved,
                    &g,
                    (&mut dg, &mut db),
                    &mut dx,
                    &mut work,
                )
            },
        );
    }
}

fn avg_pool(group: &mut Group<'_>, gpu: &Gpu) {
    let kernels = AvgPoolKernels::load(gpu).expect("loading avg_pool.cu");
    let s = gpu.stream();
    for (name, w) in [
        (
            "densenet_transition",
            AvgWindows::Fixed(Pool2d::new(32, [56, 56, 128], 2, 2, 0)),
        ),
        (
            "resnet_global",
            AvgWindows::Adaptive {
                input: [32, 7, 7, 2048],
                out: [1, 1],
            },
        ),
    ] {
        let (n, m) = (w.input_len(), w.output_len());
        let bytes = (n + m) as u64;
        let (x, mut y) = (filled(gpu, n, 0.5f32), filled(gpu, m, 0.0f32));
        let (xb, mut yb) = (
            filled(gpu, n, bf16::from_f32(0.5)),
            filled(gpu, m, bf16::ZERO),
        );
        group.throughput(Throughput::Bytes(4 * bytes));
        bench_launches(group, gpu, format!("{name}/forward/f32"), || {
            kernels.forward(s, &w, &x, &mut y)
        });
        let mut dx = filled(gpu, n, 0.0f32);
        bench_launches(group, gpu, format!("{name}/backward/f32"), || {
            kernels.backward(s, &w, &y, &mut dx)
        });
        group.throughput(Throughput::Bytes(2 * bytes));
        bench_launches(group, gpu, format!("{name}/forward/bf16"), || {
            kernels.forward(s, &w, &xb, &mut yb)
        });
    }
}

fn dropout(group: &mut Group<'_>, gpu: &Gpu) {
    let kernels = DropoutKernels::load(gpu).expect("loading dropout.cu");
    let s = gpu.stream();
    let n = 32 * 9216;
    let mut x = filled(gpu, n, 0.5f32);
    let mut xb = filled(gpu, n, bf16::from_f32(0.5));
    group.throughput(Throughput::Bytes(8 * n as u64));
    bench_launches(group, gpu, "alexnet_classifier/f32".into(), || {
        kernels.run(s, &mut x, n, 0.5, 7)
    });
    group.throughput(Throughput::Bytes(4 * n as u64));
    bench_launches(group, gpu, "alexnet_classifier/bf16".into(), || {
        kernels.run(s, &mut xb, n, 0.5, 7)
    });
}

fn channel_copy(group: &mut Group<'_>, gpu: &Gpu) {
    let kernels = ChannelCopyKernels::load(gpu).expect("loading channel_copy.cu");
    let s = gpu.stream();
    for (name, copy) in [
        ("densenet_concat", Copy2d::put(32 * 56 * 56, 256, 128, 32)),
        ("shufflenet_shuffle", Copy2d::transpose(32 * 28 * 28, 2, 58)),
    ] {
        let moved = (2 * copy.rows * copy.a * copy.b) as u64;
        let (x, mut y) = (
            filled(gpu, copy.x_len(), 0.5f32),
            filled(gpu, copy.y_len(), 0.0f32),
        );
        let (xb, mut yb) = (
            filled(gpu, copy.x_len(), bf16::from_f32(0.5)),
            filled(gpu, copy.y_len(), bf16::ZERO),
        );
        group.throughput(Throughput::Bytes(4 * moved));
        bench_launches(group, gpu, format!("{name}/f32"), || {
            kernels.run(s, &copy, &x, &mut y, false)
        });
        group.throughput(Throughput::Bytes(2 * moved));
        bench_launches(group, gpu, format!("{name}/bf16"), || {
            kernels.run(s, &copy, &xb, &mut yb, false)
        });
    }
}
