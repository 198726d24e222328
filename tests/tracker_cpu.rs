//! The tracker on the CPU: the golden check (the first three tracked frames here, the
//! whole file in `tracker_cli`), loading whole trackers (batch norms folded, configs from
//! metadata or shapes, every bad file an error naming the tensor or field), and the
//! tracking loop on a small synthetic tracker.

mod common;

use common::{synthetic_frame as frame, tiny_tracker_file as tiny_file};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use attnrt::base::safetensors::{OutTensor, write_file};
use attnrt::base::{Tensor, TensorFile};
use attnrt::kernels::conv2d::cpu::{Conv2d, Layout, conv2d};
use attnrt::tracker::crop::sample_target;
use attnrt::tracker::golden::{CheckOptions, Measure, check_golden};
use attnrt::tracker::posenc::{PositionCache, sine_encoding};
use attnrt::tracker::synthetic::{SyntheticSpec, synthetic_tracker};
use attnrt::tracker::{BBox, CpuNetwork, Network, Tracker, TrackerWeights, is_tracker};

#[test]
fn golden_first_frames_pass() {
    let g = common::tracker_golden();
    let weights = Arc::new(TrackerWeights::load(&g.weights).expect("tracker weights"));
    let t0 = Instant::now();
    let options = CheckOptions {
        frames: Some(3),
        ..CheckOptions::default()
    };
    let net = Box::new(CpuNetwork::new(weights).expect("network"));
    let report = check_golden(&g.golden, net, options).expect("check");
    eprintln!(
        "golden check, 3 frames: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    for l in &report.lines {
        assert!(l.ok, "{l:?}");
    }
    // The init template, frames 1-3 with the update at frame 3, and free-running 1-3.
    let names: Vec<&str> = report.lines.iter().map(|l| l.name.as_str()).collect();
    for want in [
        "expected.init.template.backbone.stem",
        "expected.init.template.backbone.layer3",
        "expected.frame.3.template.feat",
        "expected.frame.3.conf_logit",
        "expected.free.frame.3.state",
    ] {
        assert!(names.contains(&want), "{want} not checked: {names:?}");
    }
    assert!(
        report
            .skipped
            .iter()
            .any(|n| n.starts_with("expected.frame.4."))
    );
    // Our crops are OpenCV's to the grey level on this file.
    for l in report
        .lines
        .iter()
        .filter(|l| l.measure == Measure::GreyLevels)
    {
        assert_eq!(l.differing, 0, "{l:?}");
    }
}

/// The tiny tracker's tensors, changed by `edit`, written to a file and loaded.
fn load_edited(
    edit: impl FnOnce(&mut BTreeMap<String, Tensor>, &mut BTreeMap<String, String>),
) -> attnrt::Result<TrackerWeights> {
    let dir = tempfile::tempdir().unwrap();
    let (tensors, mut meta) = synthetic_tracker(&SyntheticSpec::tiny(), 1);
    let mut map: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    edit(&mut map, &mut meta);
    let p = dir.path().join("edited.safetensors");
    let v: Vec<(&str, OutTensor)> = map.iter().map(|(n, t)| (n.as_str(), t.into())).collect();
    write_file(&p, &v, &meta).unwrap();
    TrackerWeights::load(&p)
}

fn err(r: attnrt::Result<TrackerWeights>) -> String {
    match r {
        Ok(_) => panic!("loaded, expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tiny_tracker_loads_with_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let w = TrackerWeights::load(tiny_file(dir.path(), 1)).unwrap();
    assert_eq!((w.config.search_crop, w.config.template_crop), (256, 128));
    assert_eq!(
        (w.config.search_factor, w.config.template_factor),
        (5.0, 2.0)
    );
    assert_eq!(w.config.update_interval, None);
    let blocks: Vec<usize> = w.backbone.stages.iter().map(Vec::len).collect();
    assert_eq!(blocks, [2, 1, 1]);
    assert_eq!(w.backbone.out_channels(), 64);
    assert_eq!(w.corner_tl.convs.len(), 2);
    assert_eq!(w.d_model(), 64);
}

#[test]
fn batch_norms_fold_into_the_convolutions() {
    let (tensors, _) = synthetic_tracker(&SyntheticSpec::tiny(), 3);
    let t: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let w = TrackerWeights::load(tiny_file(dir.path(), 3)).unwrap();
    let get = |n: &str| t[n].data.clone();
    // layer1.0.conv2 (3x3) then its norm, against the folded convolution.
    let conv = &w.backbone.stages[0][0].conv2;
    let g = conv.geometry(1, 6, 5, false, Layout::Nhwc);
    let x: Vec<f32> = (0..g.shape.input_len())
        .map(|i| (i % 17) as f32 / 8.0 - 1.0)
        .collect();
    let raw = conv2d(
        &g,
        &x,
        &get("backbone.0.body.layer1.0.conv2.weight"),
        None,
        None,
    )
    .unwrap();
    let bn = |f: &str| get(&format!("backbone.0.body.layer1.0.bn2.{f}"));
    let (gamma, beta, mean, var) = (
        bn("weight"),
        bn("bias"),
        bn("running_mean"),
        bn("running_var"),
    );
    let folded = conv2d(&g, &x, &conv.weight, Some(&conv.bias), None).unwrap();
    let c = conv.out_channels;
    for (i, (&r, &f)) in raw.iter().zip(&folded).enumerate() {
        let ch = i % c;
        let want = (r as f64 - mean[ch] as f64) / (var[ch] as f64 + 1e-5).sqrt() * gamma[ch] as f64
            + beta[ch] as f64;
        assert!((want - f as f64).abs() < 1e-5, "value {i}: {want} vs {f}");
    }
    // The head's convolutions have a bias of their own, also folded.
    let h = &w.corner_tl.convs[0];
    let b0 = get("box_head.conv1_tl.0.bias")[0] as f64;
    let bn = |f: &str| get(&format!("box_head.conv1_tl.1.{f}"))[0] as f64;
    let want =
        (b0 - bn("running_mean")) / (bn("running_var") + 1e-5).sqrt() * bn("weight") + bn("bias");
    assert!((h.bias[0] as f64 - want).abs() < 1e-6);
}

#[test]
fn config_comes_from_shapes_without_metadata() {
    let w = load_edited(|_, meta| meta.clear()).unwrap();
    assert_eq!((w.config.search_crop, w.config.template_crop), (256, 128));
    assert_eq!(w.transformer.config.search_size, 16);
}

#[test]
fn module_prefix_is_accepted() {
    let w = load_edited(|t, _| {
        *t = std::mem::take(t)
            .into_iter()
            .map(|(k, v)| (format!("module.{k}"), v))
            .collect();
    })
    .unwrap();
    assert_eq!(w.backbone.stages.len(), 3);
}

#[test]
fn a_transformer_only_file_cannot_track() {
    let dir = tempfile::tempdir().unwrap();
    let golden = attnrt::model::golden::golden_dir().unwrap();
    let p = golden.join("tiny_s1.weights.safetensors");
    let file = TensorFile::open(&p).unwrap();
    assert!(!is_tracker(&file));
    let e = err(TrackerWeights::load(&p));
    assert!(
        e.contains("holds only a transformer") && e.contains("convert_checkpoint"),
        "{e}"
    );
    assert!(is_tracker(
        &TensorFile::open(tiny_file(dir.path(), 1)).unwrap()
    ));
}

#[test]
fn bad_tracker_files_are_errors_naming_the_tensor() {
    let e = err(load_edited(|t, _| {
        t.remove("box_head.conv2_br.1.running_var");
    }));
    assert!(
        e.contains("box_head.conv2_br.1.running_var") && e.contains("missing"),
        "{e}"
    );

    let e = err(load_edited(|t, _| {
        t.insert("bottleneck.weight".into(), Tensor::zeros(&[64, 32, 1, 1]));
    }));
    assert!(e.contains("bottleneck.weight") && e.contains("64"), "{e}");

    let e = err(load_edited(|t, _| {
        t.remove("backbone.0.body.layer2.0.downsample.0.weight");
    }));
    assert!(e.contains("layer2.0.downsample.0.weight"), "{e}");

    let e = err(load_edited(|t, _| {
        t.retain(|k, _| !k.starts_with("backbone.0.body.layer3"));
    }));
    assert!(
        e.contains("layer3.0.conv1.weight") && e.contains("missing"),
        "{e}"
    );

    let e = err(load_edited(|t, _| {
        t.remove("query_embed.weight");
    }));
    assert!(e.contains("query_embed.weight"), "{e}");

    let e = err(load_edited(|t, _| {
        t.insert(
            "backbone.0.body.bn1.running_var".into(),
            Tensor {
                shape: vec![8],
                data: vec![-1.0; 8],
            },
        );
    }));
    assert!(
        e.contains("bn1.running_var") && e.contains("negative"),
        "{e}"
    );

    let e = err(load_edited(|_, m| {
        m.insert("search_crop".into(), "384".into());
    }));
    assert!(
        e.contains("metadata 'search_crop'") && e.contains("256"),
        "{e}"
    );

    let e = err(load_edited(|_, m| {
        m.insert("search_factor".into(), "-5".into());
    }));
    assert!(e.contains("metadata 'search_factor'"), "{e}");

    let e = err(load_edited(|_, m| {
        m.insert("update_interval".into(), "0".into());
    }));
    assert!(e.contains("metadata 'update_interval'"), "{e}");
}

fn tiny_tracker(interval: usize) -> Tracker<CpuNetwork> {
    let dir = tempfile::tempdir().unwrap();
    let w = Arc::new(TrackerWeights::load(tiny_file(dir.path(), 1)).unwrap());
    Tracker::new(CpuNetwork::new(w).unwrap(), interval).unwrap()
}

#[test]
fn tracking_gives_clipped_boxes_and_updates_on_schedule() {
    let mut t = tiny_tracker(2);
    t.initialise(&frame(160, 120, 40, 30), BBox::new(40.0, 30.0, 30.0, 24.0))
        .unwrap();
    for i in 1..=5 {
        let r = t.track(&frame(160, 120, 40 + 3 * i, 30 + 2 * i)).unwrap();
        let b = r.bbox;
        assert!(b.is_valid() && b.w >= 10.0 && b.h >= 10.0, "{b:?}");
        assert!(
            b.x >= 0.0 && b.x <= 150.0 && b.y >= 0.0 && b.y <= 110.0,
            "{b:?}"
        );
        assert!(
            b.x + b.w <= 160.0 + 1e-9 && b.y + b.h <= 120.0 + 1e-9,
            "{b:?}"
        );
        assert_eq!(b, r.unclipped.clip(160, 120, 10.0));
        assert!(r.confidence > 0.0 && r.confidence < 1.0);
        assert_eq!(r.template_updated, i % 2 == 0 && r.confidence > 0.5);
        assert_eq!(t.frame_id(), i);
        assert_eq!(t.state(), Some(b));
    }
}

#[test]
fn teacher_forcing_sets_the_search_centre() {
    let f0 = frame(160, 120, 40, 30);
    let f1 = frame(160, 120, 50, 40);
    let forced = BBox::new(48.0, 41.0, 28.0, 25.0);
    let mut t = tiny_tracker(200);
    t.initialise(&f0, BBox::new(40.0, 30.0, 30.0, 24.0))
        .unwrap();
    t.set_state(forced);
    let r = t.track(&f1).unwrap();
    // The same search, run on the network directly around the forced state.
    let mut net = tiny_tracker(200);
    net.initialise(&f0, BBox::new(40.0, 30.0, 30.0, 24.0))
        .unwrap();
    let p = net.network_mut().search(&f1, &forced).unwrap();
    assert_eq!(r.prediction, p);
    let crop = sample_target(&f1, &forced, 5.0, 256).unwrap();
    assert_eq!(p.resize_factor, crop.resize_factor);
}

#[test]
fn tracking_is_deterministic() {
    let run = || {
        let mut t = tiny_tracker(1);
        t.initialise(&frame(100, 90, 20, 20), BBox::new(20.0, 20.0, 30.0, 24.0))
            .unwrap();
        (1..4)
            .map(|i| t.track(&frame(100, 90, 20 + i, 20)).unwrap().bbox)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn bad_frames_and_boxes_are_errors() {
    let mut t = tiny_tracker(200);
    let f = frame(160, 120, 40, 30);
    assert!(
        t.track(&f)
            .unwrap_err()
            .to_string()
            .contains("before initialise")
    );
    for (b, what) in [
        (BBox::new(200.0, 30.0, 30.0, 24.0), "outside"),
        (BBox::new(-40.0, 30.0, 30.0, 24.0), "outside"),
        (BBox::new(40.0, 30.0, f64::NAN, 24.0), "positive"),
        (BBox::new(40.0, 30.0, 30.0, 0.0), "positive"),
    ] {
        let e = t.initialise(&f, b).unwrap_err().to_string();
        assert!(e.contains(what), "{b:?}: {e}");
    }
    t.initialise(&f, BBox::new(40.0, 30.0, 30.0, 24.0)).unwrap();
    let e = t.track(&frame(100, 120, 40, 30)).unwrap_err().to_string();
    assert!(e.contains("100x120") && e.contains("160x120"), "{e}");
    let net = CpuNetwork::new(t.network().weights().clone()).unwrap();
    assert!(Tracker::new(net, 0).is_err());
}

#[test]
fn positional_encoding_follows_the_mask_and_is_cached() {
    let side = 4;
    let unpadded = vec![0u8; side * side];
    let pos = sine_encoding(&unpadded, side, 8);
    // Channel 0 is sin(y / 1) with y = (row + 1) / side * 2 pi (up to eps).
    for i in 0..side {
        let y = (i + 1) as f32 / (side as f32 + 1e-6) * std::f32::consts::TAU;
        assert!((pos[i * side * 8] - y.sin()).abs() < 1e-6);
        // Channel 4 is sin(x / 1) at column 0: x = 1 / side * 2 pi.
        let x = 1.0 / (side as f32 + 1e-6) * std::f32::consts::TAU;
        assert!((pos[i * side * 8 + 4] - x.sin()).abs() < 1e-6);
    }
    let mut padded = unpadded.clone();
    padded[3] = 1;
    assert_ne!(sine_encoding(&padded, side, 8), pos);
    let mut cache = PositionCache::default();
    let a = cache.get(&unpadded, side, 8);
    let b = cache.get(&unpadded, side, 8);
    assert!(Arc::ptr_eq(&a, &b));
    cache.get(&padded, side, 8);
    assert_eq!(cache.len(), 2);
}

#[test]
fn conv2d_geometry_of_a_folded_convolution() {
    let dir = tempfile::tempdir().unwrap();
    let w = TrackerWeights::load(tiny_file(dir.path(), 1)).unwrap();
    let g: Conv2d = w.backbone.stem.geometry(1, 256, 256, true, Layout::Nhwc);
    assert_eq!(
        (g.shape.out_size(), g.shape.stride, g.shape.pad),
        ([128, 128], 2, 3)
    );
}
