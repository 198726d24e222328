//! Seeded tracker files with the checkpoint's names, of the released shape or smaller (a
//! narrower, shallower backbone and smaller crops track fast on the CPU, for tests).
//! Convolution weights `~ U(-sqrt(3 / fan_in), sqrt(3 / fan_in))`, batch norms with
//! gamma `~ U(0.5, 1)`, beta and running mean `~ U(-0.1, 0.1)`, running variance
//! `~ U(0.5, 2)`; the transformer is [`synthetic_weights`]'s.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::weights::{FEATURE_STRIDE, TrackerConfig, names};
use crate::base::Tensor;
use crate::base::safetensors::{OutTensor, write_file};
use crate::error::Result;
use crate::model::config::Config;
use crate::model::synthetic::synthetic_weights;

/// The shape of a synthetic tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    pub transformer: Config,
    /// Channels of the stem (64).
    pub stem: usize,
    /// Bottleneck widths of layer1..3 (64, 128, 256); each stage gives 4 x its width.
    pub widths: [usize; 3],
    /// Blocks of layer1..3 (3, 4, 6).
    pub blocks: [usize; 3],
    /// Widths of the corner head's 3x3 layers (256, 128, 64, 32).
    pub head: Vec<usize>,
    /// Written as `update_interval` when set.
    pub update_interval: Option<usize>,
}

impl SyntheticSpec {
    /// The released tracker's shape.
    pub fn released() -> SyntheticSpec {
        SyntheticSpec {
            transformer: Config::released(),
            stem: 64,
            widths: [64, 128, 256],
            blocks: [3, 4, 6],
            head: vec![256, 128, 64, 32],
            update_interval: None,
        }
    }

    /// A small tracker for tests: c = 64, 2+2 layers, a 256-pixel search crop (16 x 16
    /// tokens), a 128-pixel template, a backbone of 2+1+1 blocks a few channels wide.
    pub fn tiny() -> SyntheticSpec {
        SyntheticSpec {
            transformer: Config {
                search_size: 16,
                ..Config::tiny()
            },
            stem: 8,
            widths: [4, 8, 16],
            blocks: [2, 1, 1],
            head: vec![16, 8],
            update_interval: None,
        }
    }

    /// The tracker config a file of this shape loads with.
    pub fn config(&self) -> TrackerConfig {
        TrackerConfig {
            search_crop: self.transformer.search_size * FEATURE_STRIDE,
            template_crop: self.transformer.template_size * FEATURE_STRIDE,
            update_interval: self.update_interval,
            ..TrackerConfig::released()
        }
    }
}

struct Gen {
    rng: ChaCha8Rng,
    out: Vec<(String, Tensor)>,
}

impl Gen {
    fn uniform(&mut self, name: String, shape: &[usize], lo: f32, hi: f32) {
        let n = shape.iter().product();
        let data = (0..n).map(|_| self.rng.random_range(lo..hi)).collect();
        self.out.push((
            name,
            Tensor {
                shape: shape.to_vec(),
                data,
            },
        ));
    }

    fn conv(&mut self, base: &str, out: usize, inp: usize, k: usize, bias: bool) {
        let b = (3.0 / (inp * k * k) as f32).sqrt();
        self.uniform(format!("{base}.weight"), &[out, inp, k, k], -b, b);
        if bias {
            self.uniform(format!("{base}.bias"), &[out], -0.1, 0.1);
        }
    }

    fn bn(&mut self, base: &str, c: usize) {
        self.uniform(format!("{base}.weight"), &[c], 0.5, 1.0);
        self.uniform(format!("{base}.bias"), &[c], -0.1, 0.1);
        self.uniform(format!("{base}.running_mean"), &[c], -0.1, 0.1);
        self.uniform(format!("{base}.running_var"), &[c], 0.5, 2.0);
    }
}

/// Every tensor of a synthetic tracker under its checkpoint name, and the metadata.
pub fn synthetic_tracker(
    spec: &SyntheticSpec,
    seed: u64,
) -> (Vec<(String, Tensor)>, BTreeMap<String, String>) {
    let transformer = synthetic_weights(&spec.transformer, seed);
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0x07ea_c4e7),
        out: Vec::new(),
    };
    for (name, t) in transformer.named_tensors() {
        g.out.push((name, t.clone()));
    }
    for (&w, t) in &transformer.rel_bias_tables {
        g.out.push((
            crate::model::weights::names::rel_bias_table(w),
            Tensor {
                shape: vec![t.len()],
                data: t.clone(),
            },
        ));
    }
    let b = names::BACKBONE;
    g.conv(&format!("{b}conv1"), spec.stem, 3, 7, false);
    g.bn(&format!("{b}bn1"), spec.stem);
    let mut channels = spec.stem;
    for (l, (&width, &blocks)) in spec.widths.iter().zip(&spec.blocks).enumerate() {
        for i in 0..blocks {
            let p = format!("{b}layer{}.{i}", l + 1);
            let inp = if i == 0 { channels } else { 4 * width };
            for (n, (o, ci, k)) in [(width, inp, 1), (width, width, 3), (4 * width, width, 1)]
                .into_iter()
                .enumerate()
            {
                g.conv(&format!("{p}.conv{}", n + 1), o, ci, k, false);
                g.bn(&format!("{p}.bn{}", n + 1), o);
            }
            if i == 0 {
                g.conv(&format!("{p}.downsample.0"), 4 * width, channels, 1, false);
                g.bn(&format!("{p}.downsample.1"), 4 * width);
            }
        }
        channels = 4 * width;
    }
    let c = spec.transformer.d_model;
    g.conv(names::BOTTLENECK, c, channels, 1, true);
    for side in ["tl", "br"] {
        let mut inp = c;
        for (i, &o) in spec.head.iter().enumerate() {
            let base = format!("{}.conv{}_{side}", names::BOX_HEAD, i + 1);
            g.conv(&format!("{base}.0"), o, inp, 3, true);
            g.bn(&format!("{base}.1"), o);
            inp = o;
        }
        g.conv(
            &format!("{}.conv{}_{side}", names::BOX_HEAD, spec.head.len() + 1),
            1,
            inp,
            1,
            true,
        );
    }
    for (i, o) in [c, c, 1].into_iter().enumerate() {
        let a = 1.0 / (c as f32).sqrt();
        g.uniform(format!("{}.{i}.weight", names::CLS_HEAD), &[o, c], -a, a);
        g.uniform(format!("{}.{i}.bias", names::CLS_HEAD), &[o], -a, a);
    }
    let mut meta = spec.transformer.to_metadata();
    meta.extend(spec.config().to_metadata());
    meta.insert("seed".into(), seed.to_string());
    (g.out, meta)
}

/// Writes [`synthetic_tracker`] to `path`.
pub fn write_synthetic_tracker(
    path: impl AsRef<Path>,
    spec: &SyntheticSpec,
    seed: u64,
) -> Result<()> {
    let (tensors, meta) = synthetic_tracker(spec, seed);
    let refs: Vec<(&str, OutTensor)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.into()))
        .collect();
    write_file(path, &refs, &meta)
}
