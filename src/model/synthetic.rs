//! Seeded synthetic models and inputs, at realistic scales: linear weights and biases
//! `~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (PyTorch's default init), LayerNorm gamma
//! `~ U(0.9, 1.1)` and beta `~ U(-0.05, 0.05)`, relative-position bias tables
//! `~ U(-0.05, 0.05)`, features and the query `~ N(0, 1)`.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::Config;
use super::weights::{DecoderLayer, EncoderLayer, LayerNorm, Linear, Mha, Weights};
use crate::base::tensor::Tensor;
use crate::cswintt::Inputs;

/// Seed of the default model `attnrt-infer` runs without `--model`.
pub const DEFAULT_SEED: u64 = 2022;

/// The default model: the released size ([`Config::released`]) with [`DEFAULT_SEED`].
pub fn default_model() -> Weights {
    synthetic_weights(&Config::released(), DEFAULT_SEED)
}

struct Gen(ChaCha8Rng);

impl Gen {
    fn uniform(&mut self, shape: &[usize], lo: f32, hi: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape: shape.to_vec(),
            data: (0..n).map(|_| self.0.random_range(lo..hi)).collect(),
        }
    }
    fn normal(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape: shape.to_vec(),
            data: (0..n).map(|_| self.standard_normal()).collect(),
        }
    }
    fn standard_normal(&mut self) -> f32 {
        // Box-Muller.
        let u1: f64 = self.0.random_range(f64::EPSILON..1.0);
        let u2: f64 = self.0.random();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    fn linear(&mut self, out: usize, inp: usize) -> Linear {
        let a = 1.0 / (inp as f32).sqrt();
        Linear {
            weight: self.uniform(&[out, inp], -a, a),
            bias: self.uniform(&[out], -a, a),
        }
    }
    fn norm(&mut self, c: usize) -> LayerNorm {
        LayerNorm {
            weight: self.uniform(&[c], 0.9, 1.1),
            bias: self.uniform(&[c], -0.05, 0.05),
        }
    }
    fn mha(&mut self, c: usize) -> Mha {
        Mha {
            in_proj: self.linear(3 * c, c),
            out_proj: self.linear(c, c),
        }
    }
}

/// A synthetic model of shape `config` (which should be valid), from `seed`. It holds a
/// `query_embed`, as a full tracker checkpoint does.
pub fn synthetic_weights(config: &Config, seed: u64) -> Weights {
    let mut g = Gen(ChaCha8Rng::seed_from_u64(seed));
    let (c, ff) = (config.d_model, config.dim_feedforward);
    let encoder = (0..config.enc_layers)
        .map(|_| EncoderLayer {
            qkv: g.linear(3 * c, c),
            output: g.linear(c, c),
            ff1: g.linear(ff, c),
            ff2: g.linear(c, ff),
            norm1: g.norm(c),
            norm2: g.norm(c),
        })
        .collect();
    let decoder = (0..config.dec_layers)
        .map(|_| DecoderLayer {
            self_attn: g.mha(c),
            cross_attn: g.mha(c),
            linear1: g.linear(ff, c),
            linear2: g.linear(c, ff),
            norm1: g.norm(c),
            norm2: g.norm(c),
            norm3: g.norm(c),
        })
        .collect();
    let rel_bias_tables: BTreeMap<usize, Vec<f32>> = config
        .bias_windows()
        .into_iter()
        .map(|w| {
            let n = config.rel_bias_table_len(w);
            (w, g.uniform(&[n], -0.05, 0.05).data)
        })
        .collect();
    let post_norm = g.norm(c);
    let query_embed = Some(g.normal(&[1, c]));
    Weights {
        config: config.clone(),
        encoder,
        decoder,
        rel_bias_tables,
        post_norm,
        query_embed,
    }
}

/// How [`random_inputs`] pads the crops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// No padded pixels.
    #[default]
    None,
    /// Like crops at an image border: each region of each batch item gets a random
    /// padded band (rows or columns at one edge, up to half the side).
    Borders,
}

/// Seeded random inputs for `config`: features `~ N(0, 1)`, and `query_embed` when
/// `with_query` (else `None`, so the model's is used).
pub fn random_inputs(
    config: &Config,
    batch: usize,
    seed: u64,
    padding: Padding,
    with_query: bool,
) -> Inputs {
    let mut g = Gen(ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_1a7e_5eed_1a7e));
    let (s, t, c) = (config.search_size, config.template_size, config.d_model);
    let template1 = g.normal(&[t, t, batch, c]);
    let template2 = g.normal(&[t, t, batch, c]);
    let search = g.normal(&[s, s, batch, c]);
    let mut mask = |side: usize| -> Vec<u8> {
        let mut m = vec![0u8; batch * side * side];
        if padding == Padding::Borders {
            for bi in 0..batch {
                let band = g.0.random_range(1..=(side / 2).max(1));
                let edge = g.0.random_range(0..4u8);
                for i in 0..side {
                    for j in 0..side {
                        let pad = match edge {
                            0 => i < band,
                            1 => i >= side - band,
                            2 => j < band,
                            _ => j >= side - band,
                        };
                        m[bi * side * side + i * side + j] = u8::from(pad);
                    }
                }
            }
        }
        m
    };
    let template1_mask = mask(t);
    let template2_mask = mask(t);
    let search_mask = mask(s);
    let query_embed = with_query.then(|| g.normal(&[1, c]));
    Inputs {
        batch,
        template1,
        template2,
        search,
        template1_mask,
        template2_mask,
        search_mask,
        query_embed,
    }
}
