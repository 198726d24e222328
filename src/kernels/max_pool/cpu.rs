//! The CPU reference of `max_pool` (`kernels/max_pool.cu`): PyTorch's `MaxPool2d` over NHWC
//! tensors, forward with the argmax of every window and backward from it. Padding never
//! wins; a larger value or a NaN replaces the running maximum, scanning rows then columns,
//! so the first maximum wins a tie and NaN propagates, as in PyTorch.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::pool::Pool2d;

fn check_len(pool: &Pool2d, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("max_pool {what}"),
            format!("expected {want} values for {pool}, found {got}"),
        ))
    }
}

/// The pooled output (NHWC) and each output's argmax as `iy * width + ix` within its image
/// plane (PyTorch's `return_indices`).
pub fn max_pool(pool: &Pool2d, x: &[f32]) -> Result<(Vec<f32>, Vec<i32>)> {
    pool.check("max_pool")?;
    check_len(pool, "input", x.len(), pool.input_len())?;
    let (h, w, c) = (pool.height, pool.width, pool.channels);
    let [oh, ow] = pool.out_size();
    let mut y = vec![0.0f32; pool.output_len()];
    let mut idx = vec![0i32; pool.output_len()];
    y.par_chunks_mut(c)
        .zip(idx.par_chunks_mut(c))
        .enumerate()
        .for_each(|(o, (yo, io))| {
            let (b, oy, ox) = (o / (oh * ow), o / ow % oh, o % ow);
            let (ys, ye) = pool.window(oy, h);
            let (xs, xe) = pool.window(ox, w);
            for ch in 0..c {
                let (mut best, mut at) = (f32::NEG_INFINITY, ys * w + xs);
                for iy in ys..ye {
                    for ix in xs..xe {
                        let v = x[((b * h + iy) * w + ix) * c + ch];
                        if v > best || v.is_nan() {
                            best = v;
                            at = iy * w + ix;
                        }
                    }
                }
                // A window of -inf only keeps its first position's value.
                yo[ch] = x[(b * h * w + at) * c + ch];
                io[ch] = at as i32;
            }
        });
    Ok((y, idx))
}

/// The input's gradient (NHWC): each output's gradient `dy` goes to its argmax `idx`, summed
/// in f64 where windows overlap.
pub fn max_pool_backward(pool: &Pool2d, idx: &[i32], dy: &[f32]) -> Result<Vec<f32>> {
    pool.check("max_pool backward")?;
    check_len(pool, "backward indices", idx.len(), pool.output_len())?;
    check_len(pool, "backward dy", dy.len(), pool.output_len())?;
    let (h, w, c) = (pool.height, pool.width, pool.channels);
    let plane = h * w;
    let per_image = pool.output_len() / pool.batch;
    let mut dx = vec![0.0f32; pool.input_len()];
    dx.par_chunks_mut(plane * c)
        .enumerate()
        .try_for_each(|(b, dxb)| {
            let mut acc = vec![0.0f64; plane * c];
            let range = b * per_image..(b + 1) * per_image;
            for (o, (&at, &g)) in idx[range.clone()].iter().zip(&dy[range]).enumerate() {
                let at = usize::try_from(at)
                    .ok()
                    .filter(|&a| a < plane)
                    .ok_or_else(|| {
                        Error::invalid(
                            "max_pool backward indices",
                            format!("index {at} is outside the {h}x{w} plane"),
                        )
                    })?;
                acc[at * c + o % c] += f64::from(g);
            }
            for (d, a) in dxb.iter_mut().zip(&acc) {
                *d = *a as f32;
            }
            Ok(())
        })?;
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, c: usize, h: usize, w: usize, k: usize, s: usize, p: usize) -> Pool2d {
        Pool2d {
            batch: n,
            channels: c,
            height: h,
            width: w,
            kernel: k,
            stride: s,
            pad: p,
        }
    }

    #[test]
    fn padding_never_wins_and_the_first_maximum_does() {
        // One 3x3 channel of negative values, kernel 3, stride 2, padding 1: zero padding
        // would win every window.
        let p = pool(1, 1, 3, 3, 3, 2, 1);
        let x = [-1.0, -1.0, -3.0, -2.0, -3.0, -4.0, -6.0, -7.0, -8.0];
        let (y, idx) = max_pool(&p, &x).unwrap();
        assert_eq!(y, vec![-1.0, -1.0, -2.0, -3.0]);
        // Window (0,0) covers rows 0-1, columns 0-1: -1 at 0 and at 1; the first wins.
        assert_eq!(idx, vec![0, 1, 3, 4]);
        let dx = max_pool_backward(&p, &idx, &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(dx, vec![1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
        let (y, _) = max_pool(&p, &[f32::NAN, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap();
        assert!(y[0].is_nan() && y[1] == 5.0);
    }

    #[test]
    fn matches_the_definition_and_its_gradient_by_finite_differences() {
        // (batch, channels, h, w, kernel, stride, pad): AlexNet's k3 s2 p0, ResNet's k3 s2 p1,
        // and odd sizes with overlapping and disjoint windows.
        for (i, &(n, c, h, w, k, s, p)) in [
            (2, 3, 7, 9, 3, 2, 1),
            (1, 4, 8, 8, 3, 2, 0),
            (1, 2, 6, 5, 2, 2, 0),
            (2, 5, 5, 7, 3, 1, 1),
        ]
        .iter()
        .enumerate()
        {
            let g = pool(n, c, h, w, k, s, p);
            // Distinct values, so the maximum is unique and differentiable.
            let x: Vec<f32> = (0..g.input_len())
                .map(|j| ((j * 7919 + i * 31) % 1009) as f32 / 100.0 - 5.0)
                .collect();
            let (y, idx) = max_pool(&g, &x).unwrap();
            let [oh, ow] = g.out_size();
            for (o, &v) in y.iter().enumerate() {
                let ch = o % c;
                let (b, oy, ox) = (o / c / (oh * ow), o / c / ow % oh, o / c % ow);
                let mut want = f32::NEG_INFINITY;
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (oy * s + ky) as isize - p as isize;
                        let ix = (ox * s + kx) as isize - p as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            let v = x[((b * h + iy as usize) * w + ix as usize) * c + ch];
                            want = want.max(v);
                        }
                    }
                }
                assert_eq!(v, want, "case {i} output {o}");
            }
            // d/dx_j of sum(dy * y) by central differences against the backward pass.
            let dy: Vec<f32> = (0..y.len()).map(|j| (j % 5) as f32 - 2.0).collect();
            let dx = max_pool_backward(&g, &idx, &dy).unwrap();
            let loss = |x: &[f32]| -> f64 {
                let (y, _) = max_pool(&g, x).unwrap();
                y.iter().zip(&dy).map(|(&a, &b)| f64::from(a * b)).sum()
            };
            for j in (0..x.len()).step_by(3) {
                let (mut up, mut down) = (x.clone(), x.clone());
                up[j] += 1e-3;
                down[j] -= 1e-3;
                let fd = (loss(&up) - loss(&down)) / 2e-3;
                assert!(
                    (fd - f64::from(dx[j])).abs() < 1e-2,
                    "case {i} x{j}: {fd} vs {}",
                    dx[j]
                );
            }
        }
    }

    #[test]
    fn bad_shapes_and_operands_are_errors() {
        let e = max_pool(&pool(1, 1, 4, 4, 3, 2, 2), &[0.0; 16]).unwrap_err();
        assert!(e.to_string().contains("padding 2"), "{e}");
        let e = max_pool(&pool(1, 1, 2, 2, 5, 1, 0), &[0.0; 4]).unwrap_err();
        assert!(
            e.to_string().contains("larger than the padded input"),
            "{e}"
        );
        let e = max_pool(&pool(1, 2, 4, 4, 2, 2, 0), &[0.0; 31]).unwrap_err();
        assert!(e.to_string().contains("max_pool input"), "{e}");
        let e = max_pool_backward(&pool(1, 1, 2, 2, 2, 2, 0), &[4], &[1.0]).unwrap_err();
        assert!(e.to_string().contains("outside the 2x2 plane"), "{e}");
    }
}
