//! Criterion bench groups of the CNN layers besides the convolution (`conv2d.rs` has that),
//! one group per op, at the training shapes of the five torchvision models (batch 32, 224 x
//! 224 inputs):
//! - `max_pool`: the stem's k3 s2 p1 pooling of ResNet-50 / DenseNet-121 (64 channels on
//!   112 x 112) and ShuffleNet v2 (24 channels), and AlexNet's first k3 s2 (64 channels on
//!   55 x 55); passes `forward/f32`, `forward/bf16` and `backward/f32`.
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
use attnrt::kernels::max_pool::MaxPoolKernels;
use attnrt::kernels::pool::Pool2d;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Throughput};
use cudarc::driver::DeviceRepr;
use half::bf16;

type Group<'a> = BenchmarkGroup<'a, WallTime>;

fn main() {
    let Some(gpu) = gpu_or_skip("cnn_layers bench") else {
        return;
    };
    let mut c = common::criterion();
    let mut group = c.benchmark_group("max_pool");
    max_pool(&mut group, &gpu);
    group.finish();
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
            kernels.forward_bf16(s, &p, &xb, &mut yb, &mut idx)
        });
        group.throughput(Throughput::Bytes(4 * n + 8 * m));
        bench_launches(group, gpu, format!("{name}/backward/f32"), || {
            kernels.backward(s, &p, &y, &idx, &mut dx)
        });
    }
}
