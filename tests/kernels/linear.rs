//! `kernels/linear.cu` against `linear::cpu`: every epilogue in f32, and in tf32 and bf16
//! (tensor cores; tests named `*_tf32_*`, `*_bf16_*`), held to 2e-3 and 1e-2.

use attnrt::base::Precision;
use attnrt::gpu::{Gpu, testing::gpu_or_skip};
use attnrt::kernels::linear::cpu::linear_f64;
use attnrt::kernels::linear::{Epilogue, LinearKernels, ROWS};
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
