//! The transformer's parameters as `f32` host tensors, named as in the released
//! checkpoint's `net` state dict (spec, "Parameter names").

use std::collections::BTreeMap;
use std::path::Path;

use super::config::{BIAS_WINDOWS, Config, MAX_SIDE, PartialConfig, default_windows};
use super::golden::weights_for_golden;
use super::synthetic::{DEFAULT_SEED, default_model};
use crate::base::safetensors::{OutTensor, TensorFile, write_file};
use crate::base::tensor::Tensor;
use crate::error::{Error, Result};

/// A linear layer `y = x W^T + b`: `weight` is `(out, in)`, `bias` is `(out)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.weight.shape[0]
    }
    pub fn in_features(&self) -> usize {
        self.weight.shape[1]
    }
}

/// LayerNorm over the last axis (eps 1e-5): `weight` (gamma) and `bias` (beta), `(c)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// LayerNorm epsilon used throughout the transformer.
pub const LN_EPS: f64 = 1e-5;

/// One encoder layer, `transformer.transformer.{i}.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderLayer {
    /// `qkv_embedding`: `(3c, c)`, q|k|v slices.
    pub qkv: Linear,
    /// `output_linear`: `(c, c)`.
    pub output: Linear,
    /// `feedforward.0`: `(ff, c)`.
    pub ff1: Linear,
    /// `feedforward.3`: `(c, ff)`.
    pub ff2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
}

/// `torch.nn.MultiheadAttention` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Mha {
    /// `in_proj_weight (3c, c)` and `in_proj_bias (3c)`: q|k|v.
    pub in_proj: Linear,
    /// `out_proj`: `(c, c)`.
    pub out_proj: Linear,
}

/// One decoder layer, `transformer.transformer_post.{i}.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderLayer {
    pub self_attn: Mha,
    /// `multihead_attn`, the cross attention to the encoder output.
    pub cross_attn: Mha,
    /// `linear1`: `(ff, c)`.
    pub linear1: Linear,
    /// `linear2`: `(c, ff)`.
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub norm3: LayerNorm,
}

/// All transformer parameters, checked against `config`.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub config: Config,
    pub encoder: Vec<EncoderLayer>,
    pub decoder: Vec<DecoderLayer>,
    /// `transformer.rel_bias_table{w}` for each `w` in `config.bias_windows()`, shared by
    /// all encoder layers; length `config.rel_bias_table_len(w)`.
    pub rel_bias_tables: BTreeMap<usize, Vec<f32>>,
    /// `transformer.post_norm`.
    pub post_norm: LayerNorm,
    /// `query_embed.weight`, `(1, c)`, when the file holds it (full tracker checkpoints).
    pub query_embed: Option<Tensor>,
}

/// Parameter names of the released checkpoint.
pub mod names {
    pub const PREFIX: &str = "transformer.";

    pub fn rel_bias_table(w: usize) -> String {
        format!("transformer.rel_bias_table{w}")
    }
    /// `transformer.transformer.{i}.{rest}`
    pub fn encoder(i: usize, rest: &str) -> String {
        format!("transformer.transformer.{i}.{rest}")
    }
    /// `transformer.transformer_post.{i}.{rest}`
    pub fn decoder(i: usize, rest: &str) -> String {
        format!("transformer.transformer_post.{i}.{rest}")
    }
    pub const POST_NORM_WEIGHT: &str = "transformer.post_norm.weight";
    pub const POST_NORM_BIAS: &str = "transformer.post_norm.bias";
    pub const QUERY_EMBED: &str = "query_embed.weight";
}

/// Reads tensors from a file whose names may carry a prefix (`module.` from DataParallel).
/// The tracker's loader reads the rest of a whole checkpoint with it.
pub(crate) struct Reader<'a> {
    pub(crate) file: &'a TensorFile,
    pub(crate) prefix: &'static str,
}

impl Reader<'_> {
    pub(crate) fn name(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }
    pub(crate) fn has(&self, n: &str) -> bool {
        self.file.contains(&self.name(n))
    }
    pub(crate) fn shape(&self, n: &str) -> Option<&[usize]> {
        self.file.shape(&self.name(n))
    }
    pub(crate) fn get(&self, n: &str, shape: &[usize]) -> Result<Tensor> {
        self.file.f32_shaped(&self.name(n), shape)
    }
    pub(crate) fn linear(&self, base: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.get(&format!("{base}.weight"), &[out, inp])?,
            bias: self.get(&format!("{base}.bias"), &[out])?,
        })
    }
    fn mha(&self, base: &str, c: usize) -> Result<Mha> {
        Ok(Mha {
            in_proj: Linear {
                weight: self.get(&format!("{base}.in_proj_weight"), &[3 * c, c])?,
                bias: self.get(&format!("{base}.in_proj_bias"), &[3 * c])?,
            },
            out_proj: self.linear(&format!("{base}.out_proj"), c, c)?,
        })
    }
    fn norm(&self, base: &str, c: usize) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.get(&format!("{base}.weight"), &[c])?,
            bias: self.get(&format!("{base}.bias"), &[c])?,
        })
    }
}

impl Weights {
    /// The weights a run uses, with a description for reports: the file `model` when given,
    /// else the weights file beside the golden file `check` (`NAME.weights.safetensors` for
    /// `NAME.golden.safetensors`), else the built-in synthetic model.
    pub fn for_run(model: Option<&Path>, check: Option<&Path>) -> Result<(Weights, String)> {
        match (model, check) {
            (Some(p), _) => Ok((Weights::load(p)?, p.display().to_string())),
            (None, Some(g)) => {
                let p = weights_for_golden(g).ok_or_else(|| {
                    Error::invalid(
                        format!("--check {}", g.display()),
                        "cannot name its weights file (expected NAME.golden.safetensors); \
                         pass --model",
                    )
                })?;
                Ok((Weights::load(&p)?, p.display().to_string()))
            }
            (None, None) => Ok((
                default_model(),
                format!("built-in synthetic (seed {DEFAULT_SEED})"),
            )),
        }
    }

    /// Loads a weights file (f32, f16 or bf16 tensors). The config comes from the file's
    /// metadata where present, else from tensor shapes; the two must agree.
    pub fn load(path: impl AsRef<Path>) -> Result<Weights> {
        Weights::from_file(&TensorFile::open(path)?)
    }

    /// Loads from an opened file; see [`Weights::load`].
    pub fn from_file(file: &TensorFile) -> Result<Weights> {
        let config = infer_config(file)?;
        let prefix = detect_prefix(file);
        let r = Reader { file, prefix };
        let c = config.d_model;
        let ff = config.dim_feedforward;
        let mut encoder = Vec::with_capacity(config.enc_layers);
        for i in 0..config.enc_layers {
            let n = |rest: &str| names::encoder(i, rest);
            encoder.push(EncoderLayer {
                qkv: r.linear(&n("qkv_embedding"), 3 * c, c)?,
                output: r.linear(&n("output_linear"), c, c)?,
                ff1: r.linear(&n("feedforward.0"), ff, c)?,
                ff2: r.linear(&n("feedforward.3"), c, ff)?,
                norm1: r.norm(&n("norm1"), c)?,
                norm2: r.norm(&n("norm2"), c)?,
            });
        }
        let mut decoder = Vec::with_capacity(config.dec_layers);
        for i in 0..config.dec_layers {
            let n = |rest: &str| names::decoder(i, rest);
            decoder.push(DecoderLayer {
                self_attn: r.mha(&n("self_attn"), c)?,
                cross_attn: r.mha(&n("multihead_attn"), c)?,
                linear1: r.linear(&n("linear1"), ff, c)?,
                linear2: r.linear(&n("linear2"), c, ff)?,
                norm1: r.norm(&n("norm1"), c)?,
                norm2: r.norm(&n("norm2"), c)?,
                norm3: r.norm(&n("norm3"), c)?,
            });
        }
        let mut rel_bias_tables = BTreeMap::new();
        for w in config.bias_windows() {
            let t = r.get(&names::rel_bias_table(w), &[config.rel_bias_table_len(w)])?;
            rel_bias_tables.insert(w, t.data);
        }
        let post_norm = r.norm("transformer.post_norm", c)?;
        let query_embed = if r.has(names::QUERY_EMBED) {
            Some(r.get(names::QUERY_EMBED, &[1, c])?)
        } else {
            None
        };
        Ok(Weights {
            config,
            encoder,
            decoder,
            rel_bias_tables,
            post_norm,
            query_embed,
        })
    }

    /// Every tensor with its checkpoint name, in a stable order.
    pub fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v: Vec<(String, &Tensor)> = Vec::new();
        for (i, l) in self.encoder.iter().enumerate() {
            let n = |rest: &str| names::encoder(i, rest);
            push_linear(&mut v, n("qkv_embedding"), &l.qkv);
            push_linear(&mut v, n("output_linear"), &l.output);
            push_linear(&mut v, n("feedforward.0"), &l.ff1);
            push_linear(&mut v, n("feedforward.3"), &l.ff2);
            push_norm(&mut v, n("norm1"), &l.norm1);
            push_norm(&mut v, n("norm2"), &l.norm2);
        }
        for (i, l) in self.decoder.iter().enumerate() {
            let n = |rest: &str| names::decoder(i, rest);
            for (base, m) in [
                ("self_attn", &l.self_attn),
                ("multihead_attn", &l.cross_attn),
            ] {
                v.push((n(&format!("{base}.in_proj_weight")), &m.in_proj.weight));
                v.push((n(&format!("{base}.in_proj_bias")), &m.in_proj.bias));
                push_linear(&mut v, n(&format!("{base}.out_proj")), &m.out_proj);
            }
            push_linear(&mut v, n("linear1"), &l.linear1);
            push_linear(&mut v, n("linear2"), &l.linear2);
            push_norm(&mut v, n("norm1"), &l.norm1);
            push_norm(&mut v, n("norm2"), &l.norm2);
            push_norm(&mut v, n("norm3"), &l.norm3);
        }
        push_norm(&mut v, "transformer.post_norm".into(), &self.post_norm);
        if let Some(q) = &self.query_embed {
            v.push((names::QUERY_EMBED.into(), q));
        }
        v
    }

    /// Writes every tensor (f32) to `path`, with the config as metadata (the golden weights
    /// files' keys) plus `extra_metadata` (e.g. `seed`).
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        extra_metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        let bias_tables: Vec<(String, [usize; 1], &[f32])> = self
            .rel_bias_tables
            .iter()
            .map(|(&w, t)| (names::rel_bias_table(w), [t.len()], t.as_slice()))
            .collect();
        let mut tensors: Vec<(String, OutTensor)> = self
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.into()))
            .collect();
        tensors.extend(
            bias_tables
                .iter()
                .map(|(n, shape, data)| (n.clone(), OutTensor::F32 { shape, data })),
        );
        let mut meta = self.config.to_metadata();
        meta.extend(extra_metadata.clone());
        write_file(path, &tensors, &meta)
    }
}

fn push_linear<'a>(v: &mut Vec<(String, &'a Tensor)>, base: String, l: &'a Linear) {
    v.push((format!("{base}.weight"), &l.weight));
    v.push((format!("{base}.bias"), &l.bias));
}

fn push_norm<'a>(v: &mut Vec<(String, &'a Tensor)>, base: String, l: &'a LayerNorm) {
    v.push((format!("{base}.weight"), &l.weight));
    v.push((format!("{base}.bias"), &l.bias));
}

/// `""`, or `"module."` when the file's names carry DataParallel's prefix.
fn detect_prefix(file: &TensorFile) -> &'static str {
    if !file.contains(names::POST_NORM_WEIGHT)
        && file.contains(&format!("module.{}", names::POST_NORM_WEIGHT))
    {
        "module."
    } else {
        ""
    }
}

/// The config of a weights file: metadata where present, shapes for the rest; the two
/// must agree, and the result must pass [`Config::validate`].
pub fn infer_config(file: &TensorFile) -> Result<Config> {
    let fname = file.path().display().to_string();
    let meta = PartialConfig::from_metadata(&file.metadata(), &fname)?;
    let r = Reader {
        file,
        prefix: detect_prefix(file),
    };

    // d_model from post_norm.weight (c).
    let pn = names::POST_NORM_WEIGHT;
    let c_shape = match r.shape(pn) {
        Some([c]) => *c,
        Some(s) => {
            return Err(Error::invalid(
                file.context(&r.name(pn)),
                format!("expected a 1-D shape [d_model], found {s:?}"),
            ));
        }
        None => {
            return Err(Error::invalid(
                file.context(&r.name(pn)),
                "missing from the file (is this a CSWinTT transformer weights file?)",
            ));
        }
    };
    let enc_shape = (0..)
        .take_while(|&i| r.has(&names::encoder(i, "qkv_embedding.weight")))
        .count();
    let dec_shape = (0..)
        .take_while(|&i| r.has(&names::decoder(i, "linear1.weight")))
        .count();
    let ff_shape = r
        .shape(&names::encoder(0, "feedforward.0.weight"))
        .or_else(|| r.shape(&names::decoder(0, "linear1.weight")))
        .and_then(|s| s.first().copied());

    let agree =
        |key: &str, m: Option<usize>, s: Option<usize>, evidence: &str| -> Result<Option<usize>> {
            match (m, s) {
                (Some(m), Some(s)) if m != s => Err(Error::invalid(
                    file.meta_context(key),
                    format!("metadata says {key}={m}, but {evidence} gives {s}"),
                )),
                (Some(m), _) => Ok(Some(m)),
                (None, s) => Ok(s),
            }
        };
    let d_model = agree(
        "d_model",
        meta.d_model,
        Some(c_shape),
        &format!("tensor '{pn}'"),
    )?
    .unwrap_or(c_shape);
    let enc_layers = agree(
        "enc_layers",
        meta.enc_layers,
        Some(enc_shape),
        "counting tensors 'transformer.transformer.{i}.qkv_embedding.weight'",
    )?
    .unwrap_or(enc_shape);
    let dec_layers = agree(
        "dec_layers",
        meta.dec_layers,
        Some(dec_shape),
        "counting tensors 'transformer.transformer_post.{i}.linear1.weight'",
    )?
    .unwrap_or(dec_shape);
    let dim_feedforward = agree(
        "dim_feedforward",
        meta.dim_feedforward,
        ff_shape,
        "the feed-forward weight's shape",
    )?
    .ok_or_else(|| {
        Error::invalid(
            file.meta_context("dim_feedforward"),
            "absent, and no layer to infer it from",
        )
    })?;

    let nhead = meta
        .nhead
        .or(meta.window_sizes.as_ref().map(|w| w.len()))
        .unwrap_or(8);
    // Before the default windows are built, one per head: heads split d_model's channels,
    // so a count above d_model is a damaged file, not a request for that many windows.
    if nhead == 0 || nhead > d_model {
        return Err(Error::invalid(
            file.meta_context("nhead"),
            format!("must be in 1..=d_model ({d_model}), found {nhead}"),
        ));
    }
    let window_sizes = meta
        .window_sizes
        .clone()
        .unwrap_or_else(|| default_windows(nhead));

    let (search_size, template_size) = match (meta.search_size, meta.template_size) {
        (Some(s), Some(t)) => (s, t),
        (ms, mt) => infer_sizes(&r, &window_sizes, ms, mt)?,
    };

    let config = Config {
        d_model,
        nhead,
        dim_feedforward,
        enc_layers,
        dec_layers,
        search_size,
        template_size,
        window_sizes,
    };
    config.validate(&fname)?;
    Ok(config)
}

/// Finds the unique `(S, T)` (both multiples of the largest window) whose bias-table
/// lengths match the file's, honouring whichever of the two the metadata fixes.
fn infer_sizes(
    r: &Reader<'_>,
    windows: &[usize],
    ms: Option<usize>,
    mt: Option<usize>,
) -> Result<(usize, usize)> {
    let fname = r.file.path().display().to_string();
    let wmax = windows.iter().copied().max().unwrap_or(1).max(1);
    let tables: Vec<(usize, usize)> = BIAS_WINDOWS
        .iter()
        .filter(|w| windows.contains(w))
        .filter_map(|&w| match r.shape(&names::rel_bias_table(w)) {
            Some([n]) => Some((w, *n)),
            _ => None,
        })
        .collect();
    let fail = |problem: String| {
        Err(Error::invalid(
            format!("{fname}: metadata 'search_size'/'template_size'"),
            problem,
        ))
    };
    if tables.is_empty() {
        return fail(
            "absent, and no rel_bias_table to infer the token count from; add the metadata".into(),
        );
    }
    let mut found = Vec::new();
    for s in (wmax..=MAX_SIDE).step_by(wmax) {
        for t in (wmax..=MAX_SIDE).step_by(wmax) {
            if ms.is_some_and(|m| m != s) || mt.is_some_and(|m| m != t) {
                continue;
            }
            let cfg = Config {
                search_size: s,
                template_size: t,
                window_sizes: windows.to_vec(),
                ..Config::released()
            };
            if tables.iter().all(|&(w, n)| cfg.rel_bias_table_len(w) == n) {
                found.push((s, t));
            }
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => fail(format!(
            "absent, and no search/template sizes (multiples of {wmax}) fit the bias tables' \
             lengths {tables:?}"
        )),
        many => fail(format!(
            "absent, and the bias tables fit several search/template sizes {many:?}; add the metadata"
        )),
    }
}
