//! `kernels/linear.cu` against `linear::cpu`: every epilogue in f32, and in tf32 and bf16
//! (tensor cores; tests named `*_tf32_*`, `*_bf16_*`), held to 2e-3 and 1e-2.

use attnrt::base::Precision;
use attnrt::gpu::{Gpu, download, testing::gpu_or_skip};
use attnrt::kernels::layer_norm::cpu::normalize;
use attnrt::kernels::layer_norm::{Extra, LayerNormKernels, NormInput};
use attnrt::kernels::linear::cpu::linear_f64;
use attnrt::kernels::linear::{Epilogue, LinearKernels, ROWS, RowNorm};
use rand::seq::SliceRandom;

use crate::{TOL, assert_within, down, poisoned, random, rng, up};

/// What each linear-kernel test holds a precision's GEMMs to against the f64 reference.
fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => TOL,
        Precision::Tf32 => 2e-3,
        Precision::Bf16 => 1e-2,
    }
}

#[test]
fn linear_epilogues_match_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("linear_epilogues_match_the_cpu_reference") else {
        return;
    };
    // n, m: not multiples of the 64x64 tile. k = 45: scalar loads, a partial 16-wide k
    // step; k = 48: float4 loads.
    for k in [45, 48] {
        check_epilogues(&gpu, Precision::F32, 131, 97, k);
    }
}

/// The tensor-core variants on odd sizes: partial tiles in n and m, a partial k step (k not
/// a multiple of 8 or 16), float4 loads, and a long k (several split chunks of many steps).
fn check_tensor_cores(test: &str, precision: Precision) {
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    for (n, m, k) in [(131, 97, 45), (131, 97, 48), (70, 200, 1030), (5, 33, 256)] {
        check_epilogues(&gpu, precision, n, m, k);
    }
}

#[test]
fn linear_epilogues_tf32_match_the_cpu_reference() {
    check_tensor_cores(
        "linear_epilogues_tf32_match_the_cpu_reference",
        Precision::Tf32,
    );
}

#[test]
fn linear_epilogues_bf16_match_the_cpu_reference() {
    check_tensor_cores(
        "linear_epilogues_bf16_match_the_cpu_reference",
        Precision::Bf16,
    );
}

fn check_epilogues(gpu: &Gpu, precision: Precision, n: usize, m: usize, k: usize) {
    let s = gpu.stream();
    let kernels = LinearKernels::load_precision(gpu, precision).unwrap();
    let tol = tolerance(precision);
    let label = format!("{precision} ({n}, {m}, {k})");
    let mut rng = rng(5 + k as u64);
    let (x, w, bias) = (
        random(&mut rng, n * k),
        random(&mut rng, m * k),
        random(&mut rng, m),
    );
    let (dx, dw, db) = (up(gpu, &x), up(gpu, &w), up(gpu, &bias));
    let base = linear_f64(&x, &w, Some(&bias), (n, m, k));
    let cases: Vec<(&str, Epilogue, Vec<f32>)> = vec![
        (
            "bias, scaled",
            Epilogue::Bias { scale: 0.375 },
            base.iter().map(|v| (v * 0.375) as f32).collect(),
        ),
        (
            "bias + relu",
            Epilogue::BiasRelu,
            base.iter().map(|v| v.max(0.0) as f32).collect(),
        ),
    ];
    for (what, epilogue, want) in cases {
        let mut out = poisoned(gpu, n * m);
        kernels
            .run(s, &dx, &dw, &db, (n, m, k), &mut out, epilogue)
            .unwrap();
        assert_within(&format!("{what}, {label}"), &down(gpu, &out), &want, tol);
    }
    // Split over k in 3 chunks of whole 32-wide steps (32, 13 and an empty one for k = 45:
    // its partial product is zero): the partial products sum to x W^T.
    let splits = 3;
    let mut out = poisoned(gpu, splits * n * m);
    let epilogue = Epilogue::SplitK { splits };
    kernels
        .run(s, &dx, &dw, &db, (n, m, k), &mut out, epilogue)
        .unwrap();
    let parts = down(gpu, &out);
    let got: Vec<f32> = (0..n * m)
        .map(|e| (0..splits).map(|z| parts[z * n * m + e]).sum())
        .collect();
    let want: Vec<f32> = linear_f64(&x, &w, None, (n, m, k))
        .iter()
        .map(|&v| v as f32)
        .collect();
    assert_within(&format!("split k, {label}"), &got, &want, tol);
}

/// Products of at most `ROWS` rows (the decoder's one query per batch item) run in the
/// few-rows kernels: every epilogue and precision, k odd (scalar loads), a multiple of 4
/// (float4 loads) and long (several chunks per lane), m not a multiple of a block's 8 columns.
#[test]
fn linear_few_rows_match_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("linear_few_rows_match_the_cpu_reference") else {
        return;
    };
    for precision in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        for (n, m, k) in [(1, 97, 45), (2, 256, 256), (5, 37, 2048), (ROWS, 130, 48)] {
            check_epilogues(&gpu, precision, n, m, k);
        }
    }
}

/// The few-rows split-k GEMM with its LayerNorm fused (`Epilogue::SplitKNorm`, the decoder's
/// `linear_add_norm`): the y and y + add of the split-k GEMM followed by `add_layer_norm_f32`
/// (one row code, one summation order: equal to 1e-6), and the f64 reference's; launched twice
/// on one counter, which it leaves zero; more than ROWS rows refused. m = 256 with k = 2048
/// in 16 splits is the decoder's FFN2; m = 97 leaves warps without a column.
#[test]
fn linear_split_k_norm_matches_split_k_then_add_layer_norm() {
    let Some(gpu) = gpu_or_skip("linear_split_k_norm_matches_split_k_then_add_layer_norm") else {
        return;
    };
    for precision in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        for (n, m, k, splits) in [(1, 256, 2048, 16), (3, 97, 45, 2), (ROWS, 256, 256, 2)] {
            check_split_k_norm(&gpu, precision, (n, m, k), splits);
        }
    }
}

fn check_split_k_norm(
    gpu: &Gpu,
    precision: Precision,
    (n, m, k): (usize, usize, usize),
    splits: usize,
) {
    const EPS: f32 = 1e-5;
    let s = gpu.stream();
    let kernels = LinearKernels::load_precision(gpu, precision).unwrap();
    let norms = LayerNormKernels::load(gpu).unwrap();
    let label = format!("{precision} ({n}, {m}, {k}) in {splits} splits");
    let mut rng = rng(11 + k as u64);
    let (x, w, bias) = (
        random(&mut rng, n * k),
        random(&mut rng, m * k),
        random(&mut rng, m),
    );
    let (residual, add) = (random(&mut rng, n * m), random(&mut rng, n * m));
    let (gamma, beta) = (random(&mut rng, m), random(&mut rng, m));
    let (dx, dw, db) = (up(gpu, &x), up(gpu, &w), up(gpu, &bias));
    let (dres, dadd) = (up(gpu, &residual), up(gpu, &add));
    let (dgamma, dbeta) = (up(gpu, &gamma), up(gpu, &beta));

    // The two launches it replaces.
    let mut parts = poisoned(gpu, splits * n * m);
    let split = Epilogue::SplitK { splits };
    kernels
        .run(s, &dx, &dw, &db, (n, m, k), &mut parts, split)
        .unwrap();
    let (mut y0, mut plus0) = (poisoned(gpu, n * m), poisoned(gpu, n * m));
    let input = NormInput {
        parts: parts.as_view(),
        n_parts: splits,
        bias: Some(db.as_view()),
        residual: Some(dres.as_view()),
    };
    let extra = Extra::Plus((dadd.as_view(), plus0.as_view_mut()));
    norms
        .forward(s, input, &dgamma, &dbeta, EPS, &mut y0, extra)
        .unwrap();
    let (y0, plus0) = (down(gpu, &y0), down(gpu, &plus0));

    let mut arrived = s.alloc_zeros::<u32>(1).unwrap();
    for launch in ["first", "second"] {
        let mut out = poisoned(gpu, splits * n * m);
        let (mut y, mut plus) = (poisoned(gpu, n * m), poisoned(gpu, n * m));
        let norm = Box::new(RowNorm {
            residual: dres.as_view(),
            gamma: dgamma.as_view(),
            beta: dbeta.as_view(),
            eps: EPS,
            y: y.as_view_mut(),
            plus: Some((dadd.as_view(), plus.as_view_mut())),
            arrived: arrived.as_view_mut(),
        });
        let fused = Epilogue::SplitKNorm { splits, norm };
        kernels
            .run(s, &dx, &dw, &db, (n, m, k), &mut out, fused)
            .unwrap();
        let what = format!("{label}, {launch} launch");
        assert_within(&format!("y, {what}"), &down(gpu, &y), &y0, 1e-6);
        assert_within(&format!("y + add, {what}"), &down(gpu, &plus), &plus0, 1e-6);
        assert_eq!(
            download(s, &arrived).unwrap(),
            vec![0u32],
            "{what}: the counter"
        );
    }

    let mut v = linear_f64(&x, &w, Some(&bias), (n, m, k));
    for (v, r) in v.iter_mut().zip(&residual) {
        *v += *r as f64;
    }
    let want = normalize(&v, &gamma, &beta, EPS as f64).y;
    assert_within(
        &format!("y, {label}, f64"),
        &y0,
        &want,
        tolerance(precision),
    );

    // Tiles (more than ROWS rows) have no fused LayerNorm: refused, naming the kernel.
    let rows = ROWS + 1;
    let (dx, dres) = (
        up(gpu, &random(&mut rng, rows * k)),
        up(gpu, &random(&mut rng, rows * m)),
    );
    let (mut out, mut y) = (poisoned(gpu, splits * rows * m), poisoned(gpu, rows * m));
    let norm = Box::new(RowNorm {
        residual: dres.as_view(),
        gamma: dgamma.as_view(),
        beta: dbeta.as_view(),
        eps: EPS,
        y: y.as_view_mut(),
        plus: None,
        arrived: arrived.as_view_mut(),
    });
    let fused = Epilogue::SplitKNorm { splits, norm };
    let err = kernels
        .run(s, &dx, &dw, &db, (rows, m, k), &mut out, fused)
        .unwrap_err();
    assert!(
        err.to_string().contains("linear_rows_split_k_norm"),
        "{err}"
    );
}

#[test]
fn linear_qkv_windows_writes_each_heads_window_layout() {
    check_qkv_windows(
        "linear_qkv_windows_writes_each_heads_window_layout",
        Precision::F32,
        (23, 3, 3, 5, 19),
    );
}

#[test]
fn linear_qkv_windows_tf32_writes_each_heads_window_layout() {
    let test = "linear_qkv_windows_tf32_writes_each_heads_window_layout";
    check_qkv_windows(test, Precision::Tf32, (23, 3, 3, 5, 19));
    check_qkv_windows(test, Precision::Tf32, (41, 2, 4, 8, 67));
}

#[test]
fn linear_qkv_windows_bf16_writes_each_heads_window_layout() {
    let test = "linear_qkv_windows_bf16_writes_each_heads_window_layout";
    check_qkv_windows(test, Precision::Bf16, (23, 3, 3, 5, 19));
    check_qkv_windows(test, Precision::Bf16, (41, 2, 4, 8, 67));
}

/// `(tokens, batch, heads, hd, k)`: the QKV projection into each head's window layout.
fn check_qkv_windows(
    test: &str,
    precision: Precision,
    (tokens, batch, heads, hd, k): (usize, usize, usize, usize, usize),
) {
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    let s = gpu.stream();
    let kernels = LinearKernels::load_precision(&gpu, precision).unwrap();
    let mut rng = rng(6);
    let (c, n) = (heads * hd, tokens * batch);
    let m = 3 * c;
    let (x, w, bias) = (
        random(&mut rng, n * k),
        random(&mut rng, m * k),
        random(&mut rng, m),
    );
    // A random token -> slot permutation per head.
    let mut table = Vec::new();
    for _ in 0..heads {
        let mut p: Vec<u32> = (0..tokens as u32).collect();
        p.shuffle(&mut rng);
        table.extend(p);
    }
    let scale = 0.125;
    let y = linear_f64(&x, &w, Some(&bias), (n, m, k));
    let mut want = vec![f32::NAN; 3 * n * c];
    for r in 0..n {
        let (t, b) = (r / batch, r % batch);
        for col in 0..m {
            let (which, h, ch) = (col / c, (col % c) / hd, col % hd);
            let slot = table[h * tokens + t] as usize;
            let v = if which == 0 {
                y[r * m + col] * scale as f64
            } else {
                y[r * m + col]
            };
            want[(((which * heads + h) * batch + b) * tokens + slot) * hd + ch] = v as f32;
        }
    }
    let (dx, dw, db) = (up(&gpu, &x), up(&gpu, &w), up(&gpu, &bias));
    let dt = attnrt::gpu::upload(s, &table).unwrap();
    let mut out = poisoned(&gpu, 3 * n * c);
    let epilogue = Epilogue::QkvWindows {
        token_slot: &dt,
        batch,
        heads,
        scale,
    };
    kernels
        .run(s, &dx, &dw, &db, (n, m, k), &mut out, epilogue)
        .unwrap();
    assert_within(
        &format!("qkv windows, {precision} ({tokens}, {batch}, {heads}, {hd}, {k})"),
        &down(&gpu, &out),
        &want,
        tolerance(precision),
    );
}
