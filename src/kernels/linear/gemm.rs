//! The CPU references' dense products, with f64 accumulation: the linear layers' `x W^T`
//! (the linear op's CPU reference, [`super::cpu`]) and window attention's score and value
//! products (`crate::kernels::window_attention::cpu`).
//!
//! - [`nt_rows`]: `out[i][j] = sum_k a[i][k] * b[j][k]` (`b` row-major over `k`: the
//!   weights of a linear layer, `(out, in)`);
//! - [`nn_rows`]: `out[i][j] = sum_k a[i][k] * b[k][j]` (attention: scores against
//!   transposed keys, probabilities times values).
//!
//! `a` is f64 and `b` f32 (weights, keys, values); every product and sum is in f64. Both are
//! single-threaded over a block of rows: the callers split the rows across rayon threads
//! ([`ROWS`] a task). The kernel is chosen at run time ([`simd_level`]): AVX-512F (8 f64
//! lanes, 4x4 register tiles of dot products for NT, 4 rows x 32 columns for NN), else
//! AVX2+FMA (4 lanes), else a portable loop. They differ only in summation order, far below
//! f32 resolution (`ATTNRT_CPU_SIMD` picks a path; `tests/infer_cli.rs` runs each).

/// Rows of `a` per task.
pub const ROWS: usize = 16;

/// `out = a b^T` for `rows` rows: `a` is `(rows, k)` f64, `b` is `(m, k)` f32, `out` is
/// `(rows, m)` f64, overwritten.
pub fn nt_rows(a: &[f64], rows: usize, b: &[f32], m: usize, k: usize, out: &mut [f64]) {
    assert!(a.len() >= rows * k && b.len() >= m * k && out.len() >= rows * m);
    match simd_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected at run time; slices are sized above.
        Simd::Avx512 => unsafe { avx512::block(a, rows, b, m, k, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected at run time; slices are sized above.
        Simd::Avx2 => unsafe { avx2::block(a, rows, b, m, k, out) },
        _ => portable_block(a, rows, b, m, k, out),
    }
}

/// `out = a b` for `rows` rows: `a` is `(rows, k)` f64, `b` is `(k, m)` f32, `out` is
/// `(rows, m)` f64, overwritten. Suited to short `k` and to products whose right operand is
/// naturally row-major over `k` (attention scores against transposed keys, and
/// probabilities times values).
pub fn nn_rows(a: &[f64], rows: usize, b: &[f32], m: usize, k: usize, out: &mut [f64]) {
    let simd = simd_level();
    assert!(a.len() >= rows * k && b.len() >= m * k && out.len() >= rows * m);
    // Columns handled by the vector kernel; the rest (m % 8) by the portable loop.
    let mv = match simd {
        Simd::Portable => 0,
        _ => m / 8 * 8,
    };
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected; bounds checked above.
        Simd::Avx512 => unsafe { avx512::nn_block(a, rows, b, m, mv, k, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected; bounds checked above.
        Simd::Avx2 => unsafe { avx2::nn_block(a, rows, b, m, mv, k, out) },
        _ => {}
    }
    if mv < m {
        for r in 0..rows {
            let o = &mut out[r * m..(r + 1) * m];
            o[mv..].fill(0.0);
            for kk in 0..k {
                let x = a[r * k + kk];
                let brow = &b[kk * m..(kk + 1) * m];
                for j in mv..m {
                    o[j] += x * brow[j] as f64;
                }
            }
        }
    }
}

/// Dot product of f64 `a` and f32 `b`, accumulated in f64 (portable).
fn dot(a: &[f64], b: &[f32]) -> f64 {
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

/// The instruction set the kernels use, detected at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    Portable,
    Avx2,
    Avx512,
}

/// The best kernel this CPU supports; `ATTNRT_CPU_SIMD=portable|avx2` caps it (for
/// testing the other paths).
pub fn simd_level() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = std::env::var("ATTNRT_CPU_SIMD").unwrap_or_default();
        detect(&cap)
    })
}

fn detect(cap: &str) -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let avx512 = avx2 && std::is_x86_feature_detected!("avx512f");
        match cap {
            "portable" => Simd::Portable,
            "avx2" if avx2 => Simd::Avx2,
            _ if avx512 => Simd::Avx512,
            _ if avx2 => Simd::Avx2,
            _ => Simd::Portable,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = cap;
        Simd::Portable
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `out[r][j] = a[r] . b[j]` for the `rows` rows of `a` (any number).
    ///
    /// Blocked for the caches: `k` is cut into chunks of `KC` (a chunk of the `a` rows
    /// stays in L1), and each pair of `b` rows is reused by every 4-row tile of `a`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` is `(rows, k)`, `b` is `(m, k)`, `out` is
    /// `(rows, m)`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block(a: &[f64], rows: usize, b: &[f32], m: usize, k: usize, out: &mut [f64]) {
        const KC: usize = 256;
        assert!(a.len() >= rows * k && b.len() >= m * k && out.len() >= rows * m);
        out[..rows * m].fill(0.0);
        let ap = a.as_ptr();
        let bp = b.as_ptr();
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            let mut j = 0;
            while j < m {
                let cols = if j + 2 <= m { 2 } else { 1 };
                let mut r = 0;
                while r < rows {
                    let tr = if r + 4 <= rows { 4 } else { 1 };
                    // SAFETY: rows r..r+tr of `a`, rows j..j+cols of `b`, and columns
                    // k0..k0+kc are in bounds (checked above).
                    unsafe {
                        let arow = |i: usize| ap.add((r + i) * k + k0);
                        let brow = |i: usize| bp.add((j + i) * k + k0);
                        match (tr, cols) {
                            (4, 2) => {
                                let t = tile::<4, 2>(
                                    [arow(0), arow(1), arow(2), arow(3)],
                                    [brow(0), brow(1)],
                                    kc,
                                );
                                for (i, row) in t.iter().enumerate() {
                                    out[(r + i) * m + j] += row[0];
                                    out[(r + i) * m + j + 1] += row[1];
                                }
                            }
                            (4, _) => {
                                let t = tile::<4, 1>(
                                    [arow(0), arow(1), arow(2), arow(3)],
                                    [brow(0)],
                                    kc,
                                );
                                for (i, row) in t.iter().enumerate() {
                                    out[(r + i) * m + j] += row[0];
                                }
                            }
                            (_, 2) => {
                                let t = tile::<1, 2>([arow(0)], [brow(0), brow(1)], kc);
                                out[r * m + j] += t[0][0];
                                out[r * m + j + 1] += t[0][1];
                            }
                            _ => {
                                let t = tile::<1, 1>([arow(0)], [brow(0)], kc);
                                out[r * m + j] += t[0][0];
                            }
                        }
                    }
                    r += tr;
                }
                j += cols;
            }
            k0 += kc;
        }
    }

    /// `out[r][0..mv] = sum_k a[r][k] * b[k][0..mv]` (`mv` a multiple of 8): tiles of
    /// 4 rows x 8 columns (2 vectors of 4 f64), `k` in chunks.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` is `(rows, k)`, `b` is `(k, m)`, `out`
    /// is `(rows, m)`, `mv <= m`, `mv % 8 == 0`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn nn_block(
        a: &[f64],
        rows: usize,
        b: &[f32],
        m: usize,
        mv: usize,
        k: usize,
        out: &mut [f64],
    ) {
        assert!(a.len() >= rows * k && b.len() >= m * k && out.len() >= rows * m);
        assert!(mv <= m && mv.is_multiple_of(8));
        let (ap, bp, op) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        // Column strips outermost: a strip of b (k x 8) stays in cache for all rows.
        let mut j = 0;
        while j < mv {
            let mut r = 0;
            while r < rows {
                let tr = if r + 4 <= rows { 4 } else { 1 };
                // SAFETY: rows r..r+tr, columns j..j+8 <= mv <= m, k rows of b.
                unsafe {
                    if tr == 4 {
                        nn_tile::<4>(ap.add(r * k), k, bp.add(j), m, op.add(r * m + j), m);
                    } else {
                        nn_tile::<1>(ap.add(r * k), k, bp.add(j), m, op.add(r * m + j), m);
                    }
                }
                r += tr;
            }
            j += 8;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn nn_tile<const R: usize>(
        a: *const f64,
        k: usize,
        b: *const f32,
        ldb: usize,
        out: *mut f64,
        ldo: usize,
    ) {
        let mut acc = [[_mm256_setzero_pd(); 2]; R];
        for kk in 0..k {
            // SAFETY: kk < k rows of b, 8 columns from b.
            let (w0, w1) = unsafe {
                (
                    _mm256_cvtps_pd(_mm_loadu_ps(b.add(kk * ldb))),
                    _mm256_cvtps_pd(_mm_loadu_ps(b.add(kk * ldb + 4))),
                )
            };
            for (r, acc_r) in acc.iter_mut().enumerate() {
                // SAFETY: row r < R, kk < k.
                let x = _mm256_set1_pd(unsafe { *a.add(r * k + kk) });
                acc_r[0] = _mm256_fmadd_pd(x, w0, acc_r[0]);
                acc_r[1] = _mm256_fmadd_pd(x, w1, acc_r[1]);
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            // SAFETY: 8 outputs of row r.
            unsafe {
                _mm256_storeu_pd(out.add(r * ldo), acc_r[0]);
                _mm256_storeu_pd(out.add(r * ldo + 4), acc_r[1]);
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// As `avx2::block`, with 8 f64 lanes and 4 x 4 register tiles (4 x 4, 8 x 3, 4 x 6
    /// and 8 x 2 measured within a few percent of each other here).
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `a` is `(rows, k)`, `b` is `(m, k)`, `out` is
    /// `(rows, m)`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block(a: &[f64], rows: usize, b: &[f32], m: usize, k: usize, out: &mut [f64]) {
        // SAFETY: forwarded contract.
        unsafe { block_t::<4, 4>(a, rows, b, m, k, out) }
    }

    /// [`block`] with `TR x TC` register tiles.
    ///
    /// # Safety
    /// As [`block`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block_t<const TR: usize, const TC: usize>(
        a: &[f64],
        rows: usize,
        b: &[f32],
        m: usize,
        k: usize,
        out: &mut [f64],
    ) {
        const KC: usize = 256;
        assert!(a.len() >= rows * k && b.len() >= m * k && out.len() >= rows * m);
        out[..rows * m].fill(0.0);
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            let mut j = 0;
            while j < m {
                let cols = if j + TC <= m { TC } else { 1 };
                let mut r = 0;
                while r < rows {
                    let tr = if r + TR <= rows { TR } else { 1 };
                    let at = Tile {
                        a,
                        b,
                        k,
                        k0,
                        kc,
                        r,
                        j,
                        m,
                    };
                    // SAFETY: rows r..r+tr of `a`, rows j..j+cols of `b`, and columns
                    // k0..k0+kc are in bounds (checked above).
                    unsafe {
                        match (tr == TR, cols == TC) {
                            (true, true) => at.add::<TR, TC>(out),
                            (true, false) => at.add::<TR, 1>(out),
                            (false, true) => at.add::<1, TC>(out),
                            (false, false) => at.add::<1, 1>(out),
                        }
                    }
                    r += tr;
                }
                j += cols;
            }
            k0 += kc;
        }
    }

    /// Where one register tile of [`block`] lies.
    struct Tile<'a> {
        a: &'a [f64],
        b: &'a [f32],
        k: usize,
        k0: usize,
        kc: usize,
        r: usize,
        j: usize,
        m: usize,
    }

    impl Tile<'_> {
        /// `out[r+i][j+c] += a[r+i][k0..k0+kc] . b[j+c][k0..k0+kc]`.
        ///
        /// # Safety
        /// AVX-512F; rows `r..r+R` of `a`, `j..j+C` of `b` and columns `k0..k0+kc` in
        /// bounds.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn add<const R: usize, const C: usize>(&self, out: &mut [f64]) {
            let (ap, bp) = (self.a.as_ptr(), self.b.as_ptr());
            // SAFETY: in bounds by the caller's contract.
            let ar: [*const f64; R] =
                std::array::from_fn(|i| unsafe { ap.add((self.r + i) * self.k + self.k0) });
            // SAFETY: as above.
            let br: [*const f32; C] =
                std::array::from_fn(|c| unsafe { bp.add((self.j + c) * self.k + self.k0) });
            // SAFETY: as above.
            let t = unsafe { tile::<R, C>(ar, br, self.kc) };
            for (i, row) in t.iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    out[(self.r + i) * self.m + self.j + c] += v;
                }
            }
        }
    }

    /// As `avx2::nn_block`, with tiles of 4 rows x 32 columns (4 vectors of 8 f64) and
    /// 4 x 8 at the edge.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `a` is `(rows, k)`, `b` is `(k, m)`, `out` is
    /// `(rows, m)`, `mv <= m`, `mv % 8 == 0`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn nn_block(
        a: &[f64],
        rows: usize,
        b: &[f32],
        m: usize,
        mv: usize,
        k: usize,
        out: &mut [f64],
    ) {
        assert!(a.len() >= rows * k && b.len() >= m * k && out.len() >= rows * m);
        assert!(mv <= m && mv.is_multiple_of(8));
        let (ap, bp, op) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        // Column strips outermost: a strip of b (k x 32) stays in cache for all rows.
        let mut j = 0;
        while j < mv {
            let cols = if j + 32 <= mv { 4 } else { 1 };
            let mut r = 0;
            while r < rows {
                let tr = if r + 4 <= rows { 4 } else { 1 };
                // SAFETY: rows r..r+tr, columns j..j+8*cols <= mv <= m, k rows of b.
                unsafe {
                    let (a0, b0, o0) = (ap.add(r * k), bp.add(j), op.add(r * m + j));
                    match (tr, cols) {
                        (4, 4) => nn_tile::<4, 4>(a0, k, b0, m, o0, m),
                        (4, _) => nn_tile::<4, 1>(a0, k, b0, m, o0, m),
                        (_, 4) => nn_tile::<1, 4>(a0, k, b0, m, o0, m),
                        _ => nn_tile::<1, 1>(a0, k, b0, m, o0, m),
                    }
                }
                r += tr;
            }
            j += 8 * cols;
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn nn_tile<const R: usize, const C: usize>(
        a: *const f64,
        k: usize,
        b: *const f32,
        ldb: usize,
        out: *mut f64,
        ldo: usize,
    ) {
        let mut acc = [[_mm512_setzero_pd(); C]; R];
        for kk in 0..k {
            let mut w = [_mm512_setzero_pd(); C];
            for (c, wc) in w.iter_mut().enumerate() {
                // SAFETY: kk < k rows of b, 8 columns at 8*c.
                *wc = _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(b.add(kk * ldb + 8 * c)) });
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                // SAFETY: row r < R, kk < k.
                let x = _mm512_set1_pd(unsafe { *a.add(r * k + kk) });
                for c in 0..C {
                    acc_r[c] = _mm512_fmadd_pd(x, w[c], acc_r[c]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (c, v) in acc_r.iter().enumerate() {
                // SAFETY: 8 outputs of row r at 8*c.
                unsafe { _mm512_storeu_pd(out.add(r * ldo + 8 * c), *v) };
            }
        }
    }

    /// An `R x C` tile of dot products of length `k`, 8 f64 lanes per accumulator.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const R: usize, const C: usize>(
        a: [*const f64; R],
        b: [*const f32; C],
        k: usize,
    ) -> [[f64; C]; R] {
        let k8 = k & !7;
        let mut acc = [[_mm512_setzero_pd(); C]; R];
        let mut kk = 0;
        while kk < k8 {
            let mut w = [_mm512_setzero_pd(); C];
            for c in 0..C {
                // SAFETY: kk + 8 <= k.
                w[c] = _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(b[c].add(kk)) });
            }
            for r in 0..R {
                // SAFETY: kk + 8 <= k.
                let x = unsafe { _mm512_loadu_pd(a[r].add(kk)) };
                for c in 0..C {
                    acc[r][c] = _mm512_fmadd_pd(x, w[c], acc[r][c]);
                }
            }
            kk += 8;
        }
        let mut out = [[0.0f64; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut s = _mm512_reduce_add_pd(acc[r][c]);
                for t in k8..k {
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
        for &(n, m, k) in &[
            (1, 1, 1),
            (5, 3, 7),
            (9, 8, 33),
            (4, 2, 4),
            (13, 11, 70),
            (21, 9, 300),
            (17, 19, 520),
        ] {
            let a: Vec<f64> = (0..n * k)
                .map(|i| ((i * 7 % 13) as f64 - 6.0) / 3.0)
                .collect();
            let b: Vec<f32> = (0..m * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
                .collect();
            // b read as (m, k) for NT and as (k, m) for NN.
            let (mut nt, mut nn) = (vec![0.0; n * m], vec![0.0; n * m]);
            nt_rows(&a, n, &b, m, k, &mut nt);
            nn_rows(&a, n, &b, m, k, &mut nn);
            for i in 0..n {
                for j in 0..m {
                    let want: f64 = (0..k).map(|t| a[i * k + t] * b[j * k + t] as f64).sum();
                    let got = nt[i * m + j];
                    assert!((got - want).abs() < 1e-9, "nt {n}x{m}x{k} at {i},{j}");
                    let want: f64 = (0..k).map(|t| a[i * k + t] * b[t * m + j] as f64).sum();
                    let got = nn[i * m + j];
                    assert!((got - want).abs() < 1e-9, "nn {n}x{m}x{k} at {i},{j}");
                }
            }
        }
    }
}
