//! The CPU reference of `batch_norm` over NHWC tensors, seen as `rows x channels` (rows =
//! batch x height x width), f64 sums.
//!
//! Train mode, as PyTorch: `y = gamma (x - mean) / sqrt(var + eps) + beta` with the batch's
//! mean and *biased* variance, and the running statistics moved by `momentum` towards the
//! mean and the *unbiased* variance (`var * rows / (rows - 1)`). Eval mode normalises with
//! the running statistics. The backward of train mode takes the statistics into account:
//! `dx = gamma / sigma (dy - mean(dy) - xhat mean(dy xhat))`.
//!
//! Synchronised batch norm (a batch normalised as one over several devices' shards) splits
//! both passes at their reductions: each shard's [`Moments`] (count, sum and sum of squares
//! per channel) are summed into the batch's statistics before [`batch_norm_apply`], and each
//! shard's [`NormGrads`] (sums of `dy` and `dy xhat`) into the batch's before
//! [`backward_input`]. One shard's train-mode functions are the same steps without the sums.

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

/// A shard's per-channel sums for synchronised batch norm: what the devices exchange.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    pub rows: usize,
    pub sum: Vec<f64>,
    pub sum_sq: Vec<f64>,
}

impl Moments {
    /// The shard's sums of `x` (`rows x channels`) and of its squares, per channel.
    pub fn of(x: &[f32], channels: usize) -> Moments {
        let sum = channel_sums(x, channels, |_, row, acc| {
            acc.iter_mut()
                .zip(row)
                .for_each(|(a, &v)| *a += f64::from(v))
        });
        let sum_sq = channel_sums(x, channels, |_, row, acc| {
            acc.iter_mut()
                .zip(row)
                .for_each(|(a, &v)| *a += f64::from(v) * f64::from(v))
        });
        Moments {
            rows: x.len() / channels.max(1),
            sum,
            sum_sq,
        }
    }

    /// The statistics of the batch the shards `parts` make together (in f64, the variance as
    /// `E[x^2] - mean^2`, clamped at 0 against rounding).
    pub fn stats(parts: &[Moments]) -> BatchStats {
        let c = parts.first().map_or(0, |p| p.sum.len());
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let n = rows.max(1) as f64;
        let total = |f: fn(&Moments) -> &Vec<f64>, j: usize| -> f64 {
            parts.iter().map(|p| f(p)[j]).sum::<f64>()
        };
        let mean: Vec<f64> = (0..c).map(|j| total(|p| &p.sum, j) / n).collect();
        let var = (0..c)
            .map(|j| (total(|p| &p.sum_sq, j) / n - mean[j] * mean[j]).max(0.0))
            .collect();
        BatchStats { rows, mean, var }
    }
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

/// Train mode with the statistics given: a shard of a batch normalised as one
/// (synchronised batch norm; `stats` from [`Moments::stats`]).
pub fn batch_norm_apply(
    x: &[f32],
    channels: usize,
    gamma: &[f32],
    beta: &[f32],
    stats: &BatchStats,
) -> Result<Vec<f32>> {
    check_operands(x, channels, gamma, beta)?;
    check("statistics", stats.mean.len(), channels)?;
    Ok(normalise(
        x,
        channels,
        &stats.mean,
        &stats.inv_std(),
        gamma,
        beta,
    ))
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

/// The backward pass's per-channel sums over a shard's rows: `sum(dy xhat)` (the weight's
/// gradient) and `sum(dy)` (the bias's). Synchronised batch norm sums them over the shards
/// ([`NormGrads::total`]) before [`backward_input`].
#[derive(Clone, Debug, PartialEq)]
pub struct NormGrads {
    pub dgamma: Vec<f64>,
    pub dbeta: Vec<f64>,
}

impl NormGrads {
    /// The sums over several shards.
    pub fn total(parts: &[NormGrads]) -> NormGrads {
        let c = parts.first().map_or(0, |p| p.dbeta.len());
        let sum = |f: fn(&NormGrads) -> &Vec<f64>| -> Vec<f64> {
            (0..c)
                .map(|j| parts.iter().map(|p| f(p)[j]).sum())
                .collect()
        };
        NormGrads {
            dgamma: sum(|p| &p.dgamma),
            dbeta: sum(|p| &p.dbeta),
        }
    }

    /// As f32 gradients: `(dgamma, dbeta)`.
    pub fn to_f32(&self) -> (Vec<f32>, Vec<f32>) {
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect();
        (f(&self.dgamma), f(&self.dbeta))
    }
}

/// `xhat` of row `r`, channel `j` of `x` under `stats`, with `inv` its `1 / sigma`.
fn xhat(x: &[f32], c: usize, stats: &BatchStats, inv: &[f64], r: usize, j: usize) -> f64 {
    (f64::from(x[r * c + j]) - stats.mean[j]) * inv[j]
}

/// A shard's [`NormGrads`] from its input `x`, the statistics it was normalised with and
/// the output's gradient `dy`.
pub fn backward_sums(x: &[f32], dy: &[f32], stats: &BatchStats) -> Result<NormGrads> {
    let c = stats.mean.len();
    check("backward dy", dy.len(), x.len())?;
    let inv = stats.inv_std();
    let dbeta = channel_sums(dy, c, |_, row, acc| {
        acc.iter_mut()
            .zip(row)
            .for_each(|(a, &g)| *a += f64::from(g))
    });
    let dgamma = channel_sums(dy, c, |r, row, acc| {
        for (j, (a, &g)) in acc.iter_mut().zip(row).enumerate() {
            *a += f64::from(g) * xhat(x, c, stats, &inv, r, j);
        }
    });
    Ok(NormGrads { dgamma, dbeta })
}

/// The input's gradient of a shard, `gamma / sigma (dy - mean(dy) - xhat mean(dy xhat))`,
/// with the means over the `stats.rows` rows the statistics were taken over and `sums` the
/// sums over those same rows (the shard's own, or every shard's for synchronised batch norm).
pub fn backward_input(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    stats: &BatchStats,
    sums: &NormGrads,
) -> Vec<f32> {
    let c = gamma.len();
    let inv = stats.inv_std();
    let m = stats.rows as f64;
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(c).enumerate().for_each(|(r, dxr)| {
        for j in 0..c {
            let g = f64::from(dy[r * c + j]);
            let v = f64::from(gamma[j])
                * inv[j]
                * (g - sums.dbeta[j] / m - xhat(x, c, stats, &inv, r, j) * sums.dgamma[j] / m);
            dxr[j] = v as f32;
        }
    });
    dx
}

/// The train-mode backward: `(dx, dgamma, dbeta)` from the forward's input `x`, its
/// statistics and the output's gradient `dy`.
pub fn batch_norm_backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    stats: &BatchStats,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    check("backward input", x.len(), stats.rows * gamma.len())?;
    check("statistics", stats.mean.len(), gamma.len())?;
    let sums = backward_sums(x, dy, stats)?;
    let dx = backward_input(x, dy, gamma, stats, &sums);
    let (dgamma, dbeta) = sums.to_f32();
    Ok((dx, dgamma, dbeta))
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

    /// Shards normalised as one batch (their moments and backward sums added) give the
    /// whole batch's output, gradients and statistics, uneven shards included.
    #[test]
    fn synchronised_shards_match_the_whole_batch() {
        let (rows, c) = (11, 3);
        let x: Vec<f32> = values(rows * c, 5).iter().map(|v| 3.0 * v + 1.5).collect();
        let gamma = values(c, 6);
        let beta = values(c, 7);
        let dy = values(rows * c, 8);
        let (y, whole) = batch_norm_train(&x, c, &gamma, &beta).unwrap();
        let (dx, dgamma, dbeta) = batch_norm_backward(&x, &dy, &gamma, &whole).unwrap();
        let cuts = [0, 2, 3, 11];
        let part = |v: &[f32], k: usize| v[cuts[k] * c..cuts[k + 1] * c].to_vec();
        let moments: Vec<Moments> = (0..3).map(|k| Moments::of(&part(&x, k), c)).collect();
        let stats = Moments::stats(&moments);
        assert_eq!(stats.rows, rows);
        for j in 0..c {
            assert!((stats.mean[j] - whole.mean[j]).abs() < 1e-12);
            assert!((stats.var[j] - whole.var[j]).abs() < 1e-12);
        }
        let sums: Vec<NormGrads> = (0..3)
            .map(|k| backward_sums(&part(&x, k), &part(&dy, k), &stats).unwrap())
            .collect();
        let total = NormGrads::total(&sums);
        let (tg, tb) = total.to_f32();
        for j in 0..c {
            assert!((tg[j] - dgamma[j]).abs() < 1e-6 && (tb[j] - dbeta[j]).abs() < 1e-6);
        }
        for k in 0..3 {
            let yk = batch_norm_apply(&part(&x, k), c, &gamma, &beta, &stats).unwrap();
            let dxk = backward_input(&part(&x, k), &part(&dy, k), &gamma, &stats, &total);
            for (a, b) in yk
                .iter()
                .zip(part(&y, k))
                .chain(dxk.iter().zip(part(&dx, k)))
            {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
        let e = batch_norm_apply(&x, c, &gamma, &beta, &Moments::stats(&[])).unwrap_err();
        assert!(e.to_string().contains("statistics"), "{e}");
    }
}
