//! `kernels/layer_norm.cu` against `layer_norm::cpu`: the inference forward (plain, and the
//! k-split linear's epilogue with bias and residual, with the fused `+ add`), the training
//! forward (the same y bit for bit, and xhat and rstd), and the backward. The forwards at
//! widths on both sides of each kernel's limit (256, 512, 1024), and past the last.

use attnrt::gpu::Gpu;
use attnrt::gpu::testing::gpu_or_skip;
use attnrt::kernels::layer_norm::cpu::{layer_norm, layer_norm_backward, normalize};
use attnrt::kernels::layer_norm::{Extra, LayerNormKernels, MAX_WIDTH, NormInput, Saved};

use crate::{assert_close, down, poisoned, random, rng, to_bits, up};

/// 37 rows: the last block has idle warps; c = 100 is not a multiple of 32.
const ROWS: usize = 37;
const C: usize = 100;
const EPS: f32 = 1e-5;

/// Row widths for the forwards: each forward kernel's limit (256, 512, `MAX_WIDTH`) and the
/// width just past the narrower two, so that every kernel runs full and part-full rows.
const WIDTHS: [usize; 6] = [C, 256, 257, 512, 513, MAX_WIDTH];

#[test]
fn layer_norm_forward_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("layer_norm_forward_matches_the_cpu_reference") else {
        return;
    };
    let kernels = LayerNormKernels::load(&gpu).unwrap();
    for c in WIDTHS {
        forward_matches(&gpu, &kernels, c);
    }
    // One past the widest kernel's rows: an error naming it, nothing launched.
    let (x, g) = (
        up(&gpu, &[0.0; MAX_WIDTH + 1]),
        up(&gpu, &[1.0; MAX_WIDTH + 1]),
    );
    let mut y = poisoned(&gpu, MAX_WIDTH + 1);
    let input = NormInput::of(x.as_view());
    let err = kernels
        .forward(gpu.stream(), input, &g, &g, EPS, &mut y, Extra::Nothing)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("add_layer_norm_f32_c1024") && err.contains("1025"),
        "{err}"
    );
}

/// The inference forward on rows of `c` against the CPU's.
fn forward_matches(gpu: &Gpu, kernels: &LayerNormKernels, c: usize) {
    let s = gpu.stream();
    let mut rng = rng(7 + c as u64);
    let (rows, parts) = (ROWS, 3);
    let x: Vec<f32> = random(&mut rng, parts * rows * c)
        .iter()
        .map(|v| 3.0 * v + 0.5)
        .collect();
    let (gamma, beta, bias, residual, add) = (
        random(&mut rng, c),
        random(&mut rng, c),
        random(&mut rng, c),
        random(&mut rng, rows * c),
        random(&mut rng, rows * c),
    );
    let (dx, dg, db) = (up(gpu, &x), up(gpu, &gamma), up(gpu, &beta));
    let (dbias, dres, dadd) = (up(gpu, &bias), up(gpu, &residual), up(gpu, &add));

    // Plain LayerNorm of the first part, with the fused `+ add`.
    let want = layer_norm(&x[..rows * c], &gamma, &beta, EPS as f64).y;
    let want_plus: Vec<f32> = want.iter().zip(&add).map(|(a, b)| a + b).collect();
    let mut y = poisoned(gpu, rows * c);
    let mut y_plus = poisoned(gpu, rows * c);
    let plain = NormInput::of(dx.slice(..rows * c));
    let plus = Extra::Plus((dadd.as_view(), y_plus.as_view_mut()));
    kernels
        .forward(s, plain, &dg, &db, EPS, &mut y, plus)
        .unwrap();
    assert_close(&format!("layer norm, c {c}"), &down(gpu, &y), &want);
    assert_close(&format!("+ add, c {c}"), &down(gpu, &y_plus), &want_plus);

    // The linear epilogue: LN(part 0 + part 1 + part 2 + bias + residual).
    let sum: Vec<f64> = (0..rows * c)
        .map(|e| {
            let parts_sum: f64 = (0..parts).map(|p| x[p * rows * c + e] as f64).sum();
            parts_sum + bias[e % c] as f64 + residual[e] as f64
        })
        .collect();
    let want = normalize(&sum, &gamma, &beta, EPS as f64).y;
    let mut y = poisoned(gpu, rows * c);
    let input = NormInput {
        parts: dx.as_view(),
        n_parts: parts,
        bias: Some(dbias.as_view()),
        residual: Some(dres.as_view()),
    };
    kernels
        .forward(s, input, &dg, &db, EPS, &mut y, Extra::Nothing)
        .unwrap();
    assert_close(
        &format!("parts + bias + residual, c {c}"),
        &down(gpu, &y),
        &want,
    );
}

/// The trainer's forward is the inference forward's body: the same y bit for bit, and the
/// xhat and rstd its backward reads.
#[test]
fn layer_norm_training_forward_saves_xhat_and_rstd() {
    let Some(gpu) = gpu_or_skip("layer_norm_training_forward_saves_xhat_and_rstd") else {
        return;
    };
    let kernels = LayerNormKernels::load(&gpu).unwrap();
    for c in WIDTHS {
        training_forward_matches(&gpu, &kernels, c);
    }
}

/// The training forward on rows of `c`: the inference forward's y bit for bit, and the CPU's
/// y, xhat and rstd.
fn training_forward_matches(gpu: &Gpu, kernels: &LayerNormKernels, c: usize) {
    let s = gpu.stream();
    let mut rng = rng(11 + c as u64);
    let rows = ROWS;
    let (x, gamma, beta) = (
        random(&mut rng, rows * c),
        random(&mut rng, c),
        random(&mut rng, c),
    );
    let (dx, dg, db) = (up(gpu, &x), up(gpu, &gamma), up(gpu, &beta));
    let mut inference = poisoned(gpu, rows * c);
    let input = NormInput::of(dx.as_view());
    kernels
        .forward(s, input, &dg, &db, EPS, &mut inference, Extra::Nothing)
        .unwrap();
    let (mut y, mut xhat, mut rstd) = (
        poisoned(gpu, rows * c),
        poisoned(gpu, rows * c),
        poisoned(gpu, rows),
    );
    let saved = Saved {
        xhat: xhat.as_view_mut(),
        rstd: rstd.as_view_mut(),
    };
    let input = NormInput::of(dx.as_view());
    kernels
        .forward(s, input, &dg, &db, EPS, &mut y, Extra::Saved(saved))
        .unwrap();
    let y = down(gpu, &y);
    assert_eq!(to_bits(&y), to_bits(&down(gpu, &inference)), "c {c}");
    let want = layer_norm(&x, &gamma, &beta, EPS as f64);
    assert_close(&format!("y, c {c}"), &y, &want.y);
    assert_close(&format!("xhat, c {c}"), &down(gpu, &xhat), &want.xhat);
    assert_close(&format!("rstd, c {c}"), &down(gpu, &rstd), &want.rstd);
}

#[test]
fn layer_norm_backward_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("layer_norm_backward_matches_the_cpu_reference") else {
        return;
    };
    let s = gpu.stream();
    let kernels = LayerNormKernels::load(&gpu).unwrap();
    let mut rng = rng(12);
    let (rows, c) = (ROWS, C);
    let (x, gamma, beta, dy, dx0) = (
        random(&mut rng, rows * c),
        random(&mut rng, c),
        random(&mut rng, c),
        random(&mut rng, rows * c),
        random(&mut rng, rows * c),
    );
    let saved = layer_norm(&x, &gamma, &beta, EPS as f64);
    let want = layer_norm_backward(&dy, &saved.xhat, &saved.rstd, &gamma);
    let (ddy, dxhat, drstd, dg) = (
        up(&gpu, &dy),
        up(&gpu, &saved.xhat),
        up(&gpu, &saved.rstd),
        up(&gpu, &gamma),
    );
    for accumulate in [false, true] {
        let mut dx = if accumulate {
            up(&gpu, &dx0)
        } else {
            poisoned(&gpu, rows * c)
        };
        let mut dyxhat = poisoned(&gpu, rows * c);
        let shape = (rows, c);
        kernels
            .backward(
                s,
                &ddy,
                (&dxhat, &drstd),
                &dg,
                &mut dx,
                &mut dyxhat,
                shape,
                accumulate,
            )
            .unwrap();
        let want_dx: Vec<f32> = if accumulate {
            want.dx.iter().zip(&dx0).map(|(a, b)| a + b).collect()
        } else {
            want.dx.clone()
        };
        assert_close(
            &format!("dx (accumulate {accumulate})"),
            &down(&gpu, &dx),
            &want_dx,
        );
        // dgamma is the column sums of dy * xhat.
        let dyxhat = down(&gpu, &dyxhat);
        let dgamma: Vec<f32> = (0..c)
            .map(|j| (0..rows).map(|r| dyxhat[r * c + j] as f64).sum::<f64>() as f32)
            .collect();
        assert_close("dgamma from dy * xhat", &dgamma, &want.dgamma);
    }
}
