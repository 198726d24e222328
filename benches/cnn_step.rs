//! Samples per second of one GPU training step of each torchvision CNN, and the device memory
//! it holds, for the table against PyTorch (`docs/PERF.md`): per model, input size (224 and
//! 32; AlexNet's smallest is 63, so its small size is 64) and precision (f32 with cuDNN's FMA
//! math, no TF32; bf16 activations with f32 master weights), batch 64 by default.
//!
//! A step is the replica's forward + backward (`Replica::pass`) and its SGD update, on a batch
//! already on the GPU (random images): the loader and the copy to the GPU are outside it, as
//! in a PyTorch loop timing `loss.backward(); opt.step()` on resident tensors. Two warm-up
//! steps run first (the first allocates and lets cuDNN benchmark its algorithms); then
//! `--steps` steps back to back between two CUDA events.
//!
//! Memory: the device's used memory (`cuMemGetInfo`) after the warm-up minus before the
//! replica existed: parameters, gradients, optimizer state, activations, the gradient pool
//! and the cuDNN/cuBLASLt workspaces, as allocated (PyTorch's `max_memory_reserved` is the
//! comparable figure; nothing is allocated after the first step). Peak: the most memory in
//! use at once during the timed steps, from the memory pool every buffer comes from
//! ([`Gpu::memory_peak`], reset after the warm-up). It counts every buffer attnrt holds, its
//! own pool of free buffers included, so it is the figure to hold against PyTorch's
//! `max_memory_reserved` (which counts the caching allocator's free blocks; its
//! `max_memory_allocated` does not). Not what the device shows as used (which includes the
//! context, cuDNN's own allocations and other processes on the GPU); it sees a step's
//! transient peak, which a before/after reading cannot. Held: what the replica's buffers add up to by what they are for
//! (`Replica::held`: state, shard buffers, kept activations, the gradient pool, filters, cuDNN's
//! workspace, ...), after the timed steps: where that peak goes.
//!
//! Output: two lines per configuration (the figures, then `held, MiB:`), then a JSON array
//! with one object per configuration (`model`, `size`, `batch`, `precision`, `ms_per_step`,
//! `samples_per_s`, `memory_mib`, `peak_mib` (null where the allocator keeps no mark),
//! `held_mib` (MiB by what they are for), or `error`).
//!
//! `--profile` brackets the timed steps (not the set-up or warm-up) with the profiler's start
//! and stop, for `ncu --profile-from-start off` (`scripts/ncu-cnn.sh`: where a step's time
//! goes, kernel by kernel, against PyTorch's).
//!
//! Run: `cargo bench --bench cnn_step -- [--steps N] [--batch B] [--models a,b]
//! [--sizes 224,32] [--precisions f32,bf16] [--profile]` (a plain program; skips without a
//! GPU, fails instead with `ATTNRT_REQUIRE_GPU=1`).

#[allow(dead_code)] // each bench uses part of it
mod common;

use std::sync::Arc;

use attnrt::Result;
use attnrt::gpu::testing::gpu_or_skip;
use attnrt::gpu::{Gpu, time_ms};
use attnrt::train::data::ImageShape;
use attnrt::train::gpu::replica::Replica;
use attnrt::train::models::cnn::Arch;
use attnrt::train::{ModelSpec, Optimizer, Precision, State};
use common::flags::Flags;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Options {
    steps: usize,
    batch: usize,
    models: Vec<Arch>,
    sizes: Vec<usize>,
    precisions: Vec<Precision>,
    profile: bool,
}

fn options() -> Options {
    let mut o = Options {
        steps: 10,
        batch: 64,
        models: Arch::ALL.to_vec(),
        sizes: vec![224, 32],
        precisions: vec![Precision::F32, Precision::Bf16],
        profile: false,
    };
    let mut flags = Flags::new("cnn_step");
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--steps" => o.steps = flags.count("--steps N (N > 0)"),
            "--batch" => o.batch = flags.count("--batch B (B > 0)"),
            "--models" => {
                let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
                let text = format!("--models M[,M..] of {}", names.join(", "));
                o.models = flags.list_with(&text, Arch::from_name)
            }
            "--sizes" => o.sizes = flags.list("--sizes S[,S..] (input sides)"),
            "--precisions" => o.precisions = flags.list("--precisions f32|bf16[,..]"),
            "--profile" => o.profile = true,
            _ => {} // cargo bench passes `--bench`
        }
    }
    o
}

fn main() {
    // Flags first: a typo is reported on any machine.
    let o = options();
    let Some(gpu) = gpu_or_skip("cnn_step") else {
        return;
    };
    println!(
        "cnn_step: batch {}, {} timed steps each, on {}",
        o.batch,
        o.steps,
        gpu.describe()
    );
    let mut rows = Vec::new();
    for &arch in &o.models {
        for &size in &o.sizes {
            let size = size.max(arch.min_size().next_multiple_of(2));
            for &precision in &o.precisions {
                let row = match measure(&gpu, arch, size, precision, &o) {
                    Ok(Measured {
                        ms,
                        mib,
                        peak,
                        held,
                    }) => {
                        let per_s = o.batch as f64 * 1e3 / ms;
                        let peak_text = peak.map_or("-".into(), |p| format!("{p:.0}"));
                        println!(
                            "{:<20} {size:>4} {precision:<5} {ms:>9.2} ms/step {per_s:>9.0} samples/s {mib:>7.0} MiB (peak {peak_text} MiB)",
                            arch.name()
                        );
                        let held: serde_json::Map<String, serde_json::Value> = held
                            .into_iter()
                            .map(|(what, bytes)| (what.to_string(), mib_of(bytes).into()))
                            .collect();
                        let items: Vec<String> =
                            held.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
                        println!("  held, MiB: {}", items.join("; "));
                        serde_json::json!({
                            "model": arch.name(), "size": size, "batch": o.batch,
                            "precision": precision.to_string(), "ms_per_step": ms,
                            "samples_per_s": per_s, "memory_mib": mib, "peak_mib": peak,
                            "held_mib": held,
                        })
                    }
                    Err(e) => {
                        println!("{:<20} {size:>4} {precision:<5} failed: {e}", arch.name());
                        serde_json::json!({
                            "model": arch.name(), "size": size, "batch": o.batch,
                            "precision": precision.to_string(), "error": e.to_string(),
                        })
                    }
                };
                rows.push(row);
            }
        }
    }
    println!("{}", serde_json::Value::Array(rows));
}

fn mib_of(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// Used device memory in MiB.
fn used_mib(gpu: &Gpu) -> Result<f64> {
    let (free, total) = gpu
        .ctx()
        .mem_get_info()
        .map_err(|e| attnrt::Error::invalid("cuMemGetInfo", e.to_string()))?;
    Ok((total - free) as f64 / (1 << 20) as f64)
}

/// One configuration's figures.
struct Measured {
    /// Milliseconds a step.
    ms: f64,
    /// MiB the replica holds (the driver's used memory after the warm-up less before).
    mib: f64,
    /// MiB in use at the timed steps' peak.
    peak: Option<f64>,
    /// The bytes the replica holds by what they are for ([`Replica::held`]).
    held: Vec<(&'static str, usize)>,
}

fn measure(
    gpu: &Arc<Gpu>,
    arch: Arch,
    size: usize,
    precision: Precision,
    o: &Options,
) -> Result<Measured> {
    gpu.sync()?;
    let before = used_mib(gpu)?;
    let image = ImageShape {
        channels: 3,
        height: size,
        width: size,
    };
    let model = ModelSpec::parse(arch.name(), image, 1000, "--models")?;
    let opt = Optimizer::sgd(1e-3);
    let state = State::fresh(model.init(1), &opt);
    let (params, opt_state) = (&state.params, &state.optimizer);
    let mut replica = Replica::new(gpu.clone(), &model, opt, precision, params, opt_state)?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x: Vec<f32> = (0..o.batch * model.features())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let y: Vec<u32> = (0..o.batch).map(|_| rng.random_range(0..1000)).collect();
    replica.load_shard(&x, &y)?;
    let scale = 1.0 / o.batch as f32;
    let mut t = 0;
    let mut step = |replica: &mut Replica| {
        t += 1;
        replica.pass(scale)?;
        replica.optimizer_step(t)
    };
    for _ in 0..2 {
        step(&mut replica)?;
    }
    gpu.sync()?;
    let memory = used_mib(gpu)? - before;
    gpu.reset_memory_peak()?;
    let mut timed = || {
        time_ms(gpu.stream(), || {
            (0..o.steps).try_for_each(|_| step(&mut replica))
        })
    };
    let ms = if o.profile {
        gpu.profiled(timed)?
    } else {
        timed()?
    };
    let peak = gpu.memory_peak()?.map(|b| mib_of(b as usize));
    Ok(Measured {
        ms: ms / o.steps as f64,
        mib: memory,
        peak,
        held: replica.held(),
    })
}
