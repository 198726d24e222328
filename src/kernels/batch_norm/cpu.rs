//! The CPU reference of `batch_norm` over NHWC tensors, seen as `rows x channels` (rows =
//! batch x height x width), f64 sums.
//!
//! Train mode, as PyTorch: `y = gamma (x - mean) / sqrt(var + eps) + beta` with the batch's
//! mean and *biased* variance, and the running statistics moved by `momentum` towards the
//! mean and the *unbiased* variance (`var * rows / (rows - 1)`). Eval mode normalises with
//! the running statistics. The backward of train mode takes the statistics into account:
//! `dx = gamma / sigma (dy - mean(dy) - xhat mean(dy xhat))`.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// PyTorch's defaults.
pub const EPS: f64 = 1e-5;
pub const MOMENTUM: f64 = 0.1;

/// What a train-mode forward keeps for the backward pass and the running statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    pub rows: usize,
    /// Per channel.
    pub mean: Vec<f64>,
    /// Biased (the normalising one), per channel.
    pub var: Vec<f64>,
}

impl BatchStats {
    /// `1 / sqrt(var + eps)` per channel.
    fn inv_std(&self) -> Vec<f64> {
        self.var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect()
    }
}

fn check(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("batch_norm {what}"),
            format!("expected {want} values, found {got}"),
        ))
    }
}

fn check_operands(x: &[f32], channels: usize, gamma: &[f32], beta: &[f32]) -> Result<()> {
    if channels == 0 || !x.len().is_multiple_of(channels) || x.is_empty() {
        return Err(Error::invalid(
            "batch_norm input",
            format!(
                "{} values are not a positive number of rows of {channels} channels",
                x.len()
            ),
        ));
    }
    check("weight", gamma.len(), channels)?;
    check("bias", beta.len(), channels)
}

/// Per-channel sums of `f(row)` over the rows of `x`, in parallel blocks of rows.
fn channel_sums(x: &[f32], c: usize, f: impl Fn(usize, &[f32], &mut [f64]) + Sync) -> Vec<f64> {
    const ROWS: usize = 256;
    x.par_chunks(ROWS * c)
        .enumerate()
        .map(|(blk, xs)| {
            let mut acc = vec![0.0f64; c];
            for (r, row) in xs.chunks(c).enumerate() {
                f(blk * ROWS + r, row, &mut acc);
            }
            acc
        })
        .reduce(
            || vec![0.0; c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// The batch's per-channel mean and biased variance (two passes, f64).
pub fn batch_stats(x: &[f32], channels: usize) -> BatchStats {
    let c = channels;
    let rows = x.len() / c;
    let mean: Vec<f64> = channel_sums(x, c, |_, row, acc| {
        acc.iter_mut()
            .zip(row)
            .for_each(|(a, &v)| *a += f64::from(v))
    })
    .into_iter()
    .map(|s| s / rows as f64)
    .collect();
    let var = channel_sums(x, c, |_, row, acc| {
        for ((a, &v), m) in acc.iter_mut().zip(row).zip(&mean) {
            let d = f64::from(v) - m;
            *a += d * d;
        }
    })
    .into_iter()
    .map(|s| s / rows as f64)
    .collect();
    BatchStats { rows, mean, var }
}

/// `y = gamma (x - mean) / sqrt(var + eps) + beta` per channel.
fn normalise(
    x: &[f32],
    c: usize,
    mean: &[f64],
    inv_std: &[f64],
    gamma: &[f32],
    beta: &[f32],
) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .for_each(|(yr, xr)| {
            for j in 0..c {
                let xhat = (f64::from(xr[j]) - mean[j]) * inv_std[j];
                yr[j] = (f64::from(gamma[j]) * xhat + f64::from(beta[j])) as f32;
            }
        });
    y
}

/// Train mode: the output and the batch's statistics (for [`update_running`] and
/// [`batch_norm_backward`]).
pub fn batch_norm_train(
    x: &[f32],
    channels: usize,
    gamma: &[f32],
    beta: &[f32],
) -> Result<(Vec<f32>, BatchStats)> {
    check_operands(x, channels, gamma, beta)?;
    let stats = batch_stats(x, channels);
    let y = normalise(x, channels, &stats.mean, &stats.inv_std(), gamma, beta);
    Ok((y, stats))
}

/// Eval mode: normalised with the running statistics.
pub fn batch_norm_eval(
    x: &[f32],
    channels: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
) -> Result<Vec<f32>> {
    check_operands(x, channels, gamma, beta)?;
    check("running_mean", running_mean.len(), channels)?;
    check("running_var", running_var.len(), channels)?;
    let mean: Vec<f64> = running_mean.iter().map(|&v| f64::from(v)).collect();
    let inv: Vec<f64> = running_var
        .iter()
        .map(|&v| 1.0 / (f64::from(v) + EPS).sqrt())
        .collect();
    Ok(normalise(x, channels, &mean, &inv, gamma, beta))
}

/// Moves the running statistics towards the batch's: `r = (1 - m) r + m s`, with the
/// unbiased variance for `running_var`, as PyTorch. `shards` are the statistics of the parts a
/// batch was normalised in (one for a whole batch) with their weights (summing to 1): their
/// means and unbiased variances are averaged with those weights. A part of one row leaves
/// the unbiased variance undefined; PyTorch then refuses to train, and so does this.
pub fn update_running(
    shards: &[(f64, &BatchStats)],
    running_mean: &mut [f32],
    running_var: &mut [f32],
) -> Result<()> {
    if shards.iter().any(|(_, s)| s.rows < 2) {
        return Err(Error::invalid(
            "batch_norm running statistics",
            "train mode needs more than one value per channel (batch x height x width >= 2)",
        ));
    }
    for (j, (rm, rv)) in running_mean
        .iter_mut()
        .zip(running_var.iter_mut())
        .enumerate()
    {
        let (mut mean, mut var) = (0.0, 0.0);
        for (w, s) in shards {
            mean += w * s.mean[j];
            var += w * s.var[j] * s.rows as f64 / (s.rows - 1) as f64;
        }
        *rm = ((1.0 - MOMENTUM) * f64::from(*rm) + MOMENTUM * mean) as f32;
        *rv = ((1.0 - MOMENTUM) * f64::from(*rv) + MOMENTUM * var) as f32;
    }
    Ok(())
}

/// The train-mode backward: `(dx, dgamma, dbeta)` from the forward's input `x`, its
/// statistics and the output's gradient `dy`.
pub fn batch_norm_backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    stats: &BatchStats,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let c = gamma.len();
    check("backward dy", dy.len(), x.len())?;
    check("backward input", x.len(), stats.rows * c)?;
    let inv = stats.inv_std();
    let xhat = |r: usize, j: usize| (f64::from(x[r * c + j]) - stats.mean[j]) * inv[j];
    // sum(dy) and sum(dy xhat) per channel: dbeta and dgamma.
    let dbeta = channel_sums(dy, c, |_, row, acc| {
        acc.iter_mut()
            .zip(row)
            .for_each(|(a, &g)| *a += f64::from(g))
    });
    let dgamma = channel_sums(dy, c, |r, row, acc| {
        for (j, (a, &g)) in acc.iter_mut().zip(row).enumerate() {
            *a += f64::from(g) * xhat(r, j);
        }
    });
    let m = stats.rows as f64;
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(c).enumerate().for_each(|(r, dxr)| {
        for j in 0..c {
            let g = f64::from(dy[r * c + j]);
            let v = f64::from(gamma[j]) * inv[j] * (g - dbeta[j] / m - xhat(r, j) * dgamma[j] / m);
            dxr[j] = v as f32;
        }
    });
    let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
    Ok((dx, f(dgamma), f(dbeta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` distinct values in [-1, 1).
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0)
            .collect()
    }

    #[test]
    fn train_mode_normalises_and_updates_the_running_statistics_as_pytorch() {
        // Two channels, four rows: channel 0 is 1, 2, 3, 4 (mean 2.5, biased var 1.25,
        // unbiased 5/3).
        let x = [1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 4.0, 8.0];
        let (y, s) = batch_norm_train(&x, 2, &[2.0, 1.0], &[0.5, 0.0]).unwrap();
        let want0 = 2.0 * (1.0 - 2.5) / (1.25f64 + EPS).sqrt() + 0.5;
        assert!(
            (f64::from(y[0]) - want0).abs() < 1e-6,
            "{} vs {want0}",
            y[0]
        );
        let (mut rm, mut rv) = (vec![0.0f32, 0.0], vec![1.0f32, 1.0]);
        update_running(&[(1.0, &s)], &mut rm, &mut rv).unwrap();
        assert!((rm[0] - 0.25).abs() < 1e-7 && (rm[1] - 0.2).abs() < 1e-7);
        assert!(
            (f64::from(rv[0]) - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6,
            "{}",
            rv[0]
        );
        let y = batch_norm_eval(&x, 2, &[1.0, 1.0], &[0.0, 0.0], &rm, &rv).unwrap();
        let want = (1.0 - 0.25) / (f64::from(rv[0]) + EPS).sqrt();
        assert!((f64::from(y[0]) - want).abs() < 1e-6);
        let one = BatchStats {
            rows: 1,
            mean: vec![0.0],
            var: vec![0.0],
        };
        assert!(update_running(&[(1.0, &one)], &mut [0.0], &mut [1.0]).is_err());
        let e = batch_norm_train(&x, 3, &[1.0; 3], &[0.0; 3]).unwrap_err();
        assert!(e.to_string().contains("batch_norm input"), "{e}");
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (rows, c) = (6, 3);
        let x = values(rows * c, 1);
        let gamma = values(c, 2);
        let beta = values(c, 3);
        let w = values(rows * c, 4);
        // loss = sum(w * y)
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
            let (y, _) = batch_norm_train(x, c, gamma, beta).unwrap();
            y.iter()
                .zip(&w)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum()
        };
        let (_, stats) = batch_norm_train(&x, c, &gamma, &beta).unwrap();
        let (dx, dgamma, dbeta) = batch_norm_backward(&x, &w, &gamma, &stats).unwrap();
        let h = 1e-3f32;
        let fd = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / f64::from(2.0 * h);
        for i in 0..x.len() {
            let g = fd(&|d| {
                let mut xp = x.clone();
                xp[i] += d;
                loss(&xp, &gamma, &beta)
            });
            assert!(
                (g - f64::from(dx[i])).abs() < 2e-3,
                "dx[{i}]: {g} vs {}",
                dx[i]
            );
        }
        for j in 0..c {
            let g = fd(&|d| {
                let mut gp = gamma.clone();
                gp[j] += d;
                loss(&x, &gp, &beta)
            });
            assert!((g - f64::from(dgamma[j])).abs() < 2e-3, "dgamma[{j}]");
            let g = fd(&|d| {
                let mut bp = beta.clone();
                bp[j] += d;
                loss(&x, &gamma, &bp)
            });
            assert!((g - f64::from(dbeta[j])).abs() < 2e-3, "dbeta[{j}]");
        }
    }
}
