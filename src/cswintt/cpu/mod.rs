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

pub mod gemm;

use std::sync::Arc;

use rayon::prelude::*;

use super::backend::Backend;
use super::plan::{HeadPlan, Plan};
use super::{CPU_F32_TOLERANCE, Inputs, Intermediates, Outputs, Precision};
use crate::base::tensor::Tensor;
use crate::error::Result;
use crate::model::weights::{EncoderLayer, LN_EPS, LayerNorm, Linear, Mha, Weights};
use gemm::ROWS;

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
    /// `shifted[(a*w + e) * w*w + pos]` = the position `K(l, a, e)[pos]` reads.
    shifted: Vec<u32>,
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
                let ww = h.ww();
                let mut shifted = Vec::with_capacity(ww * ww);
                for a in 0..h.w {
                    for e in 0..h.w {
                        for pos in 0..ww {
                            shifted.push(h.shifted_pos(pos, a, e) as u32);
                        }
                    }
                }
                Ok(HeadTables {
                    plan: h.clone(),
                    partition: h.partition_index(),
                    reverse: h.reverse_index(),
                    sr: h.sr_table(),
                    shifted,
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
        let qkv = linear(x, n, &layer.qkv);

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
        let y = linear(&concat, n, &layer.output);
        // 8. x1 = LN1(x + y); x' = LN2(x1 + W2 relu(W1 x1 + b1) + b2).
        let x1 = add_layer_norm(x, &y, &layer.norm1, c);
        let mut hidden = linear(&x1, n, &layer.ff1);
        relu(&mut hidden);
        let f = linear(&hidden, n, &layer.ff2);
        Ok(add_layer_norm(&x1, &f, &layer.norm2, c))
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
            t = add_layer_norm(&t, &sa, &layer.norm1, c);
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
            t = add_layer_norm(&t, &ca, &layer.norm2, c);
            // 3. t = LN3(t + linear2(relu(linear1(t))))
            let mut h = linear(&t, b, &layer.linear1);
            relu(&mut h);
            let f = linear(&h, b, &layer.linear2);
            t = add_layer_norm(&t, &f, &layer.norm3, c);
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
            data: add_layer_norm(&t, &zeros, &self.weights.post_norm, c),
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
    let (w, hd, off, l_all, l) = (p.w, p.hd, p.channel_offset, p.l_all, p.l);
    let ww = w * w;
    let d = ww * hd;
    let scale = (hd as f64).powf(-0.5);

    // 2-3. This head's channels of q, k, v, window-partitioned with P(w, s): slot order.
    // q *= hd^-0.5 (step 1).
    let mut q = vec![0.0f64; l_all * hd];
    let mut k = vec![0.0f32; l_all * hd];
    let mut v = vec![0.0f32; l_all * hd];
    for slot in 0..l_all {
        let row = (ht.partition[slot] as usize * b + bi) * 3 * c;
        for ch in 0..hd {
            q[slot * hd + ch] = (qkv[row + off + ch] * scale as f32) as f64;
            k[slot * hd + ch] = qkv[row + c + off + ch];
            v[slot * hd + ch] = qkv[row + 2 * c + off + ch];
        }
    }

    // 4. Key padding per score column: the key window (of P(w, 0), no shift) padded iff
    // all its pixels are (for w == 1, the token itself).
    let window_pad = p.window_padding(mask, 1);
    let col_pad = p.column_padding(&window_pad, 1);

    // 5. Expand every key/value window into its w*w cyclic shifts: column
    // col = l*w*w + a*w + e holds window l rolled by (+a, +e), i.e. position pos of the
    // shifted window is position shifted(pos; a, e) of window l.
    // K' is stored transposed, (d, L_all), row pos*hd + ch; V' is (L_all, d).
    let mut k_ch = vec![0.0f32; hd * l_all]; // k transposed: (hd, L_all), slot order
    for slot in 0..l_all {
        for ch in 0..hd {
            k_ch[ch * l_all + slot] = k[slot * hd + ch];
        }
    }
    let mut kt = vec![0.0f32; d * l_all];
    for pos in 0..ww {
        for ch in 0..hd {
            let src = &k_ch[ch * l_all..(ch + 1) * l_all];
            let dst = &mut kt[(pos * hd + ch) * l_all..(pos * hd + ch + 1) * l_all];
            for (lw, dst_w) in dst.chunks_exact_mut(ww).enumerate() {
                for (ae, x) in dst_w.iter_mut().enumerate() {
                    *x = src[lw * ww + ht.shifted[ae * ww + pos] as usize];
                }
            }
        }
    }
    let mut vx = vec![0.0f32; l_all * d];
    for (col, dst) in vx.chunks_exact_mut(d).enumerate() {
        let (lw, ae) = (col / ww, col % ww);
        for pos in 0..ww {
            let src = (lw * ww + ht.shifted[ae * ww + pos] as usize) * hd;
            dst[pos * hd..(pos + 1) * hd].copy_from_slice(&v[src..src + hd]);
        }
    }

    // Query windows in blocks of ROWS (in parallel): scores, softmax, p V'.
    let mut o = vec![0.0f32; l * d];
    o.par_chunks_mut(ROWS * d)
        .enumerate()
        .for_each(|(blk, o_blk)| {
            let i0 = blk * ROWS;
            let rows = o_blk.len() / d;
            // Scores: q_i . K'(col) over all w*w*hd entries (f64 accumulation).
            let mut scores = vec![0.0f64; rows * l_all];
            gemm::nn_rows(
                &q[i0 * d..(i0 + rows) * d],
                rows,
                &kt,
                l_all,
                d,
                &mut scores,
            );
            for (r, row) in scores.chunks_exact_mut(l_all).enumerate() {
                let i = i0 + r;
                for (col, s) in row.iter_mut().enumerate() {
                    if w > 1 {
                        // (q_i . K(l,a,e) + sr(a,e)) / (w*w)
                        *s = (*s + ht.sr[col % ww] as f64) / ww as f64;
                    }
                    if col_pad[col] != 0 {
                        *s = f64::NEG_INFINITY;
                    }
                    if let Some(bias) = &ht.bias {
                        *s += bias[i * l_all + col] as f64;
                    }
                }
                // softmax over the L_all columns (f64 sums). Inputs::validate guarantees
                // a non-padded key, so the max is finite.
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0f64;
                for s in row.iter_mut() {
                    // exp(s - max) <= 1 is evaluated in f32 (relative error ~1e-7, far
                    // below the tolerance, and several times faster than f64 exp); the
                    // sum is f64.
                    *s = ((*s - max) as f32).exp() as f64;
                    sum += *s;
                }
                for s in row.iter_mut() {
                    *s /= sum;
                }
            }
            // o = p V': (rows, d).
            let mut acc = vec![0.0f64; rows * d];
            gemm::nn_rows(&scores, rows, &vx, d, l_all, &mut acc);
            for (dst, a) in o_blk.iter_mut().zip(&acc) {
                *dst = *a as f32;
            }
        });
    o
}

/// `torch.nn.MultiheadAttention` (eval): `nq` queries and `nk` keys per batch item, rows
/// `token*b + bi` of width `c`; `pad` is `(b, nk)`, nonzero = masked key.
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
    let scale = (hd as f64).powf(-0.5);
    let w = &m.in_proj.weight.data;
    let bias = &m.in_proj.bias.data;
    let part = |i: usize| Linear {
        weight: Tensor {
            shape: vec![c, c],
            data: w[i * c * c..(i + 1) * c * c].to_vec(),
        },
        bias: Tensor {
            shape: vec![c],
            data: bias[i * c..(i + 1) * c].to_vec(),
        },
    };
    let q = linear(q_in, nq * b, &part(0));
    let k = linear(k_in, nk * b, &part(1));
    let v = linear(v_in, nk * b, &part(2));
    let mut out = vec![0.0f32; nq * b * c];
    let jobs: Vec<(usize, usize)> = (0..b)
        .flat_map(|bi| (0..nhead).map(move |h| (bi, h)))
        .collect();
    let results: Vec<Vec<f32>> = jobs
        .par_iter()
        .map(|&(bi, h)| {
            let off = h * hd;
            let mut o = vec![0.0f32; nq * hd];
            let mut s = vec![0.0f64; nk];
            for i in 0..nq {
                let qr = &q[(i * b + bi) * c + off..(i * b + bi) * c + off + hd];
                for (j, sj) in s.iter_mut().enumerate() {
                    let kr = &k[(j * b + bi) * c + off..(j * b + bi) * c + off + hd];
                    let dot: f64 = qr.iter().zip(kr).map(|(&a, &b)| a as f64 * b as f64).sum();
                    *sj = if pad[bi * nk + j] != 0 {
                        f64::NEG_INFINITY
                    } else {
                        dot * scale
                    };
                }
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0f64;
                for sj in s.iter_mut() {
                    *sj = (*sj - max).exp();
                    sum += *sj;
                }
                let mut acc = vec![0.0f64; hd];
                for (j, &pj) in s.iter().enumerate() {
                    let vr = &v[(j * b + bi) * c + off..(j * b + bi) * c + off + hd];
                    for (a, &x) in acc.iter_mut().zip(vr) {
                        *a += pj * x as f64;
                    }
                }
                for (dst, a) in o[i * hd..(i + 1) * hd].iter_mut().zip(&acc) {
                    *dst = (a / sum) as f32;
                }
            }
            o
        })
        .collect();
    for (&(bi, h), o) in jobs.iter().zip(&results) {
        for i in 0..nq {
            let dst = (i * b + bi) * c + h * hd;
            out[dst..dst + hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
    }
    linear(&out, nq * b, &m.out_proj)
}

/// `y = x W^T + b` for `n` rows (f64 accumulation), rows in parallel blocks.
fn linear(x: &[f32], n: usize, lin: &Linear) -> Vec<f32> {
    let (m, k) = (lin.out_features(), lin.in_features());
    assert_eq!(x.len(), n * k, "linear: x is not (n, in)");
    let mut y = vec![0.0f32; n * m];
    y.par_chunks_mut(ROWS * m)
        .zip(x.par_chunks(ROWS * k))
        .for_each(|(y_blk, x_blk)| {
            let rows = y_blk.len() / m;
            let a: Vec<f64> = x_blk.iter().map(|&v| v as f64).collect();
            let mut acc = vec![0.0f64; rows * m];
            gemm::nt_rows(&a, rows, &lin.weight.data, m, k, &mut acc);
            for (y_row, acc_row) in y_blk.chunks_exact_mut(m).zip(acc.chunks_exact(m)) {
                for ((dst, &v), &bias) in y_row.iter_mut().zip(acc_row).zip(&lin.bias.data) {
                    *dst = (v + bias as f64) as f32;
                }
            }
        });
    y
}

fn relu(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// `LayerNorm(a + b)` over rows of `c` (eps 1e-5, biased variance), statistics in f64.
fn add_layer_norm(a: &[f32], b: &[f32], ln: &LayerNorm, c: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; a.len()];
    out.par_chunks_mut(c)
        .zip(a.par_chunks(c).zip(b.par_chunks(c)))
        .for_each(|(o, (ra, rb))| {
            let s: Vec<f64> = ra
                .iter()
                .zip(rb)
                .map(|(&x, &y)| x as f64 + y as f64)
                .collect();
            let mean = s.iter().sum::<f64>() / c as f64;
            let var = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
            let inv = 1.0 / (var + LN_EPS).sqrt();
            for (j, dst) in o.iter_mut().enumerate() {
                *dst = ((s[j] - mean) * inv * ln.weight.data[j] as f64 + ln.bias.data[j] as f64)
                    as f32;
            }
        });
    out
}
