//! The CPU reference of `avg_pool` over NHWC tensors, f64 sums: fixed windows
//! ([`avg_pool`], PyTorch's `AvgPool2d` with `count_include_pad`: the divisor counts the
//! padding a window covers) and adaptive ones ([`adaptive_avg_pool`]: output cell `i` of `o`
//! averages input rows `[floor(i h / o), ceil((i + 1) h / o))`, as PyTorch's). Both are linear
//! maps, so one description of the windows ([`Windows`]) serves forward and backward.

use crate::error::{Error, Result};
use crate::kernels::pool::Pool2d;

/// Which input rectangle each output cell averages, and the divisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Windows {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Per output row: input rows `[start, end)`; likewise per output column.
    rows: Vec<(usize, usize)>,
    cols: Vec<(usize, usize)>,
    /// Per output row and column: the divisor's factor.
    row_div: Vec<usize>,
    col_div: Vec<usize>,
}

impl Windows {
    /// `AvgPool2d`'s windows.
    pub fn fixed(pool: &Pool2d) -> Result<Windows> {
        pool.check("avg_pool")?;
        let [oh, ow] = pool.out_size();
        let axis = |out: usize, size: usize| -> (Vec<(usize, usize)>, Vec<usize>) {
            (0..out)
                .map(|o| {
                    let start = (o * pool.stride) as isize - pool.pad as isize;
                    let end = (start + pool.kernel as isize).min((size + pool.pad) as isize);
                    (pool.window(o, size), (end - start) as usize)
                })
                .unzip()
        };
        let (rows, row_div) = axis(oh, pool.height);
        let (cols, col_div) = axis(ow, pool.width);
        Ok(Windows {
            batch: pool.batch,
            channels: pool.channels,
            height: pool.height,
            width: pool.width,
            rows,
            cols,
            row_div,
            col_div,
        })
    }

    /// `AdaptiveAvgPool2d((out_h, out_w))`'s windows over `[batch][height][width][channels]`.
    pub fn adaptive(
        [batch, height, width, channels]: [usize; 4],
        [out_h, out_w]: [usize; 2],
    ) -> Result<Windows> {
        if [batch, height, width, channels, out_h, out_w].contains(&0) {
            return Err(Error::invalid(
                "adaptive_avg_pool",
                format!(
                    "sizes must be positive: input {batch}x{height}x{width}x{channels}, output {out_h}x{out_w}"
                ),
            ));
        }
        let axis = |out: usize, size: usize| -> Vec<(usize, usize)> {
            (0..out)
                .map(|i| (i * size / out, ((i + 1) * size).div_ceil(out)))
                .collect()
        };
        let (rows, cols) = (axis(out_h, height), axis(out_w, width));
        Ok(Windows {
            batch,
            channels,
            height,
            width,
            row_div: rows.iter().map(|(a, b)| b - a).collect(),
            col_div: cols.iter().map(|(a, b)| b - a).collect(),
            rows,
            cols,
        })
    }

    pub fn out_size(&self) -> [usize; 2] {
        [self.rows.len(), self.cols.len()]
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.height * self.width * self.channels
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.rows.len() * self.cols.len() * self.channels
    }

    /// Calls `f(input_offset, output_offset, weight)` for every pair, offsets of the
    /// channel-0 element (the channels follow contiguously).
    fn for_each(&self, mut f: impl FnMut(usize, usize, f64)) {
        let [oh, ow] = self.out_size();
        let c = self.channels;
        for b in 0..self.batch {
            for (oy, &(ys, ye)) in self.rows.iter().enumerate() {
                for (ox, &(xs, xe)) in self.cols.iter().enumerate() {
                    let o = ((b * oh + oy) * ow + ox) * c;
                    let wgt = 1.0 / (self.row_div[oy] * self.col_div[ox]) as f64;
                    for iy in ys..ye {
                        for ix in xs..xe {
                            f(((b * self.height + iy) * self.width + ix) * c, o, wgt);
                        }
                    }
                }
            }
        }
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("avg_pool {what}"),
            format!("expected {want} values, found {got}"),
        ))
    }
}

/// The averages of every window of `x` (NHWC).
pub fn avg_pool(windows: &Windows, x: &[f32]) -> Result<Vec<f32>> {
    check_len("input", x.len(), windows.input_len())?;
    let c = windows.channels;
    let mut acc = vec![0.0f64; windows.output_len()];
    windows.for_each(|i, o, w| {
        for j in 0..c {
            acc[o + j] += w * f64::from(x[i + j]);
        }
    });
    Ok(acc.into_iter().map(|v| v as f32).collect())
}

/// The input's gradient: each output's gradient spread evenly over its window.
pub fn avg_pool_backward(windows: &Windows, dy: &[f32]) -> Result<Vec<f32>> {
    check_len("backward dy", dy.len(), windows.output_len())?;
    let c = windows.channels;
    let mut acc = vec![0.0f64; windows.input_len()];
    windows.for_each(|i, o, w| {
        for j in 0..c {
            acc[i + j] += w * f64::from(dy[o + j]);
        }
    });
    Ok(acc.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_windows_are_pytorchs() {
        // 5 -> 3: [0,2), [1,4), [3,5); 1 -> 6 repeats the one value.
        let w = Windows::adaptive([1, 5, 1, 1], [3, 1]).unwrap();
        let y = avg_pool(&w, &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(y, vec![1.5, 3.0, 4.5]);
        let w = Windows::adaptive([1, 1, 1, 2], [6, 6]).unwrap();
        let y = avg_pool(&w, &[7.0, -1.0]).unwrap();
        assert_eq!(y.len(), 72);
        assert!(y.chunks(2).all(|p| p == [7.0, -1.0]));
        assert!(Windows::adaptive([1, 0, 1, 1], [1, 1]).is_err());
    }

    #[test]
    fn fixed_windows_count_the_padding_and_backward_is_the_adjoint() {
        let pool = |k, s, p| Pool2d {
            batch: 2,
            channels: 3,
            height: 5,
            width: 4,
            kernel: k,
            stride: s,
            pad: p,
        };
        // One channel of ones, k3 s2 p1: the corner window sees 4 ones over 9 cells.
        let w = Windows::fixed(&Pool2d {
            batch: 1,
            channels: 1,
            ..pool(3, 2, 1)
        })
        .unwrap();
        let y = avg_pool(&w, &[1.0; 20]).unwrap();
        assert!((y[0] - 4.0 / 9.0).abs() < 1e-7, "{}", y[0]);
        for (i, w) in [
            Windows::fixed(&pool(2, 2, 0)).unwrap(),
            Windows::fixed(&pool(3, 2, 1)).unwrap(),
            Windows::adaptive([2, 5, 4, 3], [2, 3]).unwrap(),
        ]
        .iter()
        .enumerate()
        {
            let x: Vec<f32> = (0..w.input_len()).map(|j| (j % 7) as f32 - 3.0).collect();
            let dy: Vec<f32> = (0..w.output_len()).map(|j| (j % 5) as f32 - 2.0).collect();
            let y = avg_pool(w, &x).unwrap();
            let dx = avg_pool_backward(w, &dy).unwrap();
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter()
                    .zip(b)
                    .map(|(&p, &q)| f64::from(p) * f64::from(q))
                    .sum()
            };
            let (l, r) = (dot(&y, &dy), dot(&x, &dx));
            assert!((l - r).abs() < 1e-4, "case {i}: {l} vs {r}");
        }
    }
}
