//! The torchvision CNNs on the CPU: one training step against the shared train-step golden
//! file (PyTorch in f64), and `attnrt-train --check` / `--describe`.

use std::path::PathBuf;

use attnrt::train::models::cnn::golden;

fn golden_file(name: &str) -> PathBuf {
    attnrt::model::golden::golden_dir()
        .expect("the golden directory")
        .join("train")
        .join(name)
}

#[test]
fn one_shufflenet_step_matches_pytorch_in_f64() {
    let report = golden::check(&golden_file("shufflenet_s1.golden.safetensors")).unwrap();
    for f in &report.families {
        println!(
            "{}: {:.3e} (tolerance {:.1e}) {}",
            f.name, f.error, f.tolerance, f.what
        );
    }
    assert_eq!(report.families.len(), 5);
    assert!(report.passed(), "{report:?}");
}

mod common;

use std::process::Command;

fn train() -> Command {
    Command::new(common::bin(
        "attnrt-train",
        env!("CARGO_BIN_EXE_attnrt-train"),
    ))
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("running attnrt-train");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// The CPU check (the GPU's is in `train_cnn_gpu.rs`).
#[test]
fn check_prints_one_line_per_family() {
    let golden = golden_file("shufflenet_s1.golden.safetensors");
    let (code, text) = run(train().arg("--check").arg(&golden).args(["--gpus", "cpu"]));
    assert_eq!(code, 0, "{text}");
    for family in ["logits", "loss", "grad_norm", "grad", "buffer"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(family) && l.contains(" ok ")),
            "{family}: {text}"
        );
    }
}

/// A golden file with one tensor renamed (same length, so the header stays valid) and one
/// that is not a golden file: errors name the file and the tensor or field.
#[test]
fn bad_golden_files_are_errors_naming_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(golden_file("shufflenet_s1.golden.safetensors")).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let text = String::from_utf8(bytes[8..8 + header].to_vec()).unwrap();
    let renamed = text.replace("\"weights.fc.bias\"", "\"weights.fc.biaz\"");
    assert_ne!(renamed, text);
    let mut out = bytes[..8].to_vec();
    out.extend(renamed.as_bytes());
    out.extend(&bytes[8 + header..]);
    let bad = dir.path().join("renamed.safetensors");
    std::fs::write(&bad, out).unwrap();
    let e = golden::check(&bad).unwrap_err().to_string();
    assert!(
        e.contains("renamed.safetensors") && e.contains("weights.fc.bias"),
        "{e}"
    );

    let (code, text) = run(train().arg("--check").arg(&bad));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("weights.fc.bias"), "{text}");

    let other = golden_file("../tiny_s1.golden.safetensors");
    let e = golden::check(&other).unwrap_err().to_string();
    assert!(
        e.contains("tiny_s1.golden.safetensors: metadata 'format'"),
        "{e}"
    );
}

#[test]
fn describe_prints_layers_parameters_and_flops() {
    let (code, text) =
        run(train().args(["--describe", "resnet50", "--classes", "10", "--size", "32"]));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("layer4.2.conv3") && text.contains("parameters: 23528522"),
        "{text}"
    );
    assert!(text.contains("FLOPs per sample: "), "{text}");
    let (code, text) = run(train().args(["--describe", "alexnet", "--size", "62"]));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("62x62") && text.contains("63x63 or more"),
        "{text}"
    );
    let (code, text) = run(train().args(["--describe", "vgg16"]));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("'vgg16' is not one of resnet50"), "{text}");
}

/// ShuffleNet trains from an image folder through `attnrt-train`: the output and the report
/// give the loader's rate and wait; an image that does not decode ends the run naming it.
#[test]
fn attnrt_train_reads_an_image_folder_and_reports_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    for (k, class) in ["ant", "bee"].iter().enumerate() {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..3u32 {
            image::RgbImage::from_fn(48 + 8 * i, 40, |x, y| {
                image::Rgb([(x * 5) as u8, (y * 6) as u8, (k * 200) as u8])
            })
            .save(data.join(class).join(format!("{i}.png")))
            .unwrap();
        }
    }
    let jobs = dir.path().join("jobs.toml");
    std::fs::write(
        &jobs,
        format!(
            "[[job]]\nname = \"f\"\nmodel = \"shufflenet_v2_x1_0\"\ndataset = \"folder:{},32\"\n\
             classes = 2\nbatch_size = 4\niterations = 3\n",
            data.display()
        ),
    )
    .unwrap();
    let report = dir.path().join("report.json");
    let (code, text) = run(train()
        .arg("--jobs")
        .arg(&jobs)
        .args(["--gpus", "cpu", "--show-convs", "--report"])
        .arg(&report));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("loader: ") && l.contains("samples/s")),
        "{text}"
    );
    assert!(text.contains("convolutions: none ran on a GPU"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let loader = &json["loader"];
    assert!(loader["samples_per_s"].as_f64().unwrap() > 0.0, "{json}");
    assert!(loader["waited_s"].as_f64().unwrap() >= 0.0, "{json}");
    assert!(loader["limited"].is_boolean(), "{json}");
    // No GPU, no memory peak and no host time for one: neither the lines nor the fields.
    assert!(json.get("gpu_memory_peak_mib").is_none(), "{json}");
    assert!(json.get("host_ms_per_step").is_none(), "{json}");
    assert!(json.get("conv_paths").is_none(), "{json}");
    assert!(
        !text.contains("gpu memory:") && !text.contains("host: "),
        "{text}"
    );

    // --show-convs describes one job's run: a file of two is refused by name.
    let two = dir.path().join("two.toml");
    let job = std::fs::read_to_string(&jobs).unwrap();
    std::fs::write(
        &two,
        format!("{job}\n{}", job.replace("name = \"f\"", "name = \"g\"")),
    )
    .unwrap();
    let (code, text) = run(train()
        .arg("--jobs")
        .arg(&two)
        .args(["--gpus", "cpu", "--show-convs"]));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("--show-convs") && text.contains("two.toml") && text.contains("2 jobs"),
        "{text}"
    );

    std::fs::write(data.join("bee/2.png"), b"\x89PNG\r\n\x1a\n broken").unwrap();
    let (code, text) = run(train().arg("--jobs").arg(&jobs).args(["--gpus", "cpu"]));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("job 'f'") && text.contains("2.png") && text.contains("cannot be decoded"),
        "{text}"
    );
}

use std::sync::Arc;

use attnrt::sched::DistributionRatio;
use attnrt::train::Precision::F32;
use attnrt::train::data::Augment;
use attnrt::train::{
    CpuEngine, Dataset, Engine, Job, ModelSpec, Optimizer, State, TrainOptions, train as train_job,
};

/// A short CPU run of ShuffleNet v2 on 32x32 synthetic images over two uneven CPU shards
/// (each normalises its own samples) learns, and the running statistics move. The set is
/// one batch of 24 samples, so 20 steps show learning (fitting it); on the whole synthetic
/// set, whose patterns sit under noise three times their amplitude, a CNN needs far more
/// steps than a test takes.
#[test]
fn shufflenet_trains_on_two_uneven_cpu_shards() {
    let d = Arc::new(Dataset::synthetic(24, 3));
    let model = ModelSpec::parse("shufflenet_v2_x1_0", d.shape(), 10, "test").unwrap();
    let opt = Optimizer::adamw(1e-3);
    let fresh = State::fresh(model.init(1), &opt).with_buffers(model.initial_buffers());
    let mut engine = CpuEngine::new(model.clone(), opt, F32, 2, fresh.clone());
    let job = Job {
        name: "s".into(),
        model_name: "shufflenet_v2_x1_0".into(),
        model,
        dataset: d,
        batch_size: 24,
        iterations: 20,
    };
    let dr = DistributionRatio::new(vec![3, 7]).unwrap();
    let opts = TrainOptions::in_memory(1, opt, F32, dr);
    let started = std::time::Instant::now();
    let mut losses = Vec::new();
    train_job(&job, &mut engine, &opts, &mut |p| losses.push(p.loss)).unwrap();
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&losses[..4]), mean(&losses[losses.len() - 4..]));
    println!(
        "shufflenet on cpu:2 [3,7]: loss {first:.3} -> {last:.3}, {:.2} s a step",
        started.elapsed().as_secs_f64() / losses.len() as f64
    );
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    let state = engine.state().unwrap();
    assert!(state.buffers.iter().all(|v| v.is_finite()));
    assert_ne!(state.buffers, fresh.buffers);
}

use std::collections::BTreeMap;
use std::path::Path;

use attnrt::base::safetensors::{OutTensor, write_file};
use attnrt::train::models::cnn::{self, Arch, CnnConfig};

/// A one-job file training `model` on synthetic images of `side` for `iterations` steps,
/// with `extra` keys.
fn cnn_job(dir: &Path, model: &str, side: usize, iterations: u64, extra: &str) -> PathBuf {
    let path = dir.join(format!("{model}.toml"));
    std::fs::write(
        &path,
        format!(
            "[[job]]\nname = \"cnn\"\nmodel = \"{model}\"\ndataset = \"synthetic:16,{side}\"\n\
             batch_size = 4\niterations = {iterations}\n{extra}"
        ),
    )
    .unwrap();
    path
}

/// `model`'s initial parameters and running statistics under torchvision's names, as
/// `scripts/export_torchvision.py` writes them; `rename` changes one name, `classes` the
/// classifier.
fn write_weights(path: &Path, arch: Arch, classes: usize, rename: Option<(&str, &str)>) {
    let image = attnrt::train::data::ImageShape {
        channels: 3,
        height: 64,
        width: 64,
    };
    let graph = cnn::build(
        CnnConfig {
            arch,
            classes,
            image,
        },
        "test",
    )
    .unwrap();
    let (params, buffers) = (graph.init(5), graph.initial_buffers());
    let (layout, buffer_layout) = (&graph.layout, graph.buffers());
    let mut tensors: Vec<(String, OutTensor<'_>)> = Vec::new();
    for (l, values) in [(layout, &params), (&buffer_layout, &buffers)] {
        for s in &l.slots {
            let name = match rename {
                Some((from, to)) if s.name == from => to.to_string(),
                _ => s.name.clone(),
            };
            tensors.push((
                name,
                OutTensor::F32 {
                    shape: &s.shape,
                    data: &values[s.range()],
                },
            ));
        }
    }
    write_file(path, &tensors, &BTreeMap::new()).unwrap();
}

fn train_cli(job: &Path) -> (i32, String) {
    run(train().arg("--jobs").arg(job).args(["--gpus", "cpu:2"]))
}

#[test]
fn cnn_jobs_train_from_initial_weights_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("alexnet.safetensors");
    write_weights(&weights, Arch::AlexNet, 10, None);
    let extra = format!("classes = 10\ninit_weights = \"{}\"\n", weights.display());
    let job = cnn_job(dir.path(), "alexnet", 63, 2, &extra);
    let (code, text) = train_cli(&job);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn bad_cnn_jobs_are_errors_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let weights = d.join("w.safetensors");
    write_weights(&weights, Arch::ShuffleNetV2, 10, None);
    let renamed = d.join("renamed.safetensors");
    write_weights(
        &renamed,
        Arch::ShuffleNetV2,
        10,
        Some(("fc.bias", "head.bias")),
    );
    let classes_1000 = d.join("k1000.safetensors");
    write_weights(&classes_1000, Arch::ShuffleNetV2, 1000, None);
    let init = |p: &Path| format!("classes = 10\ninit_weights = \"{}\"\n", p.display());
    for (model, side, extra, key, want) in [
        (
            "resnet18",
            32,
            String::new(),
            "model",
            "'resnet18' is not one of",
        ),
        (
            "resnet50",
            32,
            "classes = 0\n".into(),
            "classes",
            "must be at least 1",
        ),
        (
            "resnet50",
            32,
            "classes = 5\n".into(),
            "classes",
            "5 outputs for a dataset of 10",
        ),
        ("alexnet", 32, String::new(), "model", "63x63 or more"),
        (
            "shufflenet_v2_x1_0",
            32,
            init(&d.join("missing.safetensors")),
            "init_weights",
            "missing.safetensors",
        ),
        (
            "shufflenet_v2_x1_0",
            32,
            init(&renamed),
            "init_weights",
            "renamed.safetensors: tensor 'fc.bias'",
        ),
        (
            "shufflenet_v2_x1_0",
            32,
            init(&classes_1000),
            "init_weights",
            "k1000.safetensors: tensor 'fc.weight'",
        ),
        (
            "mlp:8",
            32,
            init(&weights),
            "init_weights",
            "only the torchvision CNNs",
        ),
        (
            "mlp",
            32,
            "sync_bn = true\n".into(),
            "sync_bn",
            "only the torchvision CNNs have it",
        ),
        (
            "shufflenet_v2_x1_0",
            32,
            "dropout = 0.0\n".into(),
            "dropout",
            "'shufflenet_v2_x1_0' has no dropout layer",
        ),
        (
            "alexnet",
            63,
            "dropout = 1.0\n".into(),
            "dropout",
            "must be in [0, 1)",
        ),
    ] {
        let job = cnn_job(d, model.split(':').next().unwrap(), side, 1, &extra);
        let (code, text) = train_cli(&job);
        assert_eq!(code, 1, "{model} {extra}: {text}");
        let ctx = format!("{}: job 'cnn': {key}", job.display());
        assert!(
            text.contains(&ctx) && text.contains(want),
            "{model} {extra}: {text}"
        );
    }
}

/// `sync_bn`: three uneven CPU shards (1, 2 and 3 of 6 samples) train as one device with the
/// whole batch: ShuffleNet at 64x64, parameters and running statistics after two SGD steps
/// within f32 rounding of the whole batch's; without `sync_bn` the same split trains
/// differently. With six samples per batch norm the network is so ill-conditioned that the
/// rounding of the shards' gradient sums grows a thousandfold a step, whatever computes it
/// (largest relative parameter difference after steps 1 and 2, seeds 4 to 7: 3e-8 to 1.2e-7,
/// then 4e-7 to 9.9e-4; without `sync_bn` 0.29 to 1.0, then 0.69 to 1.9): so within 1e-5
/// after the first step and 1e-2 after the second, each far below the unsynchronised
/// difference, which must exceed 1e-1. At 32x32 the last maps
/// are 1x1, so a one-sample shard has one value per channel: alone it cannot update the
/// running variance (an error, as in PyTorch), synchronised it can.
#[test]
fn sync_bn_shards_train_as_one_device_with_the_whole_batch() {
    use attnrt::train::data::batches::{Batch, SampleOrder, fill_batch, shard_ranges};
    let split = shard_ranges(&DistributionRatio::new(vec![2, 3, 5]).unwrap(), 6);
    assert_eq!(split.iter().map(|r| r.len()).collect::<Vec<_>>(), [1, 2, 3]);
    let one = shard_ranges(&DistributionRatio::new(vec![10]).unwrap(), 6);
    let worst = |x: &[f32], y: &[f32]| {
        let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs() / scale)
            .fold(0.0f32, f32::max)
    };
    for side in [64, 32] {
        let d = Dataset::synthetic_sized(12, side, 4);
        let model = ModelSpec::parse("shufflenet_v2_x1_0", d.shape(), 10, "test").unwrap();
        let opt = Optimizer::sgd(0.01);
        let fresh = State::fresh(model.init(2), &opt).with_buffers(model.initial_buffers());
        let engine = |devices: usize, sync: bool| {
            CpuEngine::new(model.clone(), opt, F32, devices, fresh.clone()).with_sync_bn(sync)
        };
        let (mut whole, mut synced) = (engine(1, false), engine(3, true));
        let mut plain = engine(3, false);
        let mut order = SampleOrder::new(d.len(), 1);
        let mut batch = Batch {
            step: 0,
            features: Vec::new(),
            labels: Vec::new(),
        };
        for (t, bound) in [(1u64, 1e-5), (2, 1e-2)] {
            fill_batch(&d, &mut order, t - 1, 6, &mut batch).unwrap();
            let b = Arc::new(batch.clone());
            whole.step(t, &b, &one).unwrap();
            synced.step(t, &b, &split).unwrap();
            let alone = plain.step(t, &b, &split);
            let (a, b) = (whole.state().unwrap(), synced.state().unwrap());
            let (dp, db) = (worst(&a.params, &b.params), worst(&a.buffers, &b.buffers));
            println!(
                "{side}x{side} step {t}: sync_bn over 1+2+3 vs one device: params {dp:.2e}, \
                 running statistics {db:.2e}"
            );
            assert!(
                dp < bound && db < bound,
                "step {t}: params {dp}, buffers {db}"
            );
            assert_ne!(a.params, fresh.params);
            if side == 32 {
                let e = alone.unwrap_err().to_string();
                assert!(e.contains("more than one value per channel"), "{e}");
                break;
            }
            alone.unwrap();
            let c = plain.state().unwrap();
            let (dp, db) = (worst(&a.params, &c.params), worst(&a.buffers, &c.buffers));
            assert!(
                dp > 1e-1 && db > 1e-1,
                "step {t}: shards normalised alone: {dp}, {db}"
            );
        }
    }
}

/// The backward pass against central differences of the loss, one coordinate at a time
/// (batch 4): AlexNet's last convolutions and its classifier (convolution biases, the
/// flatten, the adaptive pooling that repeats a 1x1 map to 6x6, the linear chain), and the
/// last tensors of ShuffleNet, DenseNet and ResNet-50 (the classifier and the batch norm
/// before it). Coordinates deeper in are not checked this way: with batch norm over 4 values
/// per channel the f32 loss is too rough there for a difference quotient to converge (in
/// ResNet's stem it moves by 2x between steps of 1e-3 and 1e-4); the golden file checks the
/// stem's gradient and every gradient's norm against PyTorch instead. The step is 3e-3 of the
/// coordinate (at least 3e-4): at 1e-3 the f32 loss's rounding moved the quotient past the
/// tolerance on this data set (ShuffleNet's `conv5.0.weight`, gradient 2.78e-4: quotients
/// 2.6e-4, 3.0e-4, 1.7e-4, 4.8e-4 at 1e-2, 3e-3, 1e-3, 3e-4 of the coordinate), while 3e-3
/// met it for every model on four synthetic data sets (seeds 1 to 4).
#[test]
fn gradients_match_central_differences() {
    use attnrt::train::models::cnn::cpu::forward_backward;
    for (arch, size, last) in [
        (Arch::AlexNet, 63, 8),
        (Arch::ShuffleNetV2, 64, 6),
        (Arch::DenseNet121, 32, 4),
        (Arch::ResNet50, 32, 4),
    ] {
        let image = attnrt::train::data::ImageShape {
            channels: 3,
            height: size,
            width: size,
        };
        let config = CnnConfig {
            arch,
            classes: 10,
            image,
        };
        let graph = cnn::build(config, "test").unwrap().without_dropout();
        let params = graph.init(3);
        let d = Dataset::synthetic_sized(4, size, 1);
        let f = image.features();
        let mut x = vec![0.0f32; 4 * f];
        let labels: Vec<u32> = (0..4)
            .map(|i| {
                d.sample(i, Augment::None, &mut x[i * f..(i + 1) * f])
                    .unwrap()
            })
            .collect();
        let mut grads = vec![0.0f32; params.len()];
        let loss = |p: &[f32], g: &mut [f32]| {
            forward_backward(&graph, F32, p, &x, &labels, 0.25, 0, g)
                .unwrap()
                .stats
                .loss
        };
        loss(&params, &mut grads);
        let mut scratch = vec![0.0f32; params.len()];
        let slots = &graph.layout.slots;
        for s in &slots[slots.len().saturating_sub(last)..] {
            let i = s.offset + s.len / 2;
            let h = 3e-3 * params[i].abs().max(0.1);
            let mut p = params.clone();
            p[i] += h;
            let up = loss(&p, &mut scratch);
            p[i] -= 2.0 * h;
            let down = loss(&p, &mut scratch);
            let fd = (up - down) / (2.0 * f64::from(h));
            let g = f64::from(grads[i]);
            println!("{} {}: {g:+.5e} vs {fd:+.5e}", arch.name(), s.name);
            assert!(
                (g - fd).abs() <= 0.05 * g.abs() + 5e-5,
                "{} {}: {g} vs {fd}",
                arch.name(),
                s.name
            );
        }
    }
}

/// `forward_backward_along`: along no values it is `forward_backward`; the values it is given
/// replace the CPU's own (the logits here, so the loss's gradient follows them); a value of the
/// wrong length is an error naming it. And a golden check of a step that hands over its
/// forward values scores the gradients' families along them too (here the CPU's own step:
/// along its values the error is zero).
#[test]
fn the_cpu_walks_along_given_forward_values() {
    use attnrt::train::models::cnn::cpu::{forward_backward, forward_backward_along};
    let image = attnrt::train::data::ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let config = CnnConfig {
        arch: Arch::ShuffleNetV2,
        classes: 10,
        image,
    };
    let graph = cnn::build(config, "test").unwrap();
    let params = graph.init(5);
    let x: Vec<f32> = (0..2 * image.features())
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let labels = [1u32, 4];
    let values = graph.nodes.len() + 1;
    let mut plain = vec![0.0f32; params.len()];
    let p = forward_backward(&graph, F32, &params, &x, &labels, 0.5, 9, &mut plain).unwrap();
    let mut grads = vec![0.0f32; params.len()];
    let none = vec![None; values];
    let q = forward_backward_along(&graph, F32, &params, &x, &labels, 0.5, 9, &none, &mut grads)
        .unwrap();
    assert_eq!(
        (&q.logits, q.stats.loss, &grads),
        (&p.logits, p.stats.loss, &plain)
    );

    let mut logits = none.clone();
    let shifted: Vec<f32> = p.logits.iter().map(|v| v + 1.0 - 0.2 * v).collect();
    logits[values - 1] = Some(shifted.clone());
    let q = forward_backward_along(
        &graph, F32, &params, &x, &labels, 0.5, 9, &logits, &mut grads,
    )
    .unwrap();
    assert_eq!(q.logits, shifted);
    assert_ne!(grads, plain);

    let mut short = none.clone();
    short[3] = Some(vec![0.0; 5]);
    let e = forward_backward_along(
        &graph, F32, &params, &x, &labels, 0.5, 9, &short, &mut grads,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("value 3") && e.contains("hold 5 numbers"), "{e}");

    let path = golden_file("shufflenet_s1.golden.safetensors");
    let report = golden::check_with(&path, |input| {
        let mut out = golden::cpu_step(input)?;
        out.values = Some(vec![None; input.graph.nodes.len() + 1]);
        Ok(out)
    })
    .unwrap();
    for f in &report.families {
        match f.name {
            // The step is the CPU's own: along its values it is the reference itself.
            "grad" | "grad_norm" => assert_eq!(f.along, Some(0.0), "{f:?}"),
            _ => assert_eq!(f.along, None, "{f:?}"),
        }
    }
    assert!(report.passed(), "{report:?}");
}

/// A CNN's running statistics are saved with its checkpoints (`buffer/NAME`) and a resumed
/// run continues from them.
#[test]
fn cnn_checkpoints_keep_the_running_statistics_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let run_to = |iterations: u64, resume: bool| {
        let job = cnn_job(
            dir.path(),
            "shufflenet_v2_x1_0",
            32,
            iterations,
            "classes = 10\n",
        );
        let mut cmd = train();
        cmd.arg("--jobs")
            .arg(&job)
            .args(["--gpus", "cpu:2", "--checkpoint-dir"])
            .arg(&ckpt);
        if resume {
            cmd.arg("--resume");
        }
        run(&mut cmd)
    };
    let (code, text) = run_to(2, false);
    assert_eq!(code, 0, "{text}");
    let latest = attnrt::train::checkpoint::load_latest(&ckpt)
        .unwrap()
        .unwrap();
    assert_eq!(latest.meta.step, 2);
    let var = &latest.tensors["buffer/conv5.1.running_var"];
    assert_eq!(var.shape, vec![1024]);
    assert!(
        var.data.iter().all(|v| v.is_finite() && *v != 1.0),
        "not updated"
    );
    let (code, text) = run_to(3, true);
    assert_eq!(code, 0, "{text}");
    let latest = attnrt::train::checkpoint::load_latest(&ckpt)
        .unwrap()
        .unwrap();
    assert_eq!(latest.meta.step, 3);
}
