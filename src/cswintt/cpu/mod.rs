//! The CPU reference: the transformer in f32 storage with f64 accumulation (dot
//! products, LayerNorm statistics, softmax sums), following the spec
//! (`shared/spec/cswintt-transformer.md`) step by step. Heads run in parallel (rayon),
//! the CPU analogue of the multi-threaded heads.
//!
//! Accuracy: against the golden files every `expected.*` tensor matches to a relative
//! error `||ours - expected||_F / ||expected||_F` of at most 1e-5
//! ([`crate::cswintt::CPU_F32_TOLERANCE`]).
//!
//! Layouts: activations are `(L, b, c)` token-major as in the original, stored as rows
//! `t*b + bi` of `c` channels.

use std::sync::Arc;

use rayon::prelude::*;

use super::backend::Backend;
use super::plan::{HeadPlan, Plan};
use super::{CPU_F32_TOLERANCE, Inputs, Intermediates, Outputs, Precision};
use crate::base::tensor::Tensor;
use crate::error::Result;
use crate::kernels::layer_norm::cpu as layer_norm;
use crate::kernels::linear::cpu as linear;
use crate::kernels::window_attention::cpu::{Head, window_attention};
use crate::model::weights::{EncoderLayer, LN_EPS, LayerNorm, Linear, Mha, Weights};

/// Per-head tables computed once from the plan and the weights.
#[derive(Debug, Clone)]
struct HeadTables {
    plan: HeadPlan,
    /// `P(w, s)`: slot -> token.
    partition: Vec<u32>,
    /// Window reverse: token -> slot.
    reverse: Vec<u32>,
    /// `sr(a, e)`, indexed `a*w + e`.
    sr: Vec<f32>,
    /// `B_w`, `(L, L_all)`, for `w` in {1, 2, 4}.
    bias: Option<Vec<f32>>,
}

/// The CPU reference engine.
#[derive(Debug, Clone)]
pub struct CpuReference {
    weights: Arc<Weights>,
    plan: Plan,
    heads: Vec<HeadTables>,
}

impl CpuReference {
    /// Builds the plan and the per-head tables (gathered bias, index maps).
    pub fn new(weights: Arc<Weights>) -> Result<CpuReference> {
        let plan = Plan::new(&weights.config)?;
        let heads = plan
            .heads
            .iter()
            .map(|h| {
                Ok(HeadTables {
                    plan: h.clone(),
                    partition: h.partition_index(),
                    reverse: h.reverse_index(),
                    sr: h.sr_table(),
                    bias: h
                        .gathered_bias(weights.rel_bias_tables.get(&h.w).map(|t| t.as_slice()))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuReference {
            weights,
            plan,
            heads,
        })
    }

    pub fn weights(&self) -> &Arc<Weights> {
        &self.weights
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs the transformer; with `intermediates`, also every `expected.*` tensor.
    pub fn forward(&self, inputs: &Inputs, intermediates: bool) -> Result<Outputs> {
        let cfg = &self.weights.config;
        inputs.validate(cfg)?;
        let query = inputs.query(&self.weights)?;
        let (b, c) = (inputs.batch, cfg.d_model);
        let mut im = Intermediates::default();

        // Merge: x0 = concat(template1, template2, search), m = merged padding mask.
        let mut x = inputs.merged_tokens();
        let mask = inputs.merged_mask(cfg);

        // Encoder.
        for (i, layer) in self.weights.encoder.iter().enumerate() {
            let capture = intermediates && i == 0;
            x = self.encoder_layer(layer, &x, &mask, b, capture.then_some(&mut im))?;
            if intermediates {
                im.encoder.push(Tensor {
                    shape: vec![cfg.l_all(), b, c],
                    data: x.clone(),
                });
            }
        }
        let search_feat = Tensor {
            shape: vec![cfg.search_tokens(), b, c],
            data: x[cfg.search_offset() * b * c..].to_vec(),
        };

        // Decoder (DETR style, post-norm) on the full encoder output `mem = x`.
        let hs = self.decoder(&x, &mask, &query.data, b, intermediates.then_some(&mut im));
        Ok(Outputs {
            search_feat,
            hs,
            intermediates: intermediates.then_some(im),
        })
    }

    /// One encoder layer, spec steps 1-8. `capture` receives layer 0's per-head outputs
    /// and `heads_concat`.
    fn encoder_layer(
        &self,
        layer: &EncoderLayer,
        x: &[f32],
        mask: &[u8],
        b: usize,
        capture: Option<&mut Intermediates>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.weights.config;
        let (l_all, c) = (cfg.l_all(), cfg.d_model);
        let n = l_all * b;

        // 1. qkv = x W_qkv^T + b_qkv; q, k, v are its c-wide slices (q scaled in step 5).
        let qkv = project(x, n, &layer.qkv);

        // 2-5. Each head (and batch item) on its own thread: window partition, attention.
        let jobs: Vec<(usize, usize)> = (0..self.heads.len())
            .flat_map(|h| (0..b).map(move |bi| (h, bi)))
            .collect();
        let outs: Vec<Vec<f32>> = jobs
            .par_iter()
            .map(|&(h, bi)| {
                let ht = &self.heads[h];
                let m = &mask[bi * l_all..(bi + 1) * l_all];
                head_attention(ht, &qkv, b, bi, c, m)
            })
            .collect();

        // 6-7. Window reverse each head and concatenate heads along channels.
        let mut concat = vec![0.0f32; n * c];
        for (&(h, bi), o) in jobs.iter().zip(&outs) {
            let ht = &self.heads[h];
            let (hd, off) = (ht.plan.hd, ht.plan.channel_offset);
            for t in 0..l_all {
                let slot = ht.reverse[t] as usize;
                let dst = (t * b + bi) * c + off;
                concat[dst..dst + hd].copy_from_slice(&o[slot * hd..(slot + 1) * hd]);
            }
        }
        if let Some(im) = capture {
            for (h, ht) in self.heads.iter().enumerate() {
                let (l, d) = (ht.plan.l, ht.plan.window_dim());
                let mut data = Vec::with_capacity(b * l * d);
                for bi in 0..b {
                    data.extend_from_slice(&outs[h * b + bi]);
                }
                im.encoder0_heads.push(Tensor {
                    shape: vec![b, l, d],
                    data,
                });
            }
            im.encoder0_heads_concat = Some(Tensor {
                shape: vec![l_all, b, c],
                data: concat.clone(),
            });
        }

        // 7. y = concat W_o^T + b_o.
        let y = project(&concat, n, &layer.output);
        // 8. x1 = LN1(x + y); x' = LN2(x1 + W2 relu(W1 x1 + b1) + b2).
        let x1 = add_layer_norm(x, &y, &layer.norm1);
        let mut hidden = project(&x1, n, &layer.ff1);
        relu(&mut hidden);
        let f = project(&hidden, n, &layer.ff2);
        Ok(add_layer_norm(&x1, &f, &layer.norm2))
    }

    /// The decoder: `dec_layers` DETR layers on one query, then `post_norm`.
    fn decoder(
        &self,
        mem: &[f32],
        mask: &[u8],
        query: &[f32],
        b: usize,
        mut capture: Option<&mut Intermediates>,
    ) -> Tensor {
        let cfg = &self.weights.config;
        let (c, l_all) = (cfg.d_model, cfg.l_all());
        // qpos = query_embed repeated over the batch; t starts at zeros. Rows are bi.
        let qpos: Vec<f32> = (0..b).flat_map(|_| query.iter().copied()).collect();
        let mut t = vec![0.0f32; b * c];
        let no_pad = vec![0u8; b];
        for layer in &self.weights.decoder {
            // 1. t = LN1(t + MHA_self(q = t + qpos, k = t + qpos, v = t))
            let tq = add(&t, &qpos);
            let sa = mha(&layer.self_attn, &tq, &tq, &t, 1, b, c, cfg.nhead, &no_pad);
            t = add_layer_norm(&t, &sa, &layer.norm1);
            // 2. t = LN2(t + MHA_cross(q = t + qpos, k = mem, v = mem, key_padding = m))
            let tq = add(&t, &qpos);
            let ca = mha(
                &layer.cross_attn,
                &tq,
                mem,
                mem,
                l_all,
                b,
                c,
                cfg.nhead,
                mask,
            );
            t = add_layer_norm(&t, &ca, &layer.norm2);
            // 3. t = LN3(t + linear2(relu(linear1(t))))
            let mut h = project(&t, b, &layer.linear1);
            relu(&mut h);
            let f = project(&h, b, &layer.linear2);
            t = add_layer_norm(&t, &f, &layer.norm3);
            if let Some(im) = capture.as_deref_mut() {
                im.decoder.push(Tensor {
                    shape: vec![1, b, c],
                    data: t.clone(),
                });
            }
        }
        // hs = post_norm(t).
        let zeros = vec![0.0f32; b * c];
        Tensor {
            shape: vec![1, b, c],
            data: add_layer_norm(&t, &zeros, &self.weights.post_norm),
        }
    }
}

impl Backend for CpuReference {
    fn describe(&self) -> String {
        format!(
            "CPU reference (f32, f64 accumulation, {} threads)",
            rayon::current_num_threads()
        )
    }
    fn device(&self) -> String {
        "cpu".into()
    }
    fn precision(&self) -> Precision {
        Precision::F32
    }
    fn tolerance(&self) -> f64 {
        CPU_F32_TOLERANCE
    }
    fn run(&mut self, inputs: &Inputs, intermediates: bool) -> Result<Outputs> {
        self.forward(inputs, intermediates)
    }
}

/// Runs the CPU reference once (builds the tables each call; use [`CpuReference`] to
/// run repeatedly).
pub fn run(weights: Arc<Weights>, inputs: &Inputs, intermediates: bool) -> Result<Outputs> {
    CpuReference::new(weights)?.forward(inputs, intermediates)
}

/// One head's attention for batch item `bi` (spec encoder steps 2-5). Returns `o`,
/// `(L, w*w*hd)` (= `(L_all, hd)` in slot order), before window reverse.
fn head_attention(
    ht: &HeadTables,
    qkv: &[f32],
    b: usize,
    bi: usize,
    c: usize,
    mask: &[u8],
) -> Vec<f32> {
    let p = &ht.plan;
    let (hd, off, l_all) = (p.hd, p.channel_offset, p.l_all);
    let scale = (hd as f64).powf(-0.5) as f32;

    // 2-3. This head's channels of q, k, v, window-partitioned with P(w, s): slot order.
    // q *= hd^-0.5 (step 1).
    let mut q = vec![0.0f32; l_all * hd];
    let mut k = vec![0.0f32; l_all * hd];
    let mut v = vec![0.0f32; l_all * hd];
    for slot in 0..l_all {
        let row = (ht.partition[slot] as usize * b + bi) * 3 * c;
        for ch in 0..hd {
            q[slot * hd + ch] = qkv[row + off + ch] * scale;
            k[slot * hd + ch] = qkv[row + c + off + ch];
            v[slot * hd + ch] = qkv[row + 2 * c + off + ch];
        }
    }

    // 4. Key padding per score column: the key window (of P(w, 0), no shift) padded iff
    // all its pixels are (for w == 1, the token itself). Inputs::validate guarantees a
    // non-padded key.
    let window_pad = p.window_padding(mask, 1);
    let col_pad = p.column_padding(&window_pad, 1);

    // 5. Scores against every cyclic shift of every key window, softmax, times values.
    window_attention(&Head {
        w: p.w,
        hd,
        q: &q,
        k: &k,
        v: &v,
        sr: &ht.sr,
        key_pad: Some(&col_pad),
        bias: ht.bias.as_deref(),
    })
}

/// `torch.nn.MultiheadAttention` (eval): `nq` queries and `nk` keys per batch item, rows
/// `token*b + bi` of width `c`; `pad` is `(b, nk)`, nonzero = masked key. Each head's
/// attention is window attention with `w == 1`.
#[allow(clippy::too_many_arguments)]
fn mha(
    m: &Mha,
    q_in: &[f32],
    k_in: &[f32],
    v_in: &[f32],
    nk: usize,
    b: usize,
    c: usize,
    nhead: usize,
    pad: &[u8],
) -> Vec<f32> {
    let nq = q_in.len() / (b * c);
    let hd = c / nhead;
    let scale = (hd as f64).powf(-0.5) as f32;
    let (w, bias) = (&m.in_proj.weight.data, &m.in_proj.bias.data);
    let part = |i: usize, x: &[f32], n: usize| {
        let rows = i * c..(i + 1) * c;
        linear::linear(x, &w[rows.start * c..rows.end * c], &bias[rows], (n, c, c))
    };
    let (q, k, v) = (
        part(0, q_in, nq * b),
        part(1, k_in, nk * b),
        part(2, v_in, nk * b),
    );
    // Head h of batch item bi: its hd channels of each token's row.
    let gather = |x: &[f32], n: usize, bi: usize, h: usize, factor: f32| -> Vec<f32> {
        (0..n)
            .flat_map(|t| &x[(t * b + bi) * c + h * hd..][..hd])
            .map(|&x| x * factor)
            .collect()
    };
    let jobs: Vec<(usize, usize)> = (0..b)
        .flat_map(|bi| (0..nhead).map(move |h| (bi, h)))
        .collect();
    let results: Vec<Vec<f32>> = jobs
        .par_iter()
        .map(|&(bi, h)| {
            window_attention(&Head {
                w: 1,
                hd,
                q: &gather(&q, nq, bi, h, scale),
                k: &gather(&k, nk, bi, h, 1.0),
                v: &gather(&v, nk, bi, h, 1.0),
                sr: &[],
                key_pad: Some(&pad[bi * nk..(bi + 1) * nk]),
                bias: None,
            })
        })
        .collect();
    let mut out = vec![0.0f32; nq * b * c];
    for (&(bi, h), o) in jobs.iter().zip(&results) {
        for i in 0..nq {
            let dst = (i * b + bi) * c + h * hd;
            out[dst..dst + hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
    }
    project(&out, nq * b, &m.out_proj)
}

/// `y = x W^T + b` for `n` rows of a layer of the model.
fn project(x: &[f32], n: usize, lin: &Linear) -> Vec<f32> {
    let (m, k) = (lin.out_features(), lin.in_features());
    linear::linear(x, &lin.weight.data, &lin.bias.data, (n, m, k))
}

fn relu(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// `LayerNorm(a + b)` with the model's parameters and eps.
fn add_layer_norm(a: &[f32], b: &[f32], ln: &LayerNorm) -> Vec<f32> {
    layer_norm::add_layer_norm(a, b, &ln.weight.data, &ln.bias.data, LN_EPS)
}
