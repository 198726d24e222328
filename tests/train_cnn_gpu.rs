//! The torchvision CNNs on the GPU (`train::gpu::cnn`): one training step of each of the five
//! models against the CPU walker (loss, logits, every gradient, the running statistics),
//! the shared train-step golden file through `attnrt-train --check --gpus 0`, training that
//! learns on one GPU, and two replicas (uneven shards, the running statistics' contributions
//! summed with the gradients) against the CPU engine's two shards, without and with
//! synchronised batch norm; a job's `dropout` on a GPU against the CPU's, and `attnrt-train`
//! running jobs with `sync_bn` and `dropout` on GPUs.
//!
//! Tolerances (relative Frobenius errors, the whole vector) of the step against the CPU walker
//! in f32 (f64 sums). Batch norm at a batch of two makes these models ill-conditioned (one f32
//! rounding reaches the logits amplified 200-1300x), so a fixed tolerance is either below the
//! model's own rounding noise or too loose for AlexNet. Each model's noise is measured instead,
//! on the CPU, the way the golden check uses PyTorch's f32-vs-f64 error:
//! - f32: the CPU step again with every parameter moved by one f32 ulp (random sign); the GPU,
//!   whose every op rounds in its own order, must be within 16x that difference, and never
//!   needs to beat 1e-5 (loss, logits) or 1e-4 (gradients, running statistics).
//! - bf16: the CPU step with the convolutions' and linears' operands rounded to bf16 against the
//!   plain f32 step; the GPU, which also stores every activation in bf16, must be within 8x
//!   that, and never needs to beat 2e-2 (loss), 5e-2 (logits, running statistics), 1e-1
//!   (gradients). AlexNet (no batch norm) stays at the floors.
//!
//! The gradients are checked against the CPU's backward *along the GPU's forward values*
//! ([`cnn::cpu::forward_backward_along`]: the CPU takes the GPU's activations as its own, so
//! every ReLU mask and batch-norm statistic is the GPU's), with the noise measured the same
//! way along them. Against the CPU's own forward they are not comparable: a ReLU input within
//! rounding of zero (one in a million values; ResNet-50 and DenseNet-121 have such inputs at
//! 64x64) is passed by one f32 computation and blocked by the other, and batch norm over 8-32
//! rows spreads that one difference into 1e-3..1e-2 of every gradient before it. The CPU
//! against itself shows it: its parameters moved by 1e-7 (relative) move ResNet-50's
//! gradients by 4e-3..7e-3 and DenseNet-121's by 1e-5 or 4e-3, depending on whether a mask
//! flips (docs/TRAINING.md). That error is printed, not checked.
//!
//! Without a GPU every test prints `skipped: <reason>`; `ATTNRT_REQUIRE_GPU=1` makes that a
//! failure.

mod common;

use std::ops::Range;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use attnrt::base::relative_error;
use attnrt::gpu::testing::gpu_or_skip;
use attnrt::sched::DistributionRatio;
use attnrt::train::data::ImageShape;
use attnrt::train::data::batches::Batch;
use attnrt::train::gpu::replica::Replica;
use attnrt::train::models::cnn::{self, Arch, CnnConfig};
use attnrt::train::run::engine::ExchangeChoice;
use attnrt::train::{
    CnnOptions, CpuEngine, Dataset, Engine, Job, ModelSpec, Optimizer, Precision, ReplicaEngine,
    State, TrainOptions, train as train_job,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn err(got: &[f32], want: &[f32]) -> f64 {
    relative_error(got, want).expect("same length")
}

/// One CPU step's (loss, logits, gradients, running statistics).
struct Step {
    loss: f64,
    logits: Vec<f32>,
    grads: Vec<f32>,
    buffers: Vec<f32>,
}

impl Step {
    /// The step of `params` on the CPU walker at `precision` (bf16 rounds the operands).
    fn cpu(
        graph: &cnn::Graph,
        precision: Precision,
        params: &[f32],
        data: (&[f32], &[u32]),
        pass: (f32, u64),
    ) -> Step {
        Step::along(graph, precision, params, data, pass, &[])
    }

    /// [`Step::cpu`] along another pass's forward `values`
    /// ([`cnn::cpu::forward_backward_along`]).
    fn along(
        graph: &cnn::Graph,
        precision: Precision,
        params: &[f32],
        (x, labels): (&[f32], &[u32]),
        (scale, seed): (f32, u64),
        values: &[Option<Vec<f32>>],
    ) -> Step {
        let mut grads = vec![0.0; params.len()];
        let pass = cnn::cpu::forward_backward_along(
            graph, precision, params, x, labels, scale, seed, values, &mut grads,
        )
        .unwrap();
        let mut buffers = graph.initial_buffers();
        graph
            .update_buffers(&mut buffers, &[(1.0, &pass.norms)])
            .unwrap();
        Step {
            loss: pass.stats.loss,
            logits: pass.logits,
            grads,
            buffers,
        }
    }

    /// Relative errors of `self` against `want`, in (loss, logits, gradients, running
    /// statistics) order.
    fn errors(&self, want: &Step) -> [f64; 4] {
        [
            (self.loss - want.loss).abs() / want.loss.abs(),
            err(&self.logits[..want.logits.len()], &want.logits),
            err(&self.grads, &want.grads),
            err(&self.buffers, &want.buffers),
        ]
    }
}

/// The tolerances of a GPU step at `precision` given the model's own noise `own` (see the
/// module docs). The loss's noise is at least the logits': one perturbed run's loss can land
/// much closer than its logits (ResNeXt-50: 3.7e-7 against 2.7e-5), while the GPU's logits,
/// as far off as the noise allows, move the loss by as much (1.0e-5).
fn tolerances(precision: Precision, mut own: [f64; 4]) -> [f64; 4] {
    let (floor, times): ([f64; 4], f64) = match precision {
        Precision::Bf16 => ([2e-2, 5e-2, 1e-1, 5e-2], 8.0),
        _ => ([1e-5, 1e-5, 1e-4, 1e-4], 16.0),
    };
    own[0] = own[0].max(own[1]);
    std::array::from_fn(|i| floor[i].max(times * own[i]))
}

/// The CPU step that measures the model's own noise at `precision` (see the module docs):
/// its errors against the plain f32 step are the noise.
fn noise_step(
    graph: &cnn::Graph,
    precision: Precision,
    params: &[f32],
    data: (&[f32], &[u32]),
    pass: (f32, u64),
) -> Step {
    match precision {
        Precision::Bf16 => Step::cpu(graph, Precision::Bf16, params, data, pass),
        _ => Step::cpu(graph, Precision::F32, &ulp_moved(params), data, pass),
    }
}

/// The gradients' reference along the GPU pass's forward `values` and the step that measures
/// their noise (module docs): f32, the CPU along them with every parameter moved by one ulp;
/// bf16, the CPU along them with bf16 operands against f32 ones.
fn along_reference(
    graph: &cnn::Graph,
    precision: Precision,
    params: &[f32],
    data: (&[f32], &[u32]),
    pass: (f32, u64),
    values: &[Option<Vec<f32>>],
) -> (Step, Step) {
    let want = Step::along(graph, Precision::F32, params, data, pass, values);
    let noisy = match precision {
        Precision::Bf16 => Step::along(graph, Precision::Bf16, params, data, pass, values),
        _ => Step::along(graph, precision, &ulp_moved(params), data, pass, values),
    };
    (want, noisy)
}

/// `params`, each moved by one f32 ulp up or down (random signs, seeded).
fn ulp_moved(params: &[f32]) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    params
        .iter()
        .map(|&p| {
            let up = f32::from_bits(p.to_bits() + 1);
            if rng.random_bool(0.5) {
                up
            } else {
                p - (up - p)
            }
        })
        .collect()
}

/// `arch` with 10 classes on 64x64 images.
fn small(arch: Arch) -> CnnConfig {
    CnnConfig {
        arch,
        classes: 10,
        image: ImageShape {
            channels: 3,
            height: 64,
            width: 64,
        },
    }
}

/// A replica of `config` in `precision` from `params`, with SGD at learning rate 0.1.
fn sgd_replica(
    gpu: &Arc<attnrt::gpu::Gpu>,
    config: CnnConfig,
    precision: Precision,
    params: &[f32],
) -> Replica {
    let model = ModelSpec::Cnn(config);
    let zeros = [vec![0.0; params.len()]];
    Replica::new(
        gpu.clone(),
        &model,
        Optimizer::sgd(0.1),
        precision,
        params,
        &zeros,
    )
    .unwrap()
}

/// One step of every model on 2 images of 64x64 (AlexNet's dropout on: the GPU draws the
/// CPU's masks), GPU against the CPU walker in f32.
#[test]
fn one_step_of_each_cnn_matches_the_cpu() {
    let Some(gpu) = gpu_or_skip("one_step_of_each_cnn_matches_the_cpu") else {
        return;
    };
    let mut failures = Vec::new();
    for arch in Arch::ALL {
        let config = small(arch);
        let graph = cnn::graph(config);
        let (n, features) = (2, 3 * 64 * 64);
        let params = graph.init(3);
        let x = random(n * features, 4);
        let labels = [3u32, 7];
        let pass = (1.0 / n as f32, cnn::step_seed(1, 0));
        let want = Step::cpu(&graph, Precision::F32, &params, (&x, &labels), pass);
        for precision in [Precision::F32, Precision::Bf16] {
            let noisy = noise_step(&graph, precision, &params, (&x, &labels), pass);
            let own = noisy.errors(&want);
            let mut replica = sgd_replica(&gpu, config, precision, &params);
            replica.set_seed(pass.1);
            replica.forward_backward(&x, &labels, pass.0).unwrap();
            // A bf16 CNN's shards are rounded to bf16 while staged (the values its first copy
            // made on the GPU before; the errors below check them): two buffers of half the
            // bytes, beside the labels'.
            let element = if precision == Precision::Bf16 { 2 } else { 4 };
            let shards = replica
                .held()
                .into_iter()
                .find(|(what, _)| what.starts_with("shard"));
            assert_eq!(
                shards.map(|(_, bytes)| bytes),
                Some(2 * (n * features * element + n * 4)),
                "{} {precision}: the shard buffers",
                arch.name()
            );
            replica.update_buffers().unwrap();
            let loss = replica.stats().unwrap().loss;
            let logits = attnrt::gpu::download(gpu.stream(), replica.logits().unwrap()).unwrap();
            let (state, grads) = replica.download().unwrap();
            let got = Step {
                loss,
                logits,
                grads,
                buffers: state.buffers,
            };
            let values = replica.forward_values().expect("a CNN").unwrap();
            let data = (x.as_slice(), labels.as_slice());
            let (along, along_noisy) =
                along_reference(&graph, precision, &params, data, pass, &values);
            let mut own = own;
            own[2] = err(&along_noisy.grads, &along.grads);
            let mut errors = got.errors(&want);
            println!(
                "{} {precision}: gradients relative error {:.3e} against the CPU's own forward \
                 (not checked: ReLU inputs within rounding of zero; module docs)",
                arch.name(),
                errors[2]
            );
            errors[2] = err(&got.grads, &along.grads);
            let tolerance = tolerances(precision, own);
            let names = [
                "loss",
                "logits",
                "gradients (along the GPU's forward)",
                "running statistics",
            ];
            for (i, e) in errors.into_iter().enumerate() {
                let line = format!(
                    "{} {precision}: {} relative error {e:.3e} (tolerance {:.1e}; own noise {:.1e})",
                    arch.name(),
                    names[i],
                    tolerance[i],
                    own[i],
                );
                println!("{line}");
                if e.is_nan() || e > tolerance[i] {
                    failures.push(line);
                }
            }
            if failures.iter().any(|f| f.starts_with(arch.name())) {
                explain(
                    &graph,
                    &mut replica,
                    (&x, &labels),
                    pass,
                    [&got, &along, &along_noisy],
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "over tolerance:\n{}",
        failures.join("\n")
    );
}

/// The walker's pool of free buffers is planned from the first pass's requests
/// (`train::gpu::buffer_pool`): the later passes find every buffer they ask for in it (its
/// bytes do not change: a miss drops the pool and allocates) and get the first pass's
/// gradients, with deterministic algorithms (within 1e-6: a buffer given to two requests
/// whose lifetimes overlap would overwrite a value in flight, far beyond that).
#[test]
fn the_planned_pool_serves_later_passes_and_changes_no_gradient() {
    let Some(gpu) = gpu_or_skip("the_planned_pool_serves_later_passes_and_changes_no_gradient")
    else {
        return;
    };
    let pool = |replica: &Replica| {
        replica
            .held()
            .into_iter()
            .find(|(what, _)| *what == "pool of free buffers")
            .map(|(_, bytes)| bytes)
            .expect("a CNN's replica holds a pool")
    };
    for arch in Arch::ALL {
        let config = small(arch);
        let graph = cnn::graph(config);
        let n = 3;
        let params = graph.init(5);
        let x = random(n * 3 * 64 * 64, 6);
        let labels = [1u32, 4, 9];
        for precision in [Precision::F32, Precision::Bf16] {
            let name = format!("{} {precision}", arch.name());
            let mut replica = sgd_replica(&gpu, config, precision, &params);
            replica.set_deterministic(true);
            let pass = |replica: &mut Replica| {
                replica.set_seed(7);
                replica
                    .forward_backward(&x, &labels, 1.0 / n as f32)
                    .unwrap();
                replica.download().unwrap().1
            };
            let first = pass(&mut replica);
            let planned = pool(&replica);
            assert!(planned > 0, "{name}: no buffer planned");
            for later in 2..=3 {
                let grads = pass(&mut replica);
                assert_eq!(
                    pool(&replica),
                    planned,
                    "{name}: pass {later} left the plan"
                );
                let e = err(&grads, &first);
                println!("{name}: pass {later}'s gradients against the first's: {e:.3e}");
                assert!(
                    e <= 1e-6,
                    "{name}: pass {later}'s gradients moved by {e:.3e}"
                );
            }
        }
    }
}

/// Says where a failing step's gradient error comes from: cuDNN's choices, how far a second
/// identical GPU pass lands from the first (the non-deterministic algorithms' share), the
/// parameters holding most of the error, and each parameter's error over its own noise in the
/// order the backward pass reaches them (the first large ratio is the layer to suspect).
fn explain(
    graph: &cnn::Graph,
    replica: &mut Replica,
    (x, labels): (&[f32], &[u32]),
    (scale, seed): (f32, u64),
    [got, want, noisy]: [&Step; 3],
) {
    for line in replica.describe_convs() {
        println!("  {line}");
    }
    replica.set_seed(seed);
    replica.forward_backward(x, labels, scale).unwrap();
    let (_, again) = replica.download().unwrap();
    println!(
        "  a second GPU pass against the first: gradients {:.3e}",
        err(&again, &got.grads)
    );
    replica.set_deterministic(true);
    replica.set_seed(seed);
    replica.forward_backward(x, labels, scale).unwrap();
    let (_, fixed) = replica.download().unwrap();
    println!(
        "  deterministic algorithms: gradients {:.3e} from the CPU's",
        err(&fixed, &want.grads)
    );
    for line in replica.describe_convs().iter().take(3) {
        println!("  {line}");
    }
    let sq = |a: &[f32], b: &[f32]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2))
            .sum()
    };
    let total = sq(&got.grads, &want.grads);
    let slots = &graph.layout.slots;
    let mut share: Vec<(usize, f64)> = (0..slots.len())
        .map(|i| {
            let r = slots[i].range();
            (i, sq(&got.grads[r.clone()], &want.grads[r]) / total)
        })
        .collect();
    share.sort_by(|a, b| b.1.total_cmp(&a.1));
    share.truncate(12);
    share.sort_by_key(|&(i, _)| i);
    for (i, part) in share {
        let r = slots[i].range();
        println!(
            "  {:<40} {:5.1}% of the error, relative {:.3e}",
            slots[i].name,
            100.0 * part,
            err(&got.grads[r.clone()], &want.grads[r])
        );
    }
    let ratios: Vec<String> = slots
        .iter()
        .rev()
        .map(|slot| {
            let r = slot.range();
            let e = err(&got.grads[r.clone()], &want.grads[r.clone()]);
            let own = err(&noisy.grads[r.clone()], &want.grads[r]);
            format!("{} {:.0e}/{:.0e}", slot.name, e, own)
        })
        .collect();
    println!("  error/own noise, backward order:");
    for chunk in ratios.chunks(4) {
        println!("    {}", chunk.join("  "));
    }
}

fn golden_file(name: &str) -> PathBuf {
    attnrt::model::golden::golden_dir()
        .expect("the golden directory")
        .join("train")
        .join(name)
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("running attnrt-train");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn train() -> Command {
    Command::new(common::bin(
        "attnrt-train",
        env!("CARGO_BIN_EXE_attnrt-train"),
    ))
}

/// `attnrt-train --check GOLDEN --gpus 0`: the shared ShuffleNet step on the GPU, every
/// family within PyTorch's own f32 error (x4).
#[test]
fn check_passes_the_shufflenet_golden_on_a_gpu() {
    if gpu_or_skip("check_passes_the_shufflenet_golden_on_a_gpu").is_none() {
        return;
    }
    let golden = golden_file("shufflenet_s1.golden.safetensors");
    let (code, text) = run(train().arg("--check").arg(&golden).args(["--gpus", "0"]));
    println!("{text}");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("on GPU 0"), "{text}");
    for family in ["logits", "loss", "grad_norm", "grad", "buffer"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(family) && l.contains(" ok ")),
            "{family}: {text}"
        );
    }
    assert!(
        text.contains("against the CPU's step along this run's forward values"),
        "{text}"
    );
    let (code, text) = run(train().arg("--check").arg(&golden).args(["--gpus", "0,1"]));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("--check runs on one GPU"), "{text}");
}

/// ShuffleNet v2 on one GPU, the CPU test's set-up (one batch of 24 synthetic 32x32 images,
/// AdamW): the loss falls, in f32 and bf16, and the running statistics move.
#[test]
fn shufflenet_learns_on_one_gpu() {
    if gpu_or_skip("shufflenet_learns_on_one_gpu").is_none() {
        return;
    }
    for precision in [Precision::F32, Precision::Bf16] {
        let d = Arc::new(Dataset::synthetic(24, 3));
        let model = ModelSpec::parse("shufflenet_v2_x1_0", d.shape(), 10, "test").unwrap();
        let opt = Optimizer::adamw(1e-3);
        let fresh = State::fresh(model.init(1), &opt).with_buffers(model.initial_buffers());
        let mut engine = ReplicaEngine::new(&[0], &model, opt, precision, &fresh).unwrap();
        let job = Job {
            name: "s".into(),
            model_name: "shufflenet_v2_x1_0".into(),
            model,
            dataset: d,
            batch_size: 24,
            iterations: 20,
        };
        let dr = DistributionRatio::new(vec![10]).unwrap();
        let opts = TrainOptions::in_memory(1, opt, precision, dr);
        let started = std::time::Instant::now();
        let mut losses = Vec::new();
        train_job(&job, &mut engine, &opts, &mut |p| losses.push(p.loss)).unwrap();
        let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
        let (first, last) = (mean(&losses[..4]), mean(&losses[losses.len() - 4..]));
        println!(
            "shufflenet on GPU 0 {precision}: loss {first:.3} -> {last:.3}, {:.1} ms a step",
            started.elapsed().as_secs_f64() * 1e3 / losses.len() as f64
        );
        assert!(last < 0.5 * first, "{precision}: loss {first} -> {last}");
        let state = engine.state().unwrap();
        assert!(state.buffers.iter().all(|v| v.is_finite()));
        assert_ne!(state.buffers, fresh.buffers);
    }
}

/// `attnrt-train --jobs` with a CNN job on `--gpus 0` trains and exits 0.
#[test]
fn attnrt_train_runs_a_cnn_job_on_gpu_0() {
    if gpu_or_skip("attnrt_train_runs_a_cnn_job_on_gpu_0").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("resnet.toml");
    std::fs::write(
        &job,
        "[[job]]\nname = \"cnn\"\nmodel = \"resnet50\"\ndataset = \"synthetic:16,32\"\n\
         batch_size = 8\niterations = 4\nclasses = 10\n",
    )
    .unwrap();
    let (code, text) =
        run(train()
            .arg("--jobs")
            .arg(&job)
            .args(["--gpus", "0", "--report", "-", "--show-convs"]));
    println!("{text}");
    assert_eq!(code, 0, "{text}");
    // --show-convs: one line per convolution of ResNet-50 (53), each naming its forward and
    // backward filter passes, and all but the stem (whose input needs no gradient, so its
    // backward data is neither planned nor run) backward data; the same lines in the report.
    let convs: Vec<&str> = text.lines().filter(|l| l.starts_with("conv ")).collect();
    assert_eq!(convs.len(), 53, "{text}");
    for pass in ["forward", "backward filter"] {
        assert!(convs.iter().all(|l| l.contains(pass)), "{pass}: {convs:#?}");
    }
    let data = convs.iter().filter(|l| l.contains("backward data")).count();
    assert_eq!(data, 52, "lines with backward data: {convs:#?}");
    assert!(text.contains("\"conv_paths\""), "{text}");
    // The peak memory in use: ResNet-50's parameters, gradients and optimizer state alone
    // are over 250 MiB.
    let line = text
        .lines()
        .find(|l| l.starts_with("gpu memory: peak in use during the steps"))
        .unwrap_or_else(|| panic!("no gpu memory line: {text}"));
    let mib: f64 = line
        .split_whitespace()
        .skip_while(|w| *w != "steps")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(mib > 250.0, "{line}");
    assert!(text.contains("\"gpu_memory_peak_mib\""), "{text}");
    // The host's time on the three steps after the first: enqueueing them takes some time,
    // and staging, waiting for the shard before and enqueueing the passes are parts of it;
    // beside it, the shards staged on another thread: from the third step on (the trainer
    // names each next batch from the second step on, and one GPU's shard never changes), so
    // 2 of the 3 steps counted.
    let line = text
        .lines()
        .find(|l| l.starts_with("host: "))
        .unwrap_or_else(|| panic!("no host line: {text}"));
    let ms: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(ms.len() == 6 && ms[0] > 0.0 && ms[5] > 0.0, "{line}");
    // Each part rounded to 0.01 ms: their sum may exceed the whole by that much each.
    assert!(ms[1] + ms[2] + ms[3] <= ms[0] + 0.03, "{line}");
    assert!(
        line.ends_with("(67% of the shards were staged so)"),
        "{line}"
    );
    assert!(
        text.contains("\"host_ms_per_step\"") && text.contains("\"waiting\""),
        "{text}"
    );
}

/// GPUs 0 and 1, or twice GPU 0 (two contexts of one GPU: the exchanges work the same).
fn two_ordinals(test: &str) -> Vec<usize> {
    if attnrt::gpu::device_count().unwrap_or(0) >= 2 {
        vec![0, 1]
    } else {
        println!("{test}: two replicas on GPU 0");
        vec![0, 0]
    }
}

/// One SGD step of `name` (64x64 images) on shards [3, 7] of one batch of 10: on two
/// replicas (GPUs 0 and 1, or twice GPU 0) with `sync_bn` as given, exchanging as `choice`
/// says, and on the CPU engine with and without it. Checks the loss against the CPU's with the
/// same `sync_bn`; returns the states after the step (the GPUs', that CPU's, the other CPU's)
/// and the parameters it started from.
///
/// One step, and the parameters compared by their update: at shards of 3 and 7 images the
/// batch norms make the gradients jump wherever a ReLU input is within rounding of zero (the
/// module docs), so the CPU's own update moves by up to 5e-3 (ShuffleNet) and 2.4e-2
/// (ResNet-50) when its parameters move by one ulp, and a second step compounds it. The
/// update's tolerance, 1e-1, is 4x that and still far below what a lost, doubled or
/// misweighted shard does (30% and more); the forward's results (loss, running statistics)
/// stay at f32 tolerances, the loss's measured as the module docs say (ResNet-50's loss landed
/// 1.03e-5 from the CPU's under compute-sanitizer, whose timing made cuDNN choose other
/// algorithms, against a fixed 1e-5 before).
fn two_replica_step(
    test: &str,
    name: &str,
    sync_bn: bool,
    choice: ExchangeChoice,
) -> ([State; 3], Vec<f32>) {
    let ordinals = two_ordinals(test);
    let image = ImageShape {
        channels: 3,
        height: 64,
        width: 64,
    };
    let model = ModelSpec::parse(name, image, 10, "test").unwrap();
    let opt = Optimizer::sgd(0.05);
    let fresh = State::fresh(model.init(2), &opt).with_buffers(model.initial_buffers());
    let options = CnnOptions {
        sync_bn,
        dropout: None,
        f32_conv_transforms: false,
    };
    let mut gpu = ReplicaEngine::with_exchange(
        &ordinals,
        &model,
        opt,
        Precision::F32,
        &fresh,
        choice,
        options,
    )
    .unwrap();
    let cpu_engine = |sync| {
        CpuEngine::new(model.clone(), opt, Precision::F32, 2, fresh.clone()).with_sync_bn(sync)
    };
    let (mut cpu, mut other) = (cpu_engine(sync_bn), cpu_engine(!sync_bn));
    // The loss's own noise (module docs): the same CPU step from parameters moved by one ulp.
    let mut moved = fresh.clone();
    moved.params = ulp_moved(&fresh.params);
    let mut noisy =
        CpuEngine::new(model.clone(), opt, Precision::F32, 2, moved).with_sync_bn(sync_bn);
    let features = model.features();
    let batch = Arc::new(Batch {
        step: 1,
        features: random(10 * features, 6),
        labels: (0..10).map(|i| i % 10).collect(),
    });
    let shards: [Range<usize>; 2] = [0..3, 3..10];
    let g = gpu.step(1, &batch, &shards).unwrap();
    let c = cpu.step(1, &batch, &shards).unwrap();
    other.step(1, &batch, &shards).unwrap();
    let n = noisy.step(1, &batch, &shards).unwrap();
    let relative = |loss: f64| (loss - c.loss).abs() / c.loss.abs();
    let tolerance = tolerances(Precision::F32, [relative(n.loss), 0.0, 0.0, 0.0])[0];
    println!(
        "{name} sync_bn={sync_bn} {choice:?}: loss GPU {:.7} CPU {:.7}, relative error {:.2e} \
         (tolerance {tolerance:.1e}; own noise {:.1e})",
        g.loss,
        c.loss,
        relative(g.loss),
        relative(n.loss)
    );
    assert!(
        relative(g.loss) <= tolerance,
        "{name} loss {} against {} (tolerance {tolerance:.1e})",
        g.loss,
        c.loss
    );
    let states = [gpu.state(), cpu.state(), other.state()].map(Result::unwrap);
    (states, fresh.params)
}

/// The relative error of the update `got - from` against `want - from`.
fn update_error(got: &[f32], want: &[f32], from: &[f32]) -> f64 {
    let step = |p: &[f32]| -> Vec<f32> { p.iter().zip(from).map(|(a, b)| a - b).collect() };
    err(&step(got), &step(want))
}

/// Two replicas with uneven shards [3, 7] of a batch, against the CPU engine's two shards:
/// each normalises its own shard, the running statistics move by the shards' statistics
/// weighted by size (their contributions summed with the gradients), and the shards'
/// gradients are summed into one update.
#[test]
fn two_replicas_match_two_cpu_shards() {
    let test = "two_replicas_match_two_cpu_shards";
    if gpu_or_skip(test).is_none() {
        return;
    }
    let auto = ExchangeChoice::Auto;
    let ([g, c, _], from) = two_replica_step(test, "shufflenet_v2_x1_0", false, auto);
    let (eu, eb) = (
        update_error(&g.params, &c.params, &from),
        err(&g.buffers, &c.buffers),
    );
    println!("update {eu:.3e}, running statistics {eb:.3e}");
    assert!(eu <= 1e-1 && eb <= 1e-4, "update {eu:e}, buffers {eb:e}");
}

/// `sync_bn` on two replicas with uneven shards [3, 7]: every batch norm normalises with the
/// whole batch's statistics, summed over the replicas during the pass, against the CPU
/// engine's synchronised shards, for a step of ShuffleNet and ResNet-50 over peer memory and
/// ShuffleNet through the host. The split matters without synchronisation (the
/// unsynchronised CPU run is checked to be far off), so agreeing is not an accident of the
/// shapes.
#[test]
fn two_replicas_with_sync_bn_match_the_cpu_engine() {
    let test = "two_replicas_with_sync_bn_match_the_cpu_engine";
    if gpu_or_skip(test).is_none() {
        return;
    }
    for (name, choice) in [
        ("shufflenet_v2_x1_0", ExchangeChoice::Auto),
        ("resnet50", ExchangeChoice::Auto),
        ("shufflenet_v2_x1_0", ExchangeChoice::Host),
    ] {
        let ([g, c, apart], from) = two_replica_step(test, name, true, choice);
        let (eu, eb) = (
            update_error(&g.params, &c.params, &from),
            err(&g.buffers, &c.buffers),
        );
        let (su, sb) = (
            update_error(&apart.params, &c.params, &from),
            err(&apart.buffers, &c.buffers),
        );
        println!(
            "{name} {choice:?}: update {eu:.3e}, running statistics {eb:.3e} (unsynchronised \
             CPU's: update {su:.3e}, running statistics {sb:.3e})"
        );
        assert!(
            eu <= 1e-1 && eb <= 1e-4,
            "{name}: update {eu:e}, buffers {eb:e}"
        );
        assert!(
            sb > 10.0 * eb.max(1e-6),
            "{name}: the split should matter: {sb:e}"
        );
    }
}

/// AlexNet on GPU 0 and on the CPU engine from the same fresh state, and a batch for both.
struct AlexnetOnBoth {
    gpu: ReplicaEngine,
    cpu: CpuEngine,
    model: ModelSpec,
    opt: Optimizer,
    fresh: State,
    batch: Arc<Batch>,
}

/// AlexNet (10 classes, `side` x `side` images, weights from `seed`, SGD) on GPU 0 with
/// `options` and on the CPU engine with the same dropout, and a batch of four images.
fn alexnet_on_both(side: usize, seed: u64, options: CnnOptions) -> AlexnetOnBoth {
    let d = Dataset::synthetic_sized(4, side, 5);
    let model = ModelSpec::parse("alexnet", d.shape(), 10, "test").unwrap();
    let opt = Optimizer::sgd(0.05);
    let fresh = State::fresh(model.init(seed), &opt).with_buffers(model.initial_buffers());
    let auto = ExchangeChoice::Auto;
    let gpu =
        ReplicaEngine::with_exchange(&[0], &model, opt, Precision::F32, &fresh, auto, options)
            .unwrap();
    let mut cpu = CpuEngine::new(model.clone(), opt, Precision::F32, 1, fresh.clone());
    if let Some(p) = options.dropout {
        cpu = cpu.with_dropout(p);
    }
    let batch = Arc::new(Batch {
        step: 1,
        features: random(4 * model.features(), seed + 6),
        labels: vec![1, 2, 3, 4],
    });
    AlexnetOnBoth {
        gpu,
        cpu,
        model,
        opt,
        fresh,
        batch,
    }
}

/// A job's `dropout` on the GPU: AlexNet with its dropout layers at 0.2 instead of 0.5 takes
/// the CPU engine's step with the same override (the GPU draws the CPU's masks), and not the
/// step of the architecture's 0.5.
#[test]
fn dropout_override_on_a_gpu_matches_the_cpu() {
    if gpu_or_skip("dropout_override_on_a_gpu_matches_the_cpu").is_none() {
        return;
    }
    let options = CnnOptions {
        dropout: Some(0.2),
        ..CnnOptions::default()
    };
    let AlexnetOnBoth {
        mut gpu,
        mut cpu,
        model,
        opt,
        fresh,
        batch,
    } = alexnet_on_both(63, 2, options);
    let mut plain = CpuEngine::new(model, opt, Precision::F32, 1, fresh);
    let all = 0..4;
    let shards = std::slice::from_ref(&all);
    gpu.step(1, &batch, shards).unwrap();
    cpu.step(1, &batch, shards).unwrap();
    plain.step(1, &batch, shards).unwrap();
    let (g, c, p) = (
        gpu.state().unwrap(),
        cpu.state().unwrap(),
        plain.state().unwrap(),
    );
    let (e, apart) = (err(&g.params, &c.params), err(&p.params, &c.params));
    println!("alexnet dropout 0.2: parameters {e:.3e} (the architecture's 0.5: {apart:.3e})");
    assert!(e <= 1e-5, "parameters {e:e}");
    assert!(apart > 10.0 * e.max(1e-7), "0.2 and 0.5 differ: {apart:e}");
}

/// A job's `f32_conv_transforms`: AlexNet's f32 step with cuDNN's FFT and Winograd allowed
/// (the algorithms chosen are printed) still takes the CPU engine's step, within the
/// transforms' tolerance (`tests/kernels/conv2d.rs`: 2e-3 a convolution; the parameters
/// after one step agree far closer, since the update is small against them).
#[test]
fn f32_conv_transforms_on_a_gpu_match_the_cpu() {
    if gpu_or_skip("f32_conv_transforms_on_a_gpu_match_the_cpu").is_none() {
        return;
    }
    let options = CnnOptions {
        dropout: Some(0.0),
        f32_conv_transforms: true,
        ..CnnOptions::default()
    };
    let mut both = alexnet_on_both(95, 3, options);
    let (fresh, all) = (&both.fresh, 0..4);
    let shards = std::slice::from_ref(&all);
    both.gpu.step(1, &both.batch, shards).unwrap();
    both.cpu.step(1, &both.batch, shards).unwrap();
    for line in both.gpu.conv_paths().unwrap() {
        println!("  {line}");
    }
    let (g, c) = (both.gpu.state().unwrap(), both.cpu.state().unwrap());
    let moved: Vec<f32> = c
        .params
        .iter()
        .zip(&fresh.params)
        .map(|(a, b)| a - b)
        .collect();
    let got: Vec<f32> = g
        .params
        .iter()
        .zip(&fresh.params)
        .map(|(a, b)| a - b)
        .collect();
    let (e, update) = (err(&g.params, &c.params), err(&got, &moved));
    println!("alexnet f32, transforms allowed: parameters {e:.3e}, the update {update:.3e}");
    assert!(e <= 1e-5, "parameters {e:e}");
    assert!(update <= 1e-3, "the step's update {update:e}");
}

/// `attnrt-train --jobs` with `sync_bn = true` (ShuffleNet), `dropout = 0.0` and
/// `f32_conv_transforms = true` (AlexNet) on `--gpus 0`: each trains and exits 0.
#[test]
fn sync_bn_dropout_and_transforms_jobs_train_on_a_gpu() {
    if gpu_or_skip("sync_bn_dropout_and_transforms_jobs_train_on_a_gpu").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (model, side, extra) in [
        ("shufflenet_v2_x1_0", 32, "sync_bn = true"),
        ("alexnet", 63, "dropout = 0.0"),
        ("alexnet", 63, "f32_conv_transforms = true"),
    ] {
        let job = dir.path().join(format!("{model}.toml"));
        std::fs::write(
            &job,
            format!(
                "[[job]]\nname = \"cnn\"\nmodel = \"{model}\"\ndataset = \"synthetic:16,{side}\"\n\
                 batch_size = 4\niterations = 2\nclasses = 10\n{extra}\n"
            ),
        )
        .unwrap();
        let (code, text) = run(train().arg("--jobs").arg(&job).args(["--gpus", "0"]));
        println!("{text}");
        assert_eq!(code, 0, "{model} {extra}: {text}");
    }
}
