//! The decoder's CPU reference (`kernels/decoder.cu`): every product, softmax and LayerNorm in
//! f64 on the f32 inputs, the outputs rounded to f32 once. The same math as the kernel's
//! header, row by row.

use super::{DecoderDims, LayerRef, LinearRef, NormRef};

/// `x W^T + b` for one row.
fn linear(x: &[f64], lin: &LinearRef<'_>) -> Vec<f64> {
    lin.bias
        .iter()
        .enumerate()
        .map(|(n, &b)| {
            let w = &lin.weight[n * x.len()..(n + 1) * x.len()];
            x.iter().zip(w).map(|(a, &w)| a * w as f64).sum::<f64>() + b as f64
        })
        .collect()
}

/// `LN(a + b) * gamma + beta` for one row.
fn add_norm(a: &[f64], b: &[f64], norm: &NormRef<'_>, eps: f64) -> Vec<f64> {
    let v: Vec<f64> = a.iter().zip(b).map(|(x, y)| x + y).collect();
    norm_row(&v, norm, eps)
}

fn norm_row(v: &[f64], norm: &NormRef<'_>, eps: f64) -> Vec<f64> {
    let c = v.len() as f64;
    let mean = v.iter().sum::<f64>() / c;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / c;
    let rstd = 1.0 / (var + eps).sqrt();
    v.iter()
        .enumerate()
        .map(|(j, x)| (x - mean) * rstd * norm.gamma[j] as f64 + norm.beta[j] as f64)
        .collect()
}

/// The decoder on `batch` rows (the kernel's inputs, same layouts: `mem_kv` `(l_all, batch,
/// layers * 2c)`, `key_pad` `(batch, l_all)`, `qpos` `(batch, c)`): each layer's output
/// `(layers, batch, c)` and `hs` `(batch, c)`.
#[allow(clippy::too_many_arguments)]
pub fn decoder_f64(
    dims: DecoderDims,
    layers: &[LayerRef<'_>],
    post_norm: NormRef<'_>,
    mem_kv: &[f32],
    key_pad: &[u8],
    qpos: &[f32],
    batch: usize,
    (scale, eps): (f64, f64),
) -> (Vec<f32>, Vec<f32>) {
    let (c, hd, l_all) = (dims.c, dims.hd(), dims.l_all);
    let kv_row = dims.kv_row();
    let mut outs = vec![0.0f32; dims.layers * batch * c];
    let mut hs = vec![0.0f32; batch * c];
    for r in 0..batch {
        let mut t = vec![0.0f64; c];
        let qp: Vec<f64> = qpos[r * c..(r + 1) * c].iter().map(|&v| v as f64).collect();
        for (j, p) in layers.iter().enumerate() {
            let v = linear(&t, &p.self_v);
            let t1 = add_norm(&t, &linear(&v, &p.self_out), &p.norm1, eps);
            let tq: Vec<f64> = t1.iter().zip(&qp).map(|(a, b)| a + b).collect();
            let q: Vec<f64> = linear(&tq, &p.cross_q).iter().map(|v| v * scale).collect();
            let mut a = vec![0.0f64; c];
            let at =
                |token: usize, ch: usize| mem_kv[(token * batch + r) * kv_row + j * 2 * c + ch];
            for z in 0..dims.heads {
                let ch = z * hd..(z + 1) * hd;
                let scores: Vec<f64> = (0..l_all)
                    .map(|token| {
                        if key_pad[r * l_all + token] != 0 {
                            f64::NEG_INFINITY
                        } else {
                            ch.clone().map(|i| q[i] * at(token, i) as f64).sum()
                        }
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let l: f64 = e.iter().sum();
                for i in ch {
                    let o: f64 = (0..l_all).map(|tk| e[tk] * at(tk, c + i) as f64).sum();
                    a[i] = o / l;
                }
            }
            let t2 = add_norm(&t1, &linear(&a, &p.cross_out), &p.norm2, eps);
            let h: Vec<f64> = linear(&t2, &p.linear1)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            t = add_norm(&t2, &linear(&h, &p.linear2), &p.norm3, eps);
            let out = &mut outs[(j * batch + r) * c..(j * batch + r + 1) * c];
            for (o, v) in out.iter_mut().zip(&t) {
                *o = *v as f32;
            }
        }
        for (o, v) in hs[r * c..(r + 1) * c]
            .iter_mut()
            .zip(norm_row(&t, &post_norm, eps))
        {
            *o = v as f32;
        }
    }
    (outs, hs)
}
