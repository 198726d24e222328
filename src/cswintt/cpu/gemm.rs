//! Dense products for the CPU reference, with f64 accumulation.
//!
//! [`gemm_nt`] computes `out[i][j] = sum_k a[i][k] * b[j][k]` with `a` in f64 and `b` in
//! f32 (weights, keys, values), accumulating in f64. Rows are split across rayon
//! threads. On x86-64 CPUs with AVX2 and FMA a register-blocked kernel (4 rows x 2
//! columns, 4 f64 lanes) is used, chosen at run time; elsewhere a portable loop. Both
//! accumulate in f64; they differ only in summation order (far below f32 resolution).

use rayon::prelude::*;

/// Rows of `a` per task (and per register tile).
const ROWS: usize = 4;

/// `out = a b^T`: `a` is `(n, k)` f64, `b` is `(m, k)` f32, the result `(n, m)` f64.
pub fn gemm_nt(a: &[f64], n: usize, b: &[f32], m: usize, k: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * k, "gemm_nt: a is not (n, k)");
    assert_eq!(b.len(), m * k, "gemm_nt: b is not (m, k)");
    let mut out = vec![0.0f64; n * m];
    if m == 0 || n == 0 {
        return out;
    }
    let simd = simd_available();
    out.par_chunks_mut(ROWS * m)
        .enumerate()
        .for_each(|(blk, out_rows)| {
            let r0 = blk * ROWS;
            let rows = out_rows.len() / m;
            let a_rows = &a[r0 * k..(r0 + rows) * k];
            if simd {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX2 and FMA were detected at run time; slices are sized above.
                unsafe {
                    avx2::block(a_rows, rows, b, m, k, out_rows)
                };
            } else {
                portable_block(a_rows, rows, b, m, k, out_rows);
            }
        });
    out
}

/// Dot product of f64 `a` and f32 `b`, accumulated in f64 (portable).
pub fn dot(a: &[f64], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let n4 = a.len() / 4 * 4;
    for i in (0..n4).step_by(4) {
        for l in 0..4 {
            acc[l] += a[i + l] * b[i + l] as f64;
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in n4..a.len() {
        s += a[i] * b[i] as f64;
    }
    s
}

fn portable_block(a: &[f64], rows: usize, b: &[f32], m: usize, k: usize, out: &mut [f64]) {
    for r in 0..rows {
        let ar = &a[r * k..(r + 1) * k];
        for j in 0..m {
            out[r * m + j] = dot(ar, &b[j * k..(j + 1) * k]);
        }
    }
}

fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `out[r][j] = a[r] . b[j]` for `rows <= 4` rows of `a`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` is `(rows, k)`, `b` is `(m, k)`, `out` is
    /// `(rows, m)`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block(a: &[f64], rows: usize, b: &[f32], m: usize, k: usize, out: &mut [f64]) {
        assert!(a.len() >= rows * k && b.len() >= m * k && out.len() >= rows * m);
        let ap = a.as_ptr();
        let bp = b.as_ptr();
        let mut j = 0;
        while j + 2 <= m {
            // SAFETY: rows < 4 index rows of `a`, columns j, j+1 < m rows of `b`.
            unsafe {
                let bj = [bp.add(j * k), bp.add((j + 1) * k)];
                if rows == 4 {
                    let t = tile::<4, 2>([ap, ap.add(k), ap.add(2 * k), ap.add(3 * k)], bj, k);
                    for (r, row) in t.iter().enumerate() {
                        out[r * m + j] = row[0];
                        out[r * m + j + 1] = row[1];
                    }
                } else {
                    for r in 0..rows {
                        let t = tile::<1, 2>([ap.add(r * k)], bj, k);
                        out[r * m + j] = t[0][0];
                        out[r * m + j + 1] = t[0][1];
                    }
                }
            }
            j += 2;
        }
        if j < m {
            for r in 0..rows {
                // SAFETY: as above, one column.
                let t = unsafe { tile::<1, 1>([ap.add(r * k)], [bp.add(j * k)], k) };
                out[r * m + j] = t[0][0];
            }
        }
    }

    /// An `R x C` tile of dot products of length `k`, 4 f64 lanes per accumulator.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const R: usize, const C: usize>(
        a: [*const f64; R],
        b: [*const f32; C],
        k: usize,
    ) -> [[f64; C]; R] {
        let k4 = k & !3;
        let mut acc = [[_mm256_setzero_pd(); C]; R];
        let mut kk = 0;
        while kk < k4 {
            let mut w = [_mm256_setzero_pd(); C];
            for c in 0..C {
                // SAFETY: kk + 4 <= k.
                w[c] = _mm256_cvtps_pd(unsafe { _mm_loadu_ps(b[c].add(kk)) });
            }
            for r in 0..R {
                // SAFETY: kk + 4 <= k.
                let x = unsafe { _mm256_loadu_pd(a[r].add(kk)) };
                for c in 0..C {
                    acc[r][c] = _mm256_fmadd_pd(x, w[c], acc[r][c]);
                }
            }
            kk += 4;
        }
        let mut out = [[0.0f64; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut lanes = [0.0f64; 4];
                // SAFETY: `lanes` holds 4 f64.
                unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), acc[r][c]) };
                let mut s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
                for t in k4..k {
                    // SAFETY: t < k.
                    s += unsafe { *a[r].add(t) * *b[c].add(t) as f64 };
                }
                out[r][c] = s;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive() {
        for &(n, m, k) in &[(1, 1, 1), (5, 3, 7), (9, 8, 33), (4, 2, 4), (13, 11, 70)] {
            let a: Vec<f64> = (0..n * k)
                .map(|i| ((i * 7 % 13) as f64 - 6.0) / 3.0)
                .collect();
            let b: Vec<f32> = (0..m * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
                .collect();
            let out = gemm_nt(&a, n, &b, m, k);
            for i in 0..n {
                for j in 0..m {
                    let want: f64 = (0..k).map(|t| a[i * k + t] * b[j * k + t] as f64).sum();
                    assert!(
                        (out[i * m + j] - want).abs() < 1e-9,
                        "{n}x{m}x{k} at {i},{j}"
                    );
                }
            }
        }
    }
}
