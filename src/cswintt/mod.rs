//! The CSWinTT transformer (spec: `shared/spec/cswintt-transformer.md`).
//!
//! - [`plan`]: each head's work as a value (window, shift, index maps, gathered bias,
//!   window padding), shared by the CPU reference and the GPU engine;
//! - [`cpu`]: the CPU reference, f32 with f64 accumulation, heads in parallel (rayon);
//! - [`flops`]: the arithmetic of one forward pass, counted once, for FLOP/s figures;
//! - [`backend`]: the [`Backend`] trait every engine implements, [`select_backend`],
//!   the one place a device choice becomes an engine, and [`time_runs`];
//! - [`check`]: an engine's outputs against a golden file's `expected.*` tensors.
//!
//! Inputs and outputs use the original's layouts: token-major `(L, b, c)`.

pub mod backend;
pub mod check;
pub mod cpu;
mod flops;
pub mod gpu;
pub mod plan;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::base::safetensors::{OutTensor, TensorFile, write_file};
use crate::base::tensor::Tensor;
use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::weights::Weights;

pub use crate::base::Precision;
pub use crate::base::precision::F32_TOLERANCE as CPU_F32_TOLERANCE;
pub use backend::{Backend, EngineOptions, Selected, Timing, select_backend, time_runs};
pub use flops::{encoder_flops, flops};
pub use plan::{HeadPlan, Plan};

/// The transformer's inputs for one batch (names as in the golden files, `input.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// `b`.
    pub batch: usize,
    /// `input.template1.feat`, `(T, T, b, c)`.
    pub template1: Tensor,
    /// `input.template2.feat`, `(T, T, b, c)`.
    pub template2: Tensor,
    /// `input.search.feat`, `(S, S, b, c)`.
    pub search: Tensor,
    /// `input.template1.mask`, `(b, T, T)`, nonzero = padded pixel.
    pub template1_mask: Vec<u8>,
    /// `input.template2.mask`, `(b, T, T)`.
    pub template2_mask: Vec<u8>,
    /// `input.search.mask`, `(b, S, S)`.
    pub search_mask: Vec<u8>,
    /// `input.query_embed`, `(1, c)`; when `None` the model's `query_embed` is used.
    pub query_embed: Option<Tensor>,
}

/// Golden/input file tensor names.
pub mod input_names {
    pub const TEMPLATE1: &str = "input.template1.feat";
    pub const TEMPLATE2: &str = "input.template2.feat";
    pub const SEARCH: &str = "input.search.feat";
    pub const TEMPLATE1_MASK: &str = "input.template1.mask";
    pub const TEMPLATE2_MASK: &str = "input.template2.mask";
    pub const SEARCH_MASK: &str = "input.search.mask";
    pub const QUERY_EMBED: &str = "input.query_embed";
}

impl Inputs {
    /// The object query: the input's `query_embed` when given, else the model's
    /// `query_embed.weight`.
    pub fn query<'a>(&'a self, weights: &'a Weights) -> Result<&'a Tensor> {
        self.query_embed
            .as_ref()
            .or(weights.query_embed.as_ref())
            .ok_or_else(|| {
                Error::invalid(
                    "inputs: tensor 'input.query_embed'",
                    "absent, and the model has no 'query_embed.weight'",
                )
            })
    }

    /// Reads `input.*` tensors from a safetensors file (a golden file, or one written by
    /// [`Inputs::save`]). The batch comes from `input.search.feat`'s shape; masks absent
    /// from the file mean no padding; `*.pos` are ignored (the transformer does not use
    /// them). The result is checked with [`Inputs::validate`].
    pub fn load(path: impl AsRef<Path>, config: &Config) -> Result<Inputs> {
        Inputs::from_file(&TensorFile::open(path)?, config)
    }

    /// See [`Inputs::load`].
    pub fn from_file(file: &TensorFile, config: &Config) -> Result<Inputs> {
        use input_names::*;
        let (s, t, c) = (config.search_size, config.template_size, config.d_model);
        let batch = match file.shape(SEARCH) {
            Some([_, _, b, _]) => *b,
            Some(other) => {
                return Err(Error::invalid(
                    file.context(SEARCH),
                    format!("expected shape [{s}, {s}, batch, {c}], found {other:?}"),
                ));
            }
            None => {
                return Err(Error::invalid(
                    file.context(SEARCH),
                    "missing from the file",
                ));
            }
        };
        if batch == 0 {
            return Err(Error::invalid(file.context(SEARCH), "batch is 0"));
        }
        let mask = |name: &str, side: usize| -> Result<Vec<u8>> {
            if file.contains(name) {
                file.mask(name, &[batch, side, side])
            } else {
                Ok(vec![0; batch * side * side])
            }
        };
        let inputs = Inputs {
            batch,
            search: file.f32_shaped(SEARCH, &[s, s, batch, c])?,
            template1: file.f32_shaped(TEMPLATE1, &[t, t, batch, c])?,
            template2: file.f32_shaped(TEMPLATE2, &[t, t, batch, c])?,
            template1_mask: mask(TEMPLATE1_MASK, t)?,
            template2_mask: mask(TEMPLATE2_MASK, t)?,
            search_mask: mask(SEARCH_MASK, s)?,
            query_embed: if file.contains(QUERY_EMBED) {
                Some(file.f32_shaped(QUERY_EMBED, &[1, c])?)
            } else {
                None
            },
        };
        inputs.validate_in(config, &file.path().display().to_string())?;
        Ok(inputs)
    }

    /// Writes the inputs with the `input.*` names (masks as u8).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        use input_names::*;
        let t = self.template1.shape.first().copied().unwrap_or(0);
        let s = self.search.shape.first().copied().unwrap_or(0);
        let b = self.batch;
        let (mask_t, mask_s) = ([b, t, t], [b, s, s]);
        let mut v: Vec<(&str, OutTensor)> = vec![
            (TEMPLATE1, (&self.template1).into()),
            (TEMPLATE2, (&self.template2).into()),
            (SEARCH, (&self.search).into()),
            (
                TEMPLATE1_MASK,
                OutTensor::U8 {
                    shape: &mask_t,
                    data: &self.template1_mask,
                },
            ),
            (
                TEMPLATE2_MASK,
                OutTensor::U8 {
                    shape: &mask_t,
                    data: &self.template2_mask,
                },
            ),
            (
                SEARCH_MASK,
                OutTensor::U8 {
                    shape: &mask_s,
                    data: &self.search_mask,
                },
            ),
        ];
        if let Some(q) = &self.query_embed {
            v.push((QUERY_EMBED, q.into()));
        }
        write_file(path, &v, &Default::default())
    }

    /// Checks shapes against `config`, that values are finite, and that no batch item is
    /// padded everywhere (the original would compute NaN: every key masked with `-inf`).
    pub fn validate(&self, config: &Config) -> Result<()> {
        self.validate_in(config, "inputs")
    }

    fn validate_in(&self, config: &Config, ctx: &str) -> Result<()> {
        use input_names::*;
        let (s, t, c, b) = (
            config.search_size,
            config.template_size,
            config.d_model,
            self.batch,
        );
        if b == 0 {
            return Err(Error::invalid(format!("{ctx}: batch"), "batch is 0"));
        }
        let check = |name: &str, x: &Tensor, shape: &[usize]| -> Result<()> {
            if x.shape != shape || x.data.len() != shape.iter().product::<usize>() {
                return Err(Error::invalid(
                    format!("{ctx}: tensor '{name}'"),
                    format!("expected shape {shape:?}, found {:?}", x.shape),
                ));
            }
            if let Some(i) = x.data.iter().position(|v| !v.is_finite()) {
                return Err(Error::invalid(
                    format!("{ctx}: tensor '{name}'"),
                    format!("non-finite value {} at flat index {i}", x.data[i]),
                ));
            }
            Ok(())
        };
        check(TEMPLATE1, &self.template1, &[t, t, b, c])?;
        check(TEMPLATE2, &self.template2, &[t, t, b, c])?;
        check(SEARCH, &self.search, &[s, s, b, c])?;
        if let Some(q) = &self.query_embed {
            check(QUERY_EMBED, q, &[1, c])?;
        }
        for (name, m, n) in [
            (TEMPLATE1_MASK, &self.template1_mask, b * t * t),
            (TEMPLATE2_MASK, &self.template2_mask, b * t * t),
            (SEARCH_MASK, &self.search_mask, b * s * s),
        ] {
            if m.len() != n {
                return Err(Error::invalid(
                    format!("{ctx}: tensor '{name}'"),
                    format!("expected {n} mask values, found {}", m.len()),
                ));
            }
        }
        let merged = self.merged_mask(config);
        let l_all = config.l_all();
        for bi in 0..b {
            if merged[bi * l_all..(bi + 1) * l_all].iter().all(|&x| x != 0) {
                return Err(Error::invalid(
                    format!("{ctx}: masks"),
                    format!(
                        "batch item {bi} is padded everywhere; every attention key would be \
                         masked and the original model returns NaN"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `x0 = concat(template1, template2, search)` over tokens: `(L_all, b, c)`, row-major.
    /// (Each `(side, side, b, c)` block is already `(side*side, b, c)` in memory.)
    pub fn merged_tokens(&self) -> Vec<f32> {
        let mut x =
            Vec::with_capacity(self.template1.len() + self.template2.len() + self.search.len());
        x.extend_from_slice(&self.template1.data);
        x.extend_from_slice(&self.template2.data);
        x.extend_from_slice(&self.search.data);
        x
    }

    /// The merged padding mask `m`: `(b, L_all)`, 1 = padded.
    pub fn merged_mask(&self, config: &Config) -> Vec<u8> {
        let (tt, ss) = (config.template_tokens(), config.search_tokens());
        let mut m = Vec::with_capacity(self.batch * config.l_all());
        for b in 0..self.batch {
            let r = |v: &[u8], n: usize| -> Vec<u8> {
                v.get(b * n..(b + 1) * n)
                    .map(|s| s.iter().map(|&x| u8::from(x != 0)).collect())
                    .unwrap_or_else(|| vec![0; n])
            };
            m.extend(r(&self.template1_mask, tt));
            m.extend(r(&self.template2_mask, tt));
            m.extend(r(&self.search_mask, ss));
        }
        m
    }
}

/// Intermediate results, named as the golden files' `expected.*` tensors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Intermediates {
    /// `encoder.{i}`: each encoder layer's output, `(L_all, b, c)`.
    pub encoder: Vec<Tensor>,
    /// `encoder.0.head.{h}`: layer 0, head `h`, attention output before window reverse,
    /// `(b, L, w*w*hd)`.
    pub encoder0_heads: Vec<Tensor>,
    /// `encoder.0.heads_concat`: layer 0 heads after reverse and concat, before
    /// `output_linear`, `(L_all, b, c)`.
    pub encoder0_heads_concat: Option<Tensor>,
    /// `decoder.{i}`: each decoder layer's output `t`, `(1, b, c)`.
    pub decoder: Vec<Tensor>,
}

/// The transformer's outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// `search_feat`: the encoder output's search tokens, `(S*S, b, c)`.
    pub search_feat: Tensor,
    /// `hs`: `post_norm` of the last decoder output, `(1, b, c)`.
    pub hs: Tensor,
    /// Present when the run was asked for them.
    pub intermediates: Option<Intermediates>,
}

/// Prefix of the golden files' expected tensors.
pub const EXPECTED_PREFIX: &str = "expected.";

impl Outputs {
    /// The tensor with golden name `name` (`expected.encoder.0.head.3`, or without the
    /// `expected.` prefix), if this run produced it.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        let name = name.strip_prefix(EXPECTED_PREFIX).unwrap_or(name);
        match name {
            "search_feat" => return Some(&self.search_feat),
            "hs" => return Some(&self.hs),
            _ => {}
        }
        let im = self.intermediates.as_ref()?;
        if name == "encoder.0.heads_concat" {
            return im.encoder0_heads_concat.as_ref();
        }
        if let Some(h) = name.strip_prefix("encoder.0.head.") {
            return im.encoder0_heads.get(h.parse::<usize>().ok()?);
        }
        if let Some(i) = name.strip_prefix("encoder.") {
            return im.encoder.get(i.parse::<usize>().ok()?);
        }
        if let Some(i) = name.strip_prefix("decoder.") {
            return im.decoder.get(i.parse::<usize>().ok()?);
        }
        None
    }

    /// Names (without `expected.`) of every tensor this run produced.
    pub fn names(&self) -> Vec<String> {
        let mut v = vec!["search_feat".to_string(), "hs".to_string()];
        if let Some(im) = &self.intermediates {
            v.extend((0..im.encoder.len()).map(|i| format!("encoder.{i}")));
            v.extend((0..im.encoder0_heads.len()).map(|h| format!("encoder.0.head.{h}")));
            if im.encoder0_heads_concat.is_some() {
                v.push("encoder.0.heads_concat".into());
            }
            v.extend((0..im.decoder.len()).map(|i| format!("decoder.{i}")));
        }
        v
    }

    /// Writes `search_feat` and `hs` to a safetensors file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(
            path,
            &[
                ("search_feat", (&self.search_feat).into()),
                ("hs", (&self.hs).into()),
            ],
            &Default::default(),
        )
    }
}

/// How the GPU engine dispatches the heads (the CPU ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One head after another on one stream.
    #[default]
    Sequential,
    /// One stream per head.
    Streams,
    /// All heads of a layer in one launch of the fused attention kernel.
    Fused,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sequential" => Ok(Mode::Sequential),
            "streams" => Ok(Mode::Streams),
            "fused" => Ok(Mode::Fused),
            _ => Err(format!("'{s}' is not one of sequential, streams, fused")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Sequential => "sequential",
            Mode::Streams => "streams",
            Mode::Fused => "fused",
        })
    }
}
