//! Where a vit-small training step's time goes on one GPU (batch 256 by default, AdamW, f32
//! GEMMs unless `--precision bf16`), without nsys: three tables.
//!
//! 1. The phases of a step, each timed alone: the loader's batch preparation (CPU, wall
//!    clock), staging the shard into page-locked memory (CPU), its copy to the GPU, forward +
//!    backward, the optimizer (CUDA events), and the stats read-back (wall clock, GPU idle).
//! 2. Whole steps back to back through the 1-GPU [`ReplicaEngine`] on a prepared batch (wall
//!    clock), one at a time and with one submitted ahead as the trainer does: the gap to the
//!    sum of the GPU phases is what the host adds.
//! 3. Every operation of the pass, timed alone at vit-small's shapes (CUDA events), times its
//!    count per step: where forward and backward spend their time, by block part. Their sum
//!    against the measured pass shows the launch gaps.
//!
//! Run: `cargo bench --bench train_step -- [--steps N] [--batch B] [--model SPEC]
//! [--precision f32|bf16]`
//! (a plain program; skips without a GPU, fails instead with `ATTNRT_REQUIRE_GPU=1`).

#[allow(dead_code)] // each bench uses part of it
mod common;

use std::sync::Arc;
use std::time::Instant;

use attnrt::Result;
use attnrt::error::CudaContext as _;
use attnrt::gpu::testing::gpu_or_skip;
use attnrt::gpu::{Gpu, time_ms};
use attnrt::kernels::elementwise::ElementwiseKernels;
use attnrt::kernels::gelu::GeluKernels;
use attnrt::kernels::layer_norm::{Extra, LayerNormKernels, NormInput, Saved};
use attnrt::kernels::patchify::{Patches, PatchifyKernels};
use attnrt::kernels::softmax::SoftmaxKernels;
use attnrt::kernels::softmax_cross_entropy::SoftmaxCrossEntropyKernels;
use attnrt::train::data::batches::{Batch, SampleOrder, fill_batch};
use attnrt::train::gpu::blas::{self, Batched, HeadBatch, MatrixBatch};
use attnrt::train::gpu::linear::{GemmEpilogue, Linear};
use attnrt::train::gpu::replica::Replica;
use attnrt::train::models::vit::VitConfig;
use attnrt::train::{Dataset, Engine, ModelSpec, Optimizer, Precision, ReplicaEngine, State};
use common::flags::Flags;
use cudarc::driver::CudaSlice;

struct Options {
    steps: usize,
    batch: usize,
    model: String,
    precision: Precision,
}

fn options() -> Options {
    let mut o = Options {
        steps: 20,
        batch: 256,
        model: "vit-small".into(),
        precision: Precision::F32,
    };
    let mut flags = Flags::new("train_step");
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--steps" => o.steps = flags.count("--steps N (N > 0)"),
            "--batch" => o.batch = flags.count("--batch B (B > 0)"),
            "--model" => o.model = flags.word("--model SPEC"),
            "--precision" => o.precision = flags.value("--precision f32|bf16"),
            _ => {} // cargo bench passes `--bench`
        }
    }
    o
}

fn main() {
    // Flags first: a typo is reported on any machine.
    let o = options();
    let Some(gpu) = gpu_or_skip("train_step") else {
        return;
    };
    if let Err(e) = run(gpu, &o) {
        eprintln!("train_step: {e}");
        std::process::exit(1);
    }
}

fn row(name: &str, each_ms: f64, count: usize) {
    println!(
        "{name:<44} {each_ms:>9.3} {count:>6} {:>9.3}",
        each_ms * count as f64
    );
}

fn header(title: &str) {
    println!("\n{title}");
    println!(
        "{:<44} {:>9} {:>6} {:>9}",
        "", "ms each", "count", "ms/step"
    );
}

/// Mean milliseconds of `f` over `reps` runs, on the host's clock.
fn wall_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / reps as f64)
}

/// Mean milliseconds of the GPU work `f` queues, over `reps` runs after one warm-up run.
fn gpu_ms(gpu: &Gpu, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let ms = time_ms(gpu.stream(), || (0..reps).try_for_each(|_| f()))?;
    Ok(ms / reps as f64)
}

fn run(gpu: Arc<Gpu>, o: &Options) -> Result<()> {
    let data = Arc::new(Dataset::synthetic(50_000, 1));
    let model = ModelSpec::parse(&o.model, data.shape(), 10, "--model")?;
    let opt = Optimizer::adamw(1e-3);
    let state = State::fresh(model.init(1), &opt);
    println!(
        "train_step: {} batch {}, {} GEMMs ({} parameters) on {}, means over {} steps",
        o.model,
        o.batch,
        o.precision,
        state.params.len(),
        gpu.describe(),
        o.steps
    );

    header("Phases of a step, each alone");
    let mut order = SampleOrder::new(data.len(), 1);
    let mut batch = Batch {
        step: 0,
        features: Vec::new(),
        labels: Vec::new(),
    };
    let mut step = 0;
    let fill = wall_ms(o.steps, || {
        fill_batch(&data, &mut order, step, o.batch, &mut batch).unwrap();
        step += 1;
        Ok(())
    })?;
    row("loader: prepare a batch (CPU, own thread)", fill, 1);
    let (params, opt_state) = (&state.params, &state.optimizer);
    let mut replica = Replica::new(gpu.clone(), &model, opt, o.precision, params, opt_state)?;
    let (x, y) = (&batch.features, &batch.labels);
    replica.forward_backward(x, y, 1.0)?; // allocates and loads the kernels
    gpu.sync()?;
    // The copies run on the replica's copy stream: wait for them and time them there.
    let copies = replica.copy_stream().clone();
    let stage = wall_ms(o.steps, || {
        replica.load_shard(x, y)?;
        copies
            .synchronize()
            .cuda(|| "waiting for the shard's copy".into())
    })?;
    let h2d = time_ms(&copies, || {
        (0..o.steps).try_for_each(|_| replica.load_shard(x, y))
    })?;
    let h2d = h2d / o.steps as f64;
    row("stage into pinned memory + copy (CPU wall)", stage, 1);
    row("  of which the copy to the GPU (events)", h2d, 1);
    let scale = 1.0 / o.batch as f32;
    let pass = gpu_ms(&gpu, o.steps, || replica.pass(scale))?;
    row("forward + backward (events)", pass, 1);
    let mut t = 0;
    let optim = gpu_ms(&gpu, o.steps, || {
        t += 1;
        replica.optimizer_step(t)
    })?;
    row("optimizer (events)", optim, 1);
    let stats = wall_ms(o.steps, || replica.stats().map(drop))?;
    row("stats read-back, GPU idle (CPU wall)", stats, 1);
    let phases = h2d + pass + optim;
    row("GPU phases together", phases, 1);
    drop(replica);

    header("Whole steps through the 1-GPU engine (CPU wall)");
    let mut engine = ReplicaEngine::new(&[gpu.ordinal()], &model, opt, o.precision, &state)?;
    let batch = Arc::new(batch);
    let all = 0..o.batch;
    let shards = std::slice::from_ref(&all);
    engine.step(1, &batch, shards)?;
    let mut t = 1;
    let step_ms = wall_ms(o.steps, || {
        t += 1;
        engine.step(t, &batch, shards).map(drop)
    })?;
    row("engine step, one at a time", step_ms, 1);
    // As the trainer runs them: step t + 1 submitted before step t's stats are read.
    t += 1;
    engine.submit(t, &batch, shards)?;
    let ahead_ms = wall_ms(o.steps, || {
        t += 1;
        engine.submit(t, &batch, shards)?;
        engine.finish().map(drop)
    })?;
    engine.finish()?;
    row("engine step, one submitted ahead", ahead_ms, 1);
    row(
        "  host overhead beyond the GPU phases",
        ahead_ms - phases,
        1,
    );
    println!(
        "  -> {:.0} samples/s (GPU phases alone: {:.0})",
        o.batch as f64 * 1e3 / ahead_ms,
        o.batch as f64 * 1e3 / phases
    );
    drop(engine);

    if let ModelSpec::Vit(c) = &model {
        ops(&gpu, c, o)?;
    }
    Ok(())
}

/// Device buffers for the operation table, at the largest shapes a block uses.
struct OpBufs {
    a: CudaSlice<f32>,
    b: CudaSlice<f32>,
    c: CudaSlice<f32>,
    w: CudaSlice<f32>,
    gw: CudaSlice<f32>,
    stats: CudaSlice<f32>,
    ones: CudaSlice<f32>,
    labels: CudaSlice<u32>,
}

/// Table 3: each operation of the ViT pass alone, times its count per step (see
/// `src/train/gpu/vit.rs`, which issues them).
fn ops(gpu: &Arc<Gpu>, c: &VitConfig, o: &Options) -> Result<()> {
    use attnrt::error::CudaContext as _;
    let s = gpu.stream().clone();
    let cb = cudarc::cublas::CudaBlas::new(s.clone()).map_err(|e| attnrt::Error::Blas {
        what: "creating a cuBLAS handle".into(),
        source: e,
    })?;
    let mut lin = Linear::new(gpu.clone(), o.precision)?;
    let n = o.batch;
    let (t, d, m, pd, h, dh, l) = (
        c.tokens(),
        c.dim,
        c.mlp,
        c.patch_dim(),
        c.heads,
        c.head_dim(),
        c.depth,
    );
    let rows = n * t;
    let big = (rows * m.max(3 * d)).max(n * h * t * t);
    let z = |len: usize| s.alloc_zeros::<f32>(len).cuda(|| "allocating".into());
    let mut b = OpBufs {
        a: z(big)?,
        b: z(big)?,
        c: z(big)?,
        w: z((m * d).max(3 * d * d).max(t * d))?,
        gw: z((m * d).max(3 * d * d).max(t * d))?,
        stats: z(2)?,
        ones: s
            .clone_htod(&vec![1.0f32; rows])
            .cuda(|| "allocating".into())?,
        labels: s.alloc_zeros::<u32>(n).cuda(|| "allocating".into())?,
    };
    let reps = o.steps;
    let batch = n * h;
    let mut total = 0.0;
    let mut line = |name: &str, count: usize, ms: f64| {
        row(name, ms, count);
        total += ms * count as f64;
    };
    header("Operations of forward + backward, each alone (events)");
    for (name, din, dout) in [
        ("qkv", d, 3 * d),
        ("proj", d, d),
        ("fc1", d, m),
        ("fc2", m, d),
    ] {
        let ms = gpu_ms(gpu, reps, || {
            let bias = GemmEpilogue::Bias(b.gw.slice(..dout));
            lin.forward(&b.a, &b.w, bias, &mut b.c, rows, din, dout)
        })?;
        line(&format!("linear {name} Y = X W^T + b"), l, ms);
        let ms = gpu_ms(gpu, reps, || {
            let dx = Some((b.w.slice(..), &mut b.c));
            lin.backward(&b.a, &b.b, &mut b.gw, dx, rows, din, dout)
        })?;
        line(&format!("linear {name} dW = dY^T X, dX = dY W"), l, ms);
        let ms = gpu_ms(gpu, reps, || {
            blas::column_sums(&cb, &b.b, &b.ones, &mut b.w, rows, dout)
        })?;
        line(&format!("bias gradient {name} (column sums GEMM)"), l, ms);
    }
    let ms = gpu_ms(gpu, reps, || {
        blas::column_sums(&cb, &b.b, &b.ones, &mut b.w, rows, d)
    })?;
    line("LayerNorm gamma/beta gradients (column sums)", 4 * l, ms);
    let norm = LayerNormKernels::load(gpu)?;
    let ms = gpu_ms(gpu, reps, || {
        let saved = Saved {
            xhat: b.c.slice_mut(..rows * d),
            rstd: b.w.slice_mut(..rows),
        };
        let (x, ones) = (NormInput::of(b.a.slice(..rows * d)), b.ones.slice(..d));
        let y = &mut b.b.slice_mut(..rows * d);
        norm.forward(&s, x, &ones, &ones, 1e-5, y, Extra::Saved(saved))
    })?;
    line("LayerNorm forward", 2 * l + 1, ms);
    let ms = gpu_ms(gpu, reps, || {
        let saved = (&b.a, &b.ones);
        let (dx, dyxhat) = (&mut b.b, &mut b.c);
        norm.backward(&s, &b.a, saved, &b.ones, dx, dyxhat, (rows, d), true)
    })?;
    line("LayerNorm backward", 2 * l + 1, ms);
    let gelu = GeluKernels::load(gpu)?;
    let ms = gpu_ms(gpu, reps, || gelu.forward(&s, &b.a, &mut b.b, rows * m))?;
    line("GELU forward", l, ms);
    let ms = gpu_ms(gpu, reps, || gelu.backward(&s, &b.a, &mut b.b, rows * m))?;
    line("GELU backward", l, ms);
    let elementwise = ElementwiseKernels::load(gpu)?;
    let ms = gpu_ms(gpu, reps, || elementwise.add(&s, &mut b.b, &b.a, rows * d))?;
    line("residual add", 2 * l, ms);
    // Attention's batched GEMMs read and write in place, at the pass's strides: q, k, v in
    // `qkv` rows (a), probabilities (c), outputs in concatenated rows (b).
    let hb = HeadBatch { n, heads: h, t, dh };
    let qkv = |at: usize| MatrixBatch::new(&s, &b.a, hb.in_rows(3 * d, at));
    let (q, kk, v) = (qkv(0)?, qkv(d)?, qkv(2 * d)?);
    let p = MatrixBatch::new(&s, &b.c, hb.probs())?;
    let out = MatrixBatch::new(&s, &b.b, hb.in_rows(d, 0))?;
    for (form, first, second, product, count) in [
        (Batched::XYt, &q, &kk, &p, 2),
        (Batched::PX, &p, &v, &out, 2),
        (Batched::PtX, &p, &v, &out, 2),
    ] {
        let ms = gpu_ms(gpu, reps, || {
            blas::batched(&cb, form, first, second, product, n, 1.0)
        })?;
        line(
            &format!("attention: batched GEMM {form:?} (in place)"),
            count * l,
            ms,
        );
    }
    let softmax = SoftmaxKernels::load(gpu)?;
    let ms = gpu_ms(gpu, reps, || softmax.forward(&s, &mut b.a, (batch * t, t)))?;
    line("attention: softmax forward", l, ms);
    let ms = gpu_ms(gpu, reps, || {
        softmax.backward(&s, &b.a, &mut b.b, (batch * t, t), 1.0)
    })?;
    line("attention: softmax backward", l, ms);
    let patchify = PatchifyKernels::load(gpu)?;
    let images = Patches {
        n,
        channels: c.image.channels,
        side: c.image.width,
        patch: c.patch,
    };
    let ms = gpu_ms(gpu, reps, || patchify.run(&s, &b.a, &mut b.b, images))?;
    line("embedding: patchify", 1, ms);
    let ms = gpu_ms(gpu, reps, || {
        let bias = GemmEpilogue::Bias(b.gw.slice(..d));
        lin.forward(&b.a, &b.w, bias, &mut b.c, rows, pd, d)
    })?;
    line("embedding: linear Y = X W^T + b", 1, ms);
    let ms = gpu_ms(gpu, reps, || {
        lin.backward(&b.a, &b.b, &mut b.gw, None, rows, pd, d)
    })?;
    line("embedding: linear dW = dY^T X", 1, ms);
    let loss = SoftmaxCrossEntropyKernels::load(gpu)?;
    let ms = gpu_ms(gpu, reps, || {
        let shape = (n, c.classes);
        loss.run(&s, &b.a, &b.labels, &mut b.b, &mut b.stats, shape, 1.0)
    })?;
    line("head: softmax cross-entropy", 1, ms);
    println!(
        "{:<44} {:>9} {:>6} {:>9.3}",
        "sum of the operations", "", "", total
    );
    Ok(())
}
