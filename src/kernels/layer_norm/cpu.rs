//! LayerNorm's CPU reference (`kernels/layer_norm.cu`): statistics and outputs in f64, each
//! value rounded to f32 once. Rows are normalised in parallel (rayon); the result does not
//! depend on the split. The CPU engine calls [`add_layer_norm`], the trainer's CPU engine
//! [`layer_norm`] and [`layer_norm_backward`], the tests [`normalize`] on sums they formed.

use rayon::prelude::*;

/// A forward's output and what its backward reads: `y` and `xhat` `(rows, c)`, `rstd`
/// `(rows)` (each row's `1 / sqrt(var + eps)`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Normalized {
    pub y: Vec<f32>,
    pub xhat: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// Normalises one row `v`: `y = (v - mean) * rstd * gamma + beta` (and `xhat`, when
/// asked for), returning `rstd`.
fn normalize_row(
    v: &[f64],
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    y: &mut [f32],
    xhat: Option<&mut [f32]>,
) -> f64 {
    let c = v.len() as f64;
    let mean = v.iter().sum::<f64>() / c;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / c;
    let rstd = 1.0 / (var + eps).sqrt();
    let h = |j: usize| (v[j] - mean) * rstd;
    for (j, out) in y.iter_mut().enumerate() {
        *out = (h(j) * gamma[j] as f64 + beta[j] as f64) as f32;
    }
    if let Some(xhat) = xhat {
        for (j, out) in xhat.iter_mut().enumerate() {
            *out = h(j) as f32;
        }
    }
    rstd
}

/// `LN(v) * gamma + beta` over the rows of `v` (`c = gamma.len()` values each, given in f64:
/// the sum `add_layer_norm_f32` forms, say), with `xhat` and `rstd`.
pub fn normalize(v: &[f64], gamma: &[f32], beta: &[f32], eps: f64) -> Normalized {
    let c = gamma.len();
    let rows = v.len() / c;
    let mut out = Normalized {
        y: vec![0.0; rows * c],
        xhat: vec![0.0; rows * c],
        rstd: vec![0.0; rows],
    };
    out.y
        .par_chunks_mut(c)
        .zip(out.xhat.par_chunks_mut(c))
        .zip(out.rstd.par_iter_mut())
        .zip(v.par_chunks(c))
        .for_each(|(((y, xhat), rstd), row)| {
            *rstd = normalize_row(row, (gamma, beta), eps, y, Some(xhat)) as f32;
        });
    out
}

/// LayerNorm of the rows of `x` (`c = gamma.len()` values each): the trainer's forward.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> Normalized {
    let v: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    normalize(&v, gamma, beta, eps)
}

/// `LN(a + b) * gamma + beta` over rows of `c = gamma.len()`, the sum taken in f64: the
/// transformer's residual-and-norm steps.
pub fn add_layer_norm(a: &[f32], b: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "add_layer_norm: a and b differ in length");
    let c = gamma.len();
    let mut y = vec![0.0f32; a.len()];
    y.par_chunks_mut(c)
        .zip(a.par_chunks(c).zip(b.par_chunks(c)))
        .for_each(|(y, (ra, rb))| {
            let s: Vec<f64> = ra
                .iter()
                .zip(rb)
                .map(|(&x, &y)| x as f64 + y as f64)
                .collect();
            normalize_row(&s, (gamma, beta), eps, y, None);
        });
    y
}

/// The gradients of a LayerNorm: `dx` `(rows, c)`, and gamma's and beta's `(c)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NormGrads {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// The backward from the forward's `xhat` and `rstd`: with `g = dy * gamma`,
/// `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))` (f64 per row); `dgamma` and `dbeta`
/// sum `dy * xhat` and `dy` over the rows in order, in f32 as the trainer accumulates them.
pub fn layer_norm_backward(dy: &[f32], xhat: &[f32], rstd: &[f32], gamma: &[f32]) -> NormGrads {
    let d = gamma.len();
    let mut g = NormGrads {
        dx: vec![0.0; dy.len()],
        dgamma: vec![0.0; d],
        dbeta: vec![0.0; d],
    };
    for (r, ((dyr, hr), dx)) in dy
        .chunks(d)
        .zip(xhat.chunks(d))
        .zip(g.dx.chunks_mut(d))
        .enumerate()
    {
        let dh: Vec<f64> = (0..d).map(|i| dyr[i] as f64 * gamma[i] as f64).collect();
        let mean_dh = dh.iter().sum::<f64>() / d as f64;
        let mean_dh_h = dh.iter().zip(hr).map(|(a, &h)| a * h as f64).sum::<f64>() / d as f64;
        for i in 0..d {
            g.dgamma[i] += (dyr[i] as f64 * hr[i] as f64) as f32;
            g.dbeta[i] += dyr[i];
            dx[i] = (rstd[r] as f64 * (dh[i] - mean_dh - hr[i] as f64 * mean_dh_h)) as f32;
        }
    }
    g
}
