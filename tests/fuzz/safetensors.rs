//! Safetensors files through every loader: the file itself (`base::safetensors`), model
//! weights, transformer golden files (inputs and expected tensors), tracker weights and
//! tracker golden files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use attnrt::base::TensorFile;
use attnrt::base::safetensors::{OutTensor, serialize};
use attnrt::cswintt::{self, Inputs};
use attnrt::model::golden::golden_pair;
use attnrt::model::synthetic::synthetic_weights;
use attnrt::model::weights::infer_config;
use attnrt::model::{Config, Weights};
use attnrt::tracker::golden::{CheckOptions, check_golden};
use attnrt::tracker::synthetic::{SyntheticSpec, write_synthetic_tracker};
use attnrt::tracker::{TrackerWeights, is_tracker};
use proptest::prelude::*;

use crate::harness::{bounded, config, config_scaled, damaged_safetensors, safetensors_bytes};

/// Small files of every dtype the readers meet, with metadata.
fn small_files() -> Vec<Vec<u8>> {
    let label = Path::new("seed.safetensors");
    let t = [1.0f32, -2.5, 0.0, 3.25, 1e-3, 7.0];
    let mask = [0u8, 1, 0, 1];
    let meta = BTreeMap::from([
        ("format".to_string(), "x".to_string()),
        ("n".to_string(), "8".to_string()),
    ]);
    let written = serialize(
        label,
        &[
            (
                "t",
                OutTensor::F32 {
                    shape: &[2, 3],
                    data: &t,
                },
            ),
            (
                "m",
                OutTensor::U8 {
                    shape: &[2, 2],
                    data: &mask,
                },
            ),
        ],
        &meta,
    )
    .unwrap();
    let mut files = vec![written];
    // Dtypes this crate reads but does not write.
    for (dtype, width) in [
        ("F16", 2),
        ("BF16", 2),
        ("F64", 8),
        ("I64", 8),
        ("I32", 4),
        ("BOOL", 1),
        ("I8", 1),
    ] {
        let header = format!(
            r#"{{"__metadata__":{{"k":"v"}},"a":{{"dtype":"{dtype}","shape":[2,2],"data_offsets":[0,{n}]}},"b":{{"dtype":"{dtype}","shape":[1],"data_offsets":[{n},{m}]}}}}"#,
            n = 4 * width,
            m = 5 * width
        );
        let data: Vec<u8> = (0..5 * width).map(|i| (i * 37 % 251) as u8).collect();
        files.push(safetensors_bytes(&header, &data));
    }
    files
}

/// Every read a loader may make of every tensor.
fn read_everything(file: &TensorFile) {
    let _ = file.metadata();
    for name in file.names() {
        let shape = file.shape(&name).map(<[usize]>::to_vec).unwrap_or_default();
        let _ = file.dtype(&name);
        let _ = file.f32(&name);
        let _ = file.f32_exact(&name);
        let _ = file.f64(&name);
        let _ = file.u8(&name);
        let _ = file.mask(&name, &shape);
        let _ = file.f32_shaped(&name, &shape);
    }
}

/// The tiny golden set's weights and golden file, when the golden directory is there.
fn golden_seed() -> Option<(Vec<u8>, Vec<u8>)> {
    match golden_pair("tiny_s1") {
        Ok((w, g)) => Some((std::fs::read(w).unwrap(), std::fs::read(g).unwrap())),
        Err(e) => {
            eprintln!("skipped: the tiny golden files ({e}); fuzzing synthetic weights only");
            None
        }
    }
}

fn synthetic_weights_bytes(seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    synthetic_weights(&Config::tiny(), seed)
        .save(&path, &BTreeMap::new())
        .unwrap();
    std::fs::read(path).unwrap()
}

/// A file whose header claims a tensor of terabytes: an error naming the file, at once,
/// without allocating what it claims.
#[test]
fn a_header_claiming_terabytes_is_an_error_not_an_allocation() {
    let cases = [
        // 2^40 f32 values (4 TB) whose offsets the 64-byte file does not hold.
        r#"{"t":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}"#,
        // A shape whose byte count overflows 64 bits.
        r#"{"t":{"dtype":"F64","shape":[4294967296,4294967296,16],"data_offsets":[0,64]}}"#,
        // A consistent shape and offsets, for 1 TB of data the file does not hold.
        r#"{"t":{"dtype":"U8","shape":[1099511627776],"data_offsets":[0,1099511627776]}}"#,
    ];
    for header in cases {
        let started = std::time::Instant::now();
        let bytes = safetensors_bytes(header, &[0u8; 64]);
        let e = TensorFile::from_bytes("huge.safetensors", bytes).unwrap_err();
        assert!(e.to_string().starts_with("huge.safetensors"), "{e}");
        assert!(started.elapsed().as_secs_f64() < 0.1);
    }
    // A header length of 1 TB in front of a 16-byte header.
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend(b"{}              ");
    let e = TensorFile::from_bytes("huge.safetensors", bytes).unwrap_err();
    assert!(e.to_string().contains("huge.safetensors"), "{e}");
    // The same claims through the model and tracker loaders, from a real file on disk.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.safetensors");
    std::fs::write(&path, safetensors_bytes(cases[0], &[0u8; 64])).unwrap();
    for e in [
        Weights::load(&path).unwrap_err(),
        TrackerWeights::load(&path).unwrap_err(),
    ] {
        assert!(e.to_string().contains("huge.safetensors"), "{e}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn safetensors_files(bytes in damaged_safetensors(small_files(), 4)) {
        bounded("safetensors file", move || {
            if let Ok(file) = TensorFile::from_bytes("fuzz.safetensors", bytes) {
                read_everything(&file);
            }
        });
    }

    #[test]
    fn model_weights(bytes in damaged_safetensors(
        [synthetic_weights_bytes(1)].into_iter().chain(golden_seed().map(|g| g.0)).collect(),
        4,
    )) {
        bounded("model weights", move || {
            if let Ok(file) = TensorFile::from_bytes("fuzz.weights.safetensors", bytes) {
                let _ = infer_config(&file);
                let _ = Weights::from_file(&file);
            }
        });
    }
}

/// The transformer's golden files: their inputs, then every expected tensor against the
/// outputs of the undamaged inputs.
#[test]
fn transformer_golden_files() {
    let Some((weights, golden)) = golden_seed() else {
        return;
    };
    let weights = Weights::from_file(&TensorFile::from_bytes("w", weights).unwrap()).unwrap();
    let model = weights.config.clone();
    let file = TensorFile::from_bytes("g", golden.clone()).unwrap();
    let inputs = Inputs::from_file(&file, &model).unwrap();
    let outputs = Arc::new(cswintt::cpu::run(Arc::new(weights), &inputs, true).unwrap());
    let model = Arc::new(model);
    proptest!(config(), |(bytes in damaged_safetensors(vec![golden.clone()], 4))| {
        let (model, outputs) = (model.clone(), outputs.clone());
        bounded("transformer golden file", move || {
            if let Ok(file) = TensorFile::from_bytes("fuzz.golden.safetensors", bytes) {
                let _ = Inputs::from_file(&file, &model);
                let _ = cswintt::check::compare(&file, &outputs, 1e-5);
            }
        });
    });
}

/// A tracker smaller than the tests' tiny one (128-pixel crops, one block a stage, a few
/// channels), so that the golden target, which runs it on every file that loads, stays fast.
fn fuzz_tracker() -> SyntheticSpec {
    SyntheticSpec {
        transformer: Config {
            search_size: 8,
            ..Config::tiny()
        },
        stem: 4,
        widths: [2, 4, 8],
        blocks: [1, 1, 1],
        head: vec![8, 4],
        update_interval: None,
    }
}

fn tracker_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    write_synthetic_tracker(&path, &fuzz_tracker(), 3).unwrap();
    std::fs::read(path).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tracker_weights(bytes in damaged_safetensors(vec![tracker_bytes()], 4)) {
        bounded("tracker weights", move || {
            if let Ok(file) = TensorFile::from_bytes("fuzz.tracker.safetensors", bytes) {
                let _ = is_tracker(&file);
                let _ = TrackerWeights::from_file(&file);
            }
        });
    }
}

/// The CPU tracker network the golden check runs.
fn cpu(weights: &Arc<TrackerWeights>) -> Box<dyn attnrt::tracker::Network> {
    Box::new(attnrt::tracker::CpuNetwork::new(weights.clone()).unwrap())
}

/// One tensor of a tracker golden file being built.
enum Golden {
    U8(Vec<usize>, Vec<u8>),
    F32(Vec<usize>, Vec<f32>),
}

fn golden_file(tensors: &[(String, Golden)]) -> Vec<u8> {
    let meta = BTreeMap::from([
        (
            "format".to_string(),
            attnrt::tracker::weights::FORMAT.to_string(),
        ),
        ("update_interval".to_string(), "1".to_string()),
        (
            "f32_vs_f64_max_rel_err".to_string(),
            r#"{"feat": 1e-6}"#.to_string(),
        ),
    ]);
    let out: Vec<(&str, OutTensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let t = match t {
                Golden::U8(shape, data) => OutTensor::U8 { shape, data },
                Golden::F32(shape, data) => OutTensor::F32 { shape, data },
            };
            (n.as_str(), t)
        })
        .collect();
    serialize(Path::new("tracker.golden.safetensors"), &out, &meta).unwrap()
}

/// A small tracker golden file that the check reads to the end: two frames, the first box,
/// the second frame's state, and every tensor the check then asks for, added one by one as it
/// reports it missing (crops and masks of the sizes it needs, zeros elsewhere: their lines
/// fail, which is a result, not an error).
fn tracker_golden_bytes(weights: &Arc<TrackerWeights>, dir: &Path) -> Vec<u8> {
    let (h, w) = (48, 64);
    let frames: Vec<u8> = (0..2 * h * w * 3).map(|i| (i * 7 % 256) as u8).collect();
    let mut tensors = vec![
        (
            "input.frames".to_string(),
            Golden::U8(vec![2, h, w, 3], frames),
        ),
        (
            "input.init.box".to_string(),
            Golden::F32(vec![4], vec![20.0, 12.0, 16.0, 14.0]),
        ),
    ];
    let (tc, sc) = (weights.config.template_crop, weights.config.search_crop);
    let path = dir.join("seed.golden.safetensors");
    for _ in 0..200 {
        let bytes = golden_file(&tensors);
        std::fs::write(&path, &bytes).unwrap();
        let options = CheckOptions {
            frames: Some(1),
            ..CheckOptions::default()
        };
        let missing = match check_golden(&path, cpu(weights), options) {
            Ok(_) => return bytes,
            Err(attnrt::Error::Invalid { context, problem }) if problem.contains("missing") => {
                context
                    .rsplit("tensor '")
                    .next()
                    .unwrap()
                    .trim_end_matches('\'')
                    .to_string()
            }
            Err(e) => panic!("the tracker golden seed: {e}"),
        };
        let side = if missing.contains("template") { tc } else { sc };
        let tensor = if missing.ends_with(".crop") {
            Golden::U8(vec![side * side * 3], vec![128; side * side * 3])
        } else if missing.ends_with("mask") && missing.contains("input.")
            || missing.ends_with("amask")
        {
            Golden::U8(vec![side * side], vec![0; side * side])
        } else if missing.ends_with("mask") || missing.ends_with("template_updated") {
            Golden::U8(vec![1], vec![0])
        } else if missing.ends_with("box") || missing.contains("state") {
            Golden::F32(vec![4], vec![21.0, 12.5, 15.0, 14.0])
        } else {
            Golden::F32(vec![1], vec![1.0])
        };
        tensors.push((missing, tensor));
    }
    panic!("the tracker golden seed still misses tensors after 200 were added");
}

/// Tracker golden files through the whole check (the tiny tracker runs on each damaged file
/// that still loads, so this target runs a tenth of the cases).
#[test]
fn tracker_golden_files() {
    let weights = Arc::new(
        TrackerWeights::from_file(&TensorFile::from_bytes("t", tracker_bytes()).unwrap()).unwrap(),
    );
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let seed = tracker_golden_bytes(&weights, dir.path());
    proptest!(config_scaled(10), |(bytes in damaged_safetensors(vec![seed.clone()], 4))| {
        let (weights, dir) = (weights.clone(), dir.clone());
        bounded("tracker golden file", move || {
            let path = dir.path().join(format!("{:?}.golden.safetensors", std::thread::current().id()));
            std::fs::write(&path, bytes).unwrap();
            let options = CheckOptions { frames: Some(1), ..CheckOptions::default() };
            let _ = check_golden(&path, cpu(&weights), options);
        });
    });
}

/// A weights file whose metadata claims a search region of 30000 tokens a side (windows
/// dividing it, under the old bound of 2^30 tokens in all) is refused naming the key, before
/// any tensor is compared with it: a config sizes every activation (that one 230 GB at
/// d_model 64), so its sides are bounded whatever the file holds.
#[test]
fn weights_search_size_claiming_gigatokens_is_refused() {
    let mut file = TensorFile::from_bytes("w", synthetic_weights_bytes(1)).unwrap();
    for (key, value) in [("search_size", "30000"), ("template_size", "30000")] {
        let mut meta = file.metadata();
        meta.insert(key.into(), value.into());
        let bytes = with_metadata(&file, &meta);
        let e = Weights::from_file(&TensorFile::from_bytes("big.safetensors", bytes).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("big.safetensors") && e.contains(key), "{e}");
        file = TensorFile::from_bytes("w", synthetic_weights_bytes(1)).unwrap();
    }
}

/// `file`'s tensors (all f32) with `meta` as metadata.
fn with_metadata(file: &TensorFile, meta: &BTreeMap<String, String>) -> Vec<u8> {
    let tensors: Vec<(String, attnrt::base::Tensor)> = file
        .names()
        .into_iter()
        .map(|n| {
            let t = file.f32(&n).unwrap();
            (n, t)
        })
        .collect();
    let out: Vec<(&str, OutTensor)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.into()))
        .collect();
    serialize(Path::new("w"), &out, meta).unwrap()
}

/// A tracker golden file whose frames have no pixel (`[2, 0, 64, 3]`) is an error naming
/// `input.frames`; it made the check split the frames into chunks of zero bytes, a panic.
#[test]
fn tracker_golden_frames_of_zero_pixels_are_an_error() {
    let weights = Arc::new(
        TrackerWeights::from_file(&TensorFile::from_bytes("t", tracker_bytes()).unwrap()).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    for shape in [[2, 0, 64, 3], [2, 48, 0, 3], [0, 48, 64, 3]] {
        let bytes = golden_file(&[(
            "input.frames".to_string(),
            Golden::U8(shape.to_vec(), Vec::new()),
        )]);
        let path = dir.path().join("zero.golden.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let e = check_golden(&path, cpu(&weights), CheckOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor 'input.frames'") && e.contains("no frame"),
            "{e}"
        );
    }
}

/// Found by the fuzzer: weights whose metadata says `nhead = 10^12` and has no
/// `window_sizes` made the loader build the default windows, one per head: an allocation of
/// 8 TB, which aborts the process (with 2^64 - 1 heads, a capacity-overflow panic). Now an
/// error naming `nhead`: heads split d_model's channels, so at most d_model of them.
#[test]
fn weights_nhead_claiming_terabytes_of_windows_is_an_error() {
    let file = TensorFile::from_bytes("w", synthetic_weights_bytes(1)).unwrap();
    for nhead in ["1000000000000", "18446744073709551615", "65"] {
        let mut meta = file.metadata();
        meta.remove("window_sizes");
        meta.insert("nhead".into(), nhead.into());
        let bytes = with_metadata(&file, &meta);
        let e = Weights::from_file(&TensorFile::from_bytes("heads.safetensors", bytes).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("heads.safetensors: metadata 'nhead'") && e.contains(nhead),
            "{e}"
        );
    }
}
