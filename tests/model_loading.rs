//! Loading weights and inputs: every bad-input case gets an error naming the file and
//! the tensor or field, never a panic; f16/bf16 load; configs come from metadata or
//! shapes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attnrt::Error;
use attnrt::base::TensorFile;
use attnrt::cswintt::Inputs;
use attnrt::model::Weights;
use attnrt::model::config::Config;
use attnrt::model::golden::golden_pair;
use attnrt::model::synthetic::{Padding, random_inputs, synthetic_weights};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// A raw tensor for building test files: dtype, shape, little-endian bytes.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32_raw(shape: &[usize], data: &[f32]) -> Raw {
    Raw {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// All tensors of a file as raw bytes (any dtype), with its metadata.
fn read_raw(path: &Path) -> (BTreeMap<String, Raw>, BTreeMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let md: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                Raw {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    bytes: v.data().to_vec(),
                },
            )
        })
        .collect();
    (tensors, md)
}

fn write_raw(path: &Path, tensors: &BTreeMap<String, Raw>, meta: &BTreeMap<String, String>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, r)| {
            (
                n.clone(),
                TensorView::new(r.dtype, r.shape.clone(), &r.bytes).unwrap(),
            )
        })
        .collect();
    let meta = (!meta.is_empty()).then(|| meta.clone().into_iter().collect());
    safetensors::serialize_to_file(views, meta, path).unwrap();
}

fn tiny_weights_path() -> PathBuf {
    golden_pair("tiny_s1")
        .unwrap_or_else(|e| panic!("golden files are required: {e}"))
        .0
}

fn golden_path(name: &str) -> PathBuf {
    golden_pair(name)
        .unwrap_or_else(|e| panic!("golden files are required: {e}"))
        .1
}

/// Writes a modified copy of the tiny golden weights and loads it.
fn load_modified(
    f: impl FnOnce(&mut BTreeMap<String, Raw>, &mut BTreeMap<String, String>),
) -> (attnrt::Result<Weights>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, mut m) = read_raw(&tiny_weights_path());
    f(&mut t, &mut m);
    let p = dir.path().join("w.safetensors");
    write_raw(&p, &t, &m);
    (Weights::load(&p), dir)
}

fn invalid_msg(r: attnrt::Result<Weights>) -> String {
    match r {
        Err(e @ Error::Invalid { .. }) => e.to_string(),
        Err(e) => panic!("expected Error::Invalid, got {e:?}"),
        Ok(_) => panic!("expected an error, got weights"),
    }
}

const QKV0: &str = "transformer.transformer.0.qkv_embedding.weight";

#[test]
fn golden_weights_load_with_metadata_config() {
    let w = Weights::load(tiny_weights_path()).unwrap();
    assert_eq!(w.config, Config::tiny());
    assert_eq!(w.encoder.len(), 2);
    assert_eq!(w.decoder.len(), 2);
    assert_eq!(
        w.rel_bias_tables.keys().copied().collect::<Vec<_>>(),
        [1, 2, 4]
    );
    assert!(w.query_embed.is_none());
}

#[test]
fn config_inferred_from_shapes_without_metadata() {
    let (r, _d) = load_modified(|_, m| m.clear());
    let w = r.unwrap();
    assert_eq!(w.config, Config::tiny());
    assert_eq!(w, Weights::load(tiny_weights_path()).unwrap());
}

#[test]
fn module_prefix_is_accepted() {
    let (r, _d) = load_modified(|t, _| {
        let old = std::mem::take(t);
        for (n, v) in old {
            t.insert(format!("module.{n}"), v);
        }
    });
    assert_eq!(r.unwrap(), Weights::load(tiny_weights_path()).unwrap());
}

#[test]
fn missing_file() {
    let err = Weights::load("/nonexistent/dir/model.safetensors").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("/nonexistent/dir/model.safetensors")
    );
}

#[test]
fn not_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    std::fs::write(&p, b"this is not a safetensors file at all, just some text").unwrap();
    let msg = invalid_msg(Weights::load(&p));
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(msg.contains("not a"), "{msg}");
    // Too short for even the header length.
    std::fs::write(&p, b"abc").unwrap();
    assert!(invalid_msg(Weights::load(&p)).contains("model.safetensors"));
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.safetensors");
    let bytes = std::fs::read(tiny_weights_path()).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    let msg = invalid_msg(Weights::load(&p));
    assert!(
        msg.contains("cut.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
    // Cut inside the header.
    std::fs::write(&p, &bytes[..100]).unwrap();
    let msg = invalid_msg(Weights::load(&p));
    assert!(msg.contains("cut.safetensors"), "{msg}");
}

#[test]
fn missing_tensor() {
    let name = "transformer.transformer_post.1.norm3.bias";
    let (r, _d) = load_modified(|t, _| {
        t.remove(name);
    });
    let msg = invalid_msg(r);
    assert!(
        msg.contains(&format!("tensor '{name}'")) && msg.contains("missing"),
        "{msg}"
    );
    assert!(msg.contains("w.safetensors"), "{msg}");
}

#[test]
fn missing_rel_bias_table() {
    let (r, _d) = load_modified(|t, _| {
        t.remove("transformer.rel_bias_table2");
    });
    let msg = invalid_msg(r);
    assert!(msg.contains("rel_bias_table2"), "{msg}");
}

#[test]
fn wrong_shape() {
    let (r, _d) = load_modified(|t, _| {
        t.insert(QKV0.into(), f32_raw(&[192, 32], &vec![0.0; 192 * 32]));
    });
    let msg = invalid_msg(r);
    assert!(
        msg.contains(&format!("tensor '{QKV0}'"))
            && msg.contains("expected shape [192, 64], found [192, 32]"),
        "{msg}"
    );
}

#[test]
fn unsupported_dtypes() {
    for dtype in [Dtype::I64, Dtype::F64] {
        let (r, _d) = load_modified(|t, _| {
            t.insert(
                QKV0.into(),
                Raw {
                    dtype,
                    shape: vec![192, 64],
                    bytes: vec![0; 192 * 64 * 8],
                },
            );
        });
        let msg = invalid_msg(r);
        assert!(
            msg.contains(&format!("tensor '{QKV0}'"))
                && msg.contains(&format!("unsupported dtype {dtype:?}")),
            "{msg}"
        );
    }
}

#[test]
fn non_finite_values() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let (r, _d) = load_modified(|t, _| {
            let raw = t.get_mut("transformer.post_norm.weight").unwrap();
            raw.bytes[12..16].copy_from_slice(&bad.to_le_bytes());
        });
        let msg = invalid_msg(r);
        assert!(
            msg.contains("tensor 'transformer.post_norm.weight'")
                && msg.contains("non-finite")
                && msg.contains("index 3"),
            "{msg}"
        );
    }
}

#[test]
fn inconsistent_metadata_d_model() {
    let (r, _d) = load_modified(|_, m| {
        m.insert("d_model".into(), "128".into());
    });
    let msg = invalid_msg(r);
    assert!(
        msg.contains("metadata 'd_model'") && msg.contains("128") && msg.contains("64"),
        "{msg}"
    );
}

#[test]
fn inconsistent_metadata_layers() {
    let (r, _d) = load_modified(|_, m| {
        m.insert("enc_layers".into(), "3".into());
    });
    let msg = invalid_msg(r);
    assert!(msg.contains("metadata 'enc_layers'"), "{msg}");
}

#[test]
fn nhead_not_dividing_d_model() {
    let (r, _d) = load_modified(|_, m| {
        m.insert("nhead".into(), "7".into());
        m.insert("window_sizes".into(), "1,2,4,8,1,2,4".into());
    });
    let msg = invalid_msg(r);
    assert!(
        msg.contains("nhead") && msg.contains("does not divide"),
        "{msg}"
    );
}

#[test]
fn window_count_disagrees_with_nhead() {
    let (r, _d) = load_modified(|_, m| {
        m.insert("window_sizes".into(), "1,2,4,8".into());
    });
    let msg = invalid_msg(r);
    assert!(msg.contains("window_sizes"), "{msg}");
}

#[test]
fn search_size_not_divisible_by_largest_window() {
    let (r, _d) = load_modified(|_, m| {
        m.insert("search_size".into(), "20".into());
    });
    let msg = invalid_msg(r);
    assert!(
        msg.contains("search_size") && msg.contains("not divisible by window size 8"),
        "{msg}"
    );
}

#[test]
fn bad_metadata_value() {
    let (r, _d) = load_modified(|_, m| {
        m.insert("dim_feedforward".into(), "lots".into());
    });
    let msg = invalid_msg(r);
    assert!(
        msg.contains("metadata 'dim_feedforward'") && msg.contains("lots"),
        "{msg}"
    );
}

#[test]
fn f16_and_bf16_weights_load() {
    let f32w = Weights::load(tiny_weights_path()).unwrap();
    for dtype in [Dtype::F16, Dtype::BF16] {
        let (r, _d) = load_modified(|t, _| {
            for raw in t.values_mut() {
                let vals: Vec<f32> = raw
                    .bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                raw.dtype = dtype;
                raw.bytes = vals
                    .iter()
                    .flat_map(|&x| match dtype {
                        Dtype::F16 => half::f16::from_f32(x).to_le_bytes(),
                        _ => half::bf16::from_f32(x).to_le_bytes(),
                    })
                    .collect();
            }
        });
        let w = r.unwrap();
        assert_eq!(w.config, f32w.config);
        let tol = if dtype == Dtype::F16 { 1e-3 } else { 1e-2 };
        for ((n, a), (_, b)) in w.named_tensors().iter().zip(f32w.named_tensors()) {
            let err = attnrt::base::relative_error(&a.data, &b.data).unwrap();
            assert!(err < tol, "{dtype:?} {n}: {err}");
        }
    }
}

#[test]
fn synthetic_round_trip_and_metadata() {
    let mut cfg = Config::tiny();
    cfg.search_size = 16;
    let w = synthetic_weights(&cfg, 7);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("syn.safetensors");
    w.save(&p, &BTreeMap::from([("seed".to_string(), "7".to_string())]))
        .unwrap();
    let back = Weights::load(&p).unwrap();
    assert_eq!(back, w);
    let f = TensorFile::open(&p).unwrap();
    let golden_keys: Vec<String> = TensorFile::open(tiny_weights_path())
        .unwrap()
        .metadata()
        .into_keys()
        .collect();
    assert_eq!(f.metadata().into_keys().collect::<Vec<_>>(), golden_keys);
    assert_eq!(f.meta_value("search_size"), Some("16"));
    // Same seed, same model; another seed, another model.
    assert_eq!(synthetic_weights(&cfg, 7), w);
    assert_ne!(synthetic_weights(&cfg, 8), w);
}

#[test]
fn released_synthetic_model_shapes() {
    let w = synthetic_weights(&Config::released(), 1);
    assert_eq!(w.encoder.len(), 6);
    assert_eq!(w.decoder.len(), 6);
    assert_eq!(w.encoder[0].qkv.weight.shape, [768, 256]);
    assert_eq!(w.encoder[0].ff1.weight.shape, [2048, 256]);
    assert_eq!(w.rel_bias_tables[&1].len(), 1407);
    // Shapes-only inference recovers S=24, T=8 from the bias tables.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("released.safetensors");
    w.save(&p, &BTreeMap::new()).unwrap();
    let (t, mut m) = read_raw(&p);
    m.clear();
    write_raw(&p, &t, &m);
    assert_eq!(Weights::load(&p).unwrap().config, Config::released());
}

// ---- inputs ----

fn inputs_modified(
    golden: &str,
    f: impl FnOnce(&mut BTreeMap<String, Raw>),
) -> (attnrt::Result<Inputs>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, m) = read_raw(&golden_path(golden));
    f(&mut t);
    let p = dir.path().join("in.safetensors");
    write_raw(&p, &t, &m);
    (Inputs::load(&p, &Config::tiny()), dir)
}

fn input_err(r: attnrt::Result<Inputs>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn golden_inputs_load() {
    let i = Inputs::load(golden_path("tiny_pad_s2"), &Config::tiny()).unwrap();
    assert_eq!(i.batch, 2);
    assert!(i.search_mask.iter().any(|&m| m != 0));
    assert!(i.query_embed.is_some());
}

#[test]
fn input_missing_file() {
    let e = Inputs::load("/no/such/inputs.safetensors", &Config::tiny()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(e.to_string().contains("/no/such/inputs.safetensors"));
}

#[test]
fn input_missing_tensor() {
    let (r, _d) = inputs_modified("tiny_s1", |t| {
        t.remove("input.template2.feat");
    });
    let msg = input_err(r);
    assert!(
        msg.contains("in.safetensors: tensor 'input.template2.feat'") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn input_wrong_shape() {
    let (r, _d) = inputs_modified("tiny_s1", |t| {
        t.insert(
            "input.template1.feat".into(),
            f32_raw(&[8, 8, 1, 32], &vec![0.0; 8 * 8 * 32]),
        );
    });
    let msg = input_err(r);
    assert!(
        msg.contains("tensor 'input.template1.feat'")
            && msg.contains("expected shape [8, 8, 1, 64]"),
        "{msg}"
    );
}

#[test]
fn input_unsupported_dtype_and_non_finite() {
    let (r, _d) = inputs_modified("tiny_s1", |t| {
        let raw = t.get_mut("input.search.feat").unwrap();
        raw.bytes[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let msg = input_err(r);
    assert!(
        msg.contains("tensor 'input.search.feat'") && msg.contains("non-finite"),
        "{msg}"
    );
    let (r, _d) = inputs_modified("tiny_s1", |t| {
        t.insert(
            "input.query_embed".into(),
            Raw {
                dtype: Dtype::I64,
                shape: vec![1, 64],
                bytes: vec![0; 64 * 8],
            },
        );
    });
    let msg = input_err(r);
    assert!(
        msg.contains("tensor 'input.query_embed'") && msg.contains("unsupported dtype"),
        "{msg}"
    );
}

#[test]
fn input_mask_batch_mismatch() {
    let (r, _d) = inputs_modified("tiny_s1", |t| {
        t.insert(
            "input.search.mask".into(),
            Raw {
                dtype: Dtype::U8,
                shape: vec![2, 24, 24],
                bytes: vec![0; 2 * 24 * 24],
            },
        );
    });
    let msg = input_err(r);
    assert!(
        msg.contains("tensor 'input.search.mask'") && msg.contains("[1, 24, 24]"),
        "{msg}"
    );
}

#[test]
fn input_fully_padded_item_is_rejected() {
    let (r, _d) = inputs_modified("tiny_s1", |t| {
        for (n, side) in [
            ("input.template1.mask", 8),
            ("input.template2.mask", 8),
            ("input.search.mask", 24),
        ] {
            t.insert(
                n.into(),
                Raw {
                    dtype: Dtype::U8,
                    shape: vec![1, side, side],
                    bytes: vec![1; side * side],
                },
            );
        }
    });
    let msg = input_err(r);
    assert!(msg.contains("padded everywhere"), "{msg}");
}

#[test]
fn inputs_round_trip() {
    let cfg = Config::tiny();
    let i = random_inputs(&cfg, 3, 5, Padding::Borders, true);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.safetensors");
    i.save(&p).unwrap();
    assert_eq!(Inputs::load(&p, &cfg).unwrap(), i);
}
