//! Window attention's CPU reference (`kernels/window_attention.cu`): one head of one batch
//! item, its q, k and v in slot order (slot `i*ww + pos` is position `pos` of window `i`,
//! `ww = w*w`), as the kernel's header defines it:
//!
//! - score column `col = l*ww + a*w + e` pairs query window `i` with key window `l` rolled by
//!   `(+a, +e)`: `s = q_i . K(l,a,e)`, `K(l,a,e)[r][c] = K(l)[(r-a) mod w][(c-e) mod w]`;
//! - `w > 1`: `s = (s + sr[a*w+e]) / ww`; a padded key column: `s = -inf`; then `+ bias`;
//! - `p = softmax` over the columns; `o_i[pos] = sum_col p[col] V(l,a,e)[pos]`.
//!
//! With `w == 1` this is scaled-dot-product attention over tokens (q arrives pre-scaled).
//! The CPU engine runs the transformer's heads and the decoder's attention with
//! [`window_attention`], the trainer's CPU engine the ViT's with it and
//! [`window_attention_backward`], and the tests hold the kernels to both.
//!
//! Accumulation is f64 (dot products, softmax sums). The forward evaluates `exp(s - max)`
//! (at most 1) in f32: its relative error (~1e-7) is far below the f32 results' tolerance,
//! and it is several times faster than f64's exp; the backward, which runs on small models
//! only, stays in f64 throughout. A query row whose every key is padded has no softmax (its
//! outputs are NaN, as the kernel's).

use rayon::prelude::*;

use crate::kernels::linear::gemm::{ROWS, nn_rows};

/// The in-window position that the roll `(a, e)` brings to position `pos` of a `w x w`
/// window: `K(l,a,e)[r][c] = K(l)[(r - a) mod w][(c - e) mod w]`, `pos = r*w + c`.
pub fn shifted_pos(w: usize, pos: usize, a: usize, e: usize) -> usize {
    let (r, c) = (pos / w, pos % w);
    ((r + w - a) % w) * w + (c + w - e) % w
}

/// One head of one batch item.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    /// Window side: `1`, or a power of two.
    pub w: usize,
    pub hd: usize,
    /// `(n_queries, hd)`, pre-scaled (by `hd^-0.5`, as the kernel takes it).
    pub q: &'a [f32],
    /// `(n_keys, hd)`.
    pub k: &'a [f32],
    /// `(n_keys, hd)`.
    pub v: &'a [f32],
    /// `sr(a, e)` indexed `a*w + e`, `(w*w)`; read when `w > 1`.
    pub sr: &'a [f32],
    /// `(n_keys)`, nonzero = masked key column; `None`: no key is.
    pub key_pad: Option<&'a [u8]>,
    /// `(n_queries / (w*w), n_keys)`, added after masking.
    pub bias: Option<&'a [f32]>,
}

impl Head<'_> {
    fn ww(&self) -> usize {
        self.w * self.w
    }

    fn n_keys(&self) -> usize {
        self.k.len() / self.hd
    }

    /// `shifted[ae * ww + pos]`: the position of key window `l` that column `l*ww + ae`
    /// puts at position `pos`.
    fn shifted(&self) -> Vec<usize> {
        let (w, ww) = (self.w, self.ww());
        (0..ww * ww)
            .map(|i| shifted_pos(w, i % ww, (i / ww) / w, (i / ww) % w))
            .collect()
    }

    /// Column `col`'s score from its raw dot product `qk`: `sr`, masking and bias applied.
    fn score(&self, window: usize, col: usize, qk: f64) -> f64 {
        let ww = self.ww();
        let mut s = qk;
        if self.w > 1 {
            s = (s + self.sr[col % ww] as f64) / ww as f64;
        }
        if self.key_pad.is_some_and(|pad| pad[col] != 0) {
            s = f64::NEG_INFINITY;
        }
        if let Some(bias) = self.bias {
            s += bias[window * self.n_keys() + col] as f64;
        }
        s
    }

    fn check(&self) {
        let (ww, hd) = (self.ww(), self.hd);
        assert!(self.w.is_power_of_two(), "window attention: w = {}", self.w);
        assert!(
            self.q.len().is_multiple_of(ww * hd) && self.k.len().is_multiple_of(ww * hd),
            "window attention: q and k are not whole {0}x{0} windows of {hd} channels",
            self.w
        );
        assert_eq!(
            self.k.len(),
            self.v.len(),
            "window attention: k and v differ"
        );
        assert!(
            self.w == 1 || self.sr.len() == ww,
            "window attention: sr is not (w*w)"
        );
    }
}

/// The head's output `(n_queries, hd)` in slot order (before window reverse).
pub fn window_attention(h: &Head<'_>) -> Vec<f32> {
    h.check();
    let (hd, ww, n_keys) = (h.hd, h.ww(), h.n_keys());
    let d = ww * hd; // one window's values
    let windows = h.q.len() / d;
    let shifted = h.shifted();
    let q: Vec<f64> = h.q.iter().map(|&v| v as f64).collect();

    // Every key/value window expanded into its w*w cyclic shifts: column col = l*ww + ae
    // holds window l rolled by ae, position pos of it is position shifted[ae*ww + pos] of
    // window l. K' is stored transposed, (d, n_keys), row pos*hd + ch; V' is (n_keys, d).
    let mut k_ch = vec![0.0f32; hd * n_keys]; // k transposed: (hd, n_keys), slot order
    for slot in 0..n_keys {
        for ch in 0..hd {
            k_ch[ch * n_keys + slot] = h.k[slot * hd + ch];
        }
    }
    let mut kt = vec![0.0f32; d * n_keys];
    for pos in 0..ww {
        for ch in 0..hd {
            let src = &k_ch[ch * n_keys..(ch + 1) * n_keys];
            let dst = &mut kt[(pos * hd + ch) * n_keys..(pos * hd + ch + 1) * n_keys];
            for (l, dst_w) in dst.chunks_exact_mut(ww).enumerate() {
                for (ae, x) in dst_w.iter_mut().enumerate() {
                    *x = src[l * ww + shifted[ae * ww + pos]];
                }
            }
        }
    }
    let mut vx = vec![0.0f32; n_keys * d];
    for (col, dst) in vx.chunks_exact_mut(d).enumerate() {
        let (l, ae) = (col / ww, col % ww);
        for pos in 0..ww {
            let src = (l * ww + shifted[ae * ww + pos]) * hd;
            dst[pos * hd..(pos + 1) * hd].copy_from_slice(&h.v[src..src + hd]);
        }
    }

    // Query windows in blocks of ROWS (in parallel): scores, softmax, p V'.
    let mut o = vec![0.0f32; windows * d];
    o.par_chunks_mut(ROWS * d)
        .enumerate()
        .for_each(|(blk, o_blk)| {
            let i0 = blk * ROWS;
            let rows = o_blk.len() / d;
            let mut scores = vec![0.0f64; rows * n_keys];
            nn_rows(
                &q[i0 * d..(i0 + rows) * d],
                rows,
                &kt,
                n_keys,
                d,
                &mut scores,
            );
            for (r, row) in scores.chunks_exact_mut(n_keys).enumerate() {
                for (col, s) in row.iter_mut().enumerate() {
                    *s = h.score(i0 + r, col, *s);
                }
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0f64;
                for s in row.iter_mut() {
                    *s = ((*s - max) as f32).exp() as f64;
                    sum += *s;
                }
                for s in row.iter_mut() {
                    *s /= sum;
                }
            }
            let mut acc = vec![0.0f64; rows * d];
            nn_rows(&scores, rows, &vx, d, n_keys, &mut acc);
            for (dst, a) in o_blk.iter_mut().zip(&acc) {
                *dst = *a as f32;
            }
        });
    o
}

/// The gradients of one head: `dq` (of the pre-scaled q), `dk`, `dv`, shaped as q, k, v.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadGrads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
}

/// The backward of [`window_attention`] from the output's gradient `dout` `(n_queries, hd)`,
/// recomputing the probabilities (in f64) as the kernel does: per query window,
/// `dP[col] = sum_pos dout[pos] . V(l,a,e)[pos]`, `dS = p (dP - sum p dP)` divided by `ww`
/// when `w > 1` (the score's own factor), then `dq += dS K(l,a,e)`, `dk += dS q`, `dv += p dout`
/// along the column's pairs.
pub fn window_attention_backward(h: &Head<'_>, dout: &[f32]) -> HeadGrads {
    h.check();
    assert_eq!(
        dout.len(),
        h.q.len(),
        "window attention backward: dout is not q's shape"
    );
    let (hd, ww, n_keys) = (h.hd, h.ww(), h.n_keys());
    let windows = h.q.len() / (ww * hd);
    let shifted = &h.shifted();
    let at = |x: &[f32], slot: usize| -> Vec<f64> {
        x[slot * hd..(slot + 1) * hd]
            .iter()
            .map(|&v| v as f64)
            .collect()
    };
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let add = |acc: &mut [f64], k: f64, x: &[f64]| {
        acc.iter_mut().zip(x).for_each(|(a, v)| *a += k * v);
    };
    // The (query slot, key slot) pairs of column col of query window i.
    let pairs = |i: usize, col: usize| {
        let (l, ae) = (col / ww, col % ww);
        (0..ww).map(move |pos| (i * ww + pos, l * ww + shifted[ae * ww + pos]))
    };
    let (q, k, v, dout): (Vec<_>, Vec<_>, Vec<_>, Vec<_>) = (
        (0..h.q.len() / hd).map(|s| at(h.q, s)).collect(),
        (0..n_keys).map(|s| at(h.k, s)).collect(),
        (0..n_keys).map(|s| at(h.v, s)).collect(),
        (0..h.q.len() / hd).map(|s| at(dout, s)).collect(),
    );
    let (mut dq, mut dk, mut dv) = (
        vec![vec![0.0f64; hd]; q.len()],
        vec![vec![0.0f64; hd]; n_keys],
        vec![vec![0.0f64; hd]; n_keys],
    );
    let norm = if h.w > 1 { ww as f64 } else { 1.0 };
    for i in 0..windows {
        let scores: Vec<f64> = (0..n_keys)
            .map(|col| {
                let qk = pairs(i, col).map(|(qs, ks)| dot(&q[qs], &k[ks])).sum();
                h.score(i, col, qk)
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
        let p: Vec<f64> = scores.iter().map(|s| (s - max).exp() / sum).collect();
        let dp: Vec<f64> = (0..n_keys)
            .map(|col| pairs(i, col).map(|(qs, ks)| dot(&dout[qs], &v[ks])).sum())
            .collect();
        let inner: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
        for col in 0..n_keys {
            let ds = p[col] * (dp[col] - inner) / norm;
            for (qs, ks) in pairs(i, col) {
                add(&mut dv[ks], p[col], &dout[qs]);
                add(&mut dq[qs], ds, &k[ks]);
                add(&mut dk[ks], ds, &q[qs]);
            }
        }
    }
    let flat = |x: Vec<Vec<f64>>| x.into_iter().flatten().map(|v| v as f32).collect();
    HeadGrads {
        dq: flat(dq),
        dk: flat(dk),
        dv: flat(dv),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_pos_rolls() {
        // w = 4. Rolling by (+1, 0): row 1 reads row 0.
        assert_eq!(shifted_pos(4, 4, 1, 0), 0);
        assert_eq!(shifted_pos(4, 0, 1, 0), 12);
        assert_eq!(shifted_pos(4, 0, 0, 1), 3);
    }
}
