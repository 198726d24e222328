//! `kernels/batch_norm.cu` against `batch_norm::cpu` (f64 sums), f32 and bf16 activations:
//! train-mode forward (with and without the fused ReLU; the statistics it keeps and its
//! contribution to the running statistics), the running statistics' update, eval mode, and
//! the backward (with the fused ReLU's mask); synchronised batch norm's split passes over
//! uneven shards (moments and backward sums added up on the host, as the trainer's exchange
//! does) against the CPU's `Moments` and `NormGrads`. Inputs sit off zero (mean 3) so a variance
//! computed as E[x^2] - mean^2 in f32 would show; rows span one to many splits, and channel
//! counts are below, at and above a block's 32.
//!
//! Tolerances (relative Frobenius error): f32 1e-5 forward, 1e-4 backward (f32 sums over up
//! to thousands of rows); bf16 outputs are rounded once to bf16 (2^-9 relative at most):
//! 4e-3, the f32 statistics 1e-5 (they are sums of the same, rounded, inputs).

use attnrt::gpu::testing::gpu_or_skip;
use attnrt::gpu::{self, Gpu};
use attnrt::kernels::batch_norm::cpu::{
    BatchStats, EPS, Moments, NormGrads, backward_input, backward_sums, batch_norm_apply,
    batch_norm_backward, batch_norm_eval, batch_norm_train, update_running,
};
use attnrt::kernels::batch_norm::{Affine, BatchNormKernels, NormShape, Saved};
use attnrt::kernels::conv2d::Element;
use cudarc::driver::CudaViewMut;
use half::bf16;

use crate::typed::{download, poisoned, random, upload};
use crate::{assert_within, down, rng, up};

/// (rows, channels): odd pixel counts, ShuffleNet's 116, one row of a block, many splits.
const SHAPES: [(usize, usize); 5] = [
    (2 * 17 * 19, 24),
    (3 * 5 * 7, 116),
    (9, 5),
    (8205, 64),
    (98, 1024),
];

#[test]
fn batch_norm_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("batch_norm_matches_the_cpu_reference") else {
        return;
    };
    for (rows, c) in SHAPES {
        for synced in [false, true] {
            run::<f32>(&gpu, rows, c, synced, [1e-5, 1e-4]);
            run::<bf16>(&gpu, rows, c, synced, [4e-3, 4e-3]);
        }
    }
}

/// The plain check, or (`synced`, for shapes of 30 rows or more) the synchronised one.
fn run<T: Element>(gpu: &Gpu, rows: usize, c: usize, synced: bool, tol: [f64; 2]) {
    match synced {
        false => check::<T>(gpu, rows, c, tol),
        true if rows >= 30 => check_synced::<T>(gpu, rows, c, tol),
        true => {}
    }
}

/// Inputs off zero (mean 3) in `T`'s precision, and the affine's scale and shift.
fn inputs<T: Element>(rng: &mut rand_chacha::ChaCha8Rng, rows: usize, c: usize) -> [Vec<f32>; 3] {
    let x: Vec<f32> = random::<T>(rng, rows * c)
        .iter()
        .map(|v| T::from_f32(3.0 + 2.0 * v).to_f32())
        .collect();
    let gamma = crate::random(rng, c);
    let beta = crate::random(rng, c);
    [x, gamma, beta]
}

fn check<T: Element>(gpu: &Gpu, rows: usize, c: usize, [tol_y, tol_dx]: [f64; 2]) {
    let s = gpu.stream();
    let kernels = BatchNormKernels::load(gpu).unwrap();
    let mut rng = rng(51 + rows as u64);
    let what = |w: &str| format!("{rows}x{c} {} {w}", T::NAME);
    let [x, gamma, beta] = inputs::<T>(&mut rng, rows, c);
    let shape = NormShape { rows, channels: c };
    let (gx, gg, gb) = (upload::<T>(gpu, &x), up(gpu, &gamma), up(gpu, &beta));
    let mut saved = Saved::new(gpu, c).unwrap();
    let mut work = crate::poisoned(gpu, shape.workspace_len());
    let mut contrib = crate::poisoned(gpu, 2 * c);

    // The train-mode forward of `x` into `y`, its statistics into `saved`.
    let train = |y: &mut gpu::DeviceBuffer<T>,
                 saved: &mut Saved,
                 work: &mut gpu::DeviceBuffer<f32>,
                 contrib: Option<(&mut CudaViewMut<'_, f32>, f32)>,
                 relu: bool| {
        let affine = Affine {
            gamma: &gg,
            beta: &gb,
        };
        kernels
            .forward_train(s, shape, &gx, affine, y, saved, work, contrib, relu)
            .unwrap();
    };

    let (want, stats) = batch_norm_train(&x, c, &gamma, &beta).unwrap();
    for relu in [false, true] {
        let mut y = poisoned::<T>(gpu, rows * c);
        let contrib = Some((&mut contrib.slice_mut(..), 1.0));
        train(&mut y, &mut saved, &mut work, contrib, relu);
        let want: Vec<f32> = want
            .iter()
            .map(|&v| if relu { v.max(0.0) } else { v })
            .collect();
        assert_within(
            &what(&format!("y relu={relu}")),
            &download(gpu, &y),
            &want,
            tol_y,
        );
    }
    let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<_>>();
    let inv: Vec<f64> = stats.var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect();
    assert_within(
        &what("mean"),
        &down(gpu, &saved.mean),
        &f(&stats.mean),
        1e-5,
    );
    assert_within(&what("invstd"), &down(gpu, &saved.invstd), &f(&inv), 1e-5);
    let unbiased: Vec<f64> = stats
        .var
        .iter()
        .map(|v| v * rows as f64 / (rows - 1) as f64)
        .collect();
    let want_contrib = [f(&stats.mean), f(&unbiased)].concat();
    assert_within(
        &what("contribution"),
        &down(gpu, &contrib),
        &want_contrib,
        1e-5,
    );

    // The running statistics moved by that contribution, then eval mode with them.
    let (mut rm, mut rv) = (crate::random(&mut rng, c), crate::random(&mut rng, c));
    rv.iter_mut().for_each(|v| *v = 1.0 + v.abs());
    let mut running = up(gpu, &[rm.clone(), rv.clone()].concat());
    kernels
        .update_running(s, &mut running, &contrib, 2 * c)
        .unwrap();
    update_running(&[(1.0, &stats)], &mut rm, &mut rv).unwrap();
    let got = down(gpu, &running);
    assert_within(
        &what("running"),
        &got,
        &[rm.clone(), rv.clone()].concat(),
        1e-6,
    );
    let (grm, grv) = (up(gpu, &rm), up(gpu, &rv));
    let mut y = poisoned::<T>(gpu, rows * c);
    let affine = Affine {
        gamma: &gg,
        beta: &gb,
    };
    kernels
        .forward_eval(
            s,
            shape,
            &gx,
            affine,
            (&grm, &grv),
            &mut y,
            &mut saved,
            false,
        )
        .unwrap();
    let want = batch_norm_eval(&x, c, &gamma, &beta, &rm, &rv).unwrap();
    assert_within(&what("eval y"), &download(gpu, &y), &want, tol_y);

    // Backward, plain and through the fused ReLU (masked where its output is not positive).
    let mut relu_y = poisoned::<T>(gpu, rows * c);
    train(&mut relu_y, &mut saved, &mut work, None, true);
    let mask = download(gpu, &relu_y);
    let dy = random::<T>(&mut rng, rows * c);
    let gdy = upload::<T>(gpu, &dy);
    for relu in [false, true] {
        let masked: Vec<f32> = dy
            .iter()
            .zip(&mask)
            .map(|(&g, &m)| {
                if relu && (m <= 0.0 || m.is_nan()) {
                    0.0
                } else {
                    g
                }
            })
            .collect();
        let stats = BatchStats { ..stats.clone() };
        let (want_dx, want_dg, want_db) = batch_norm_backward(&x, &masked, &gamma, &stats).unwrap();
        let mut dx = poisoned::<T>(gpu, rows * c);
        let (mut dg, mut db) = (crate::poisoned(gpu, c), crate::poisoned(gpu, c));
        kernels
            .backward(
                s,
                shape,
                &gx,
                &gdy,
                relu.then_some(&relu_y),
                &saved,
                &gg,
                (&mut dg, &mut db),
                &mut dx,
                &mut work,
            )
            .unwrap();
        assert_within(
            &what(&format!("dgamma relu={relu}")),
            &down(gpu, &dg),
            &want_dg,
            1e-4,
        );
        assert_within(
            &what(&format!("dbeta relu={relu}")),
            &down(gpu, &db),
            &want_db,
            1e-4,
        );
        assert_within(
            &what(&format!("dx relu={relu}")),
            &download(gpu, &dx),
            &want_dx,
            tol_dx,
        );
    }
}

/// Synchronised batch norm over three uneven shards of one batch (a tenth, three tenths,
/// the rest): each shard's moments and backward sums are added up on the host in f64 (the
/// exchange's part), and each shard normalises and takes its input gradient with the
/// totals, against the CPU reference's synchronised steps. The contributions to the
/// running statistics, weighted by each shard's share, add up to the batch's.
fn check_synced<T: Element>(gpu: &Gpu, rows: usize, c: usize, [tol_y, tol_dx]: [f64; 2]) {
    let s = gpu.stream();
    let kernels = BatchNormKernels::load(gpu).unwrap();
    let mut rng = rng(71 + rows as u64);
    let what = |w: &str| format!("synced {rows}x{c} {} {w}", T::NAME);
    let [x, gamma, beta] = inputs::<T>(&mut rng, rows, c);
    let dy = random::<T>(&mut rng, rows * c);
    let (gg, gb) = (up(gpu, &gamma), up(gpu, &beta));
    let cuts = [0, rows / 10, rows * 4 / 10, rows];
    let shards: Vec<std::ops::Range<usize>> = cuts.windows(2).map(|w| w[0]..w[1]).collect();
    let part = |v: &[f32], r: &std::ops::Range<usize>| v[r.start * c..r.end * c].to_vec();
    let stats = Moments::stats(
        &shards
            .iter()
            .map(|r| Moments::of(&part(&x, r), c))
            .collect::<Vec<_>>(),
    );
    let sum_f64 = |parts: &[Vec<f32>]| -> Vec<f32> {
        (0..parts[0].len())
            .map(|i| parts.iter().map(|p| f64::from(p[i])).sum::<f64>() as f32)
            .collect()
    };

    // Each shard's geometry and operands on the device.
    let on_gpu: Vec<_> = shards
        .iter()
        .map(|r| {
            let shape = NormShape {
                rows: r.len(),
                channels: c,
            };
            let (gx, gdy) = (
                upload::<T>(gpu, &part(&x, r)),
                upload::<T>(gpu, &part(&dy, r)),
            );
            (r, shape, gx, gdy)
        })
        .collect();

    // Forward: every shard's moments, their sum, and each shard normalised with it.
    let m = BatchNormKernels::moments_len(c);
    let mut moments = Vec::new();
    for (_, shape, gx, _) in &on_gpu {
        let mut work = crate::poisoned(gpu, shape.workspace_len());
        let mut out = crate::poisoned(gpu, m);
        kernels.moments(s, *shape, gx, &mut work, &mut out).unwrap();
        moments.push(down(gpu, &out));
    }
    let total = up(gpu, &sum_f64(&moments));
    let mut contribs = Vec::new();
    let mut saved_all = Vec::new();
    for (r, shape, gx, _) in &on_gpu {
        let mut y = poisoned::<T>(gpu, r.len() * c);
        let mut saved = Saved::new(gpu, c).unwrap();
        let mut contrib = crate::poisoned(gpu, 2 * c);
        let weight = r.len() as f32 / rows as f32;
        let affine = Affine {
            gamma: &gg,
            beta: &gb,
        };
        kernels
            .forward_from_moments(
                s,
                *shape,
                (&total, rows),
                gx,
                affine,
                &mut y,
                &mut saved,
                Some((&mut contrib.slice_mut(..), weight)),
                false,
            )
            .unwrap();
        let want = batch_norm_apply(&part(&x, r), c, &gamma, &beta, &stats).unwrap();
        assert_within(
            &what(&format!("y of rows {r:?}")),
            &download(gpu, &y),
            &want,
            tol_y,
        );
        contribs.push(down(gpu, &contrib));
        saved_all.push(saved);
    }
    let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<_>>();
    let unbiased: Vec<f64> = stats
        .var
        .iter()
        .map(|v| v * rows as f64 / (rows - 1) as f64)
        .collect();
    assert_within(
        &what("contributions' sum"),
        &sum_f64(&contribs),
        &[f(&stats.mean), f(&unbiased)].concat(),
        1e-5,
    );

    // Backward: every shard's sums, their total, and each shard's input gradient with it.
    let mut sums = Vec::new();
    let mut parts = Vec::new();
    for ((r, shape, gx, gdy), saved) in on_gpu.iter().zip(&saved_all) {
        let mut work = crate::poisoned(gpu, shape.workspace_len());
        let (mut dg, mut db) = (crate::poisoned(gpu, c), crate::poisoned(gpu, c));
        let no_mask: Option<&gpu::DeviceBuffer<T>> = None;
        kernels
            .backward_sums(
                s,
                *shape,
                (gx, gdy, no_mask),
                saved,
                (&mut dg, &mut db),
                &mut work,
            )
            .unwrap();
        let want = backward_sums(&part(&x, r), &part(&dy, r), &stats).unwrap();
        let (wg, wb) = want.to_f32();
        assert_within(&what("shard dgamma"), &down(gpu, &dg), &wg, 1e-4);
        assert_within(&what("shard dbeta"), &down(gpu, &db), &wb, 1e-4);
        sums.push([down(gpu, &dg), down(gpu, &db)].concat());
        parts.push(want);
    }
    let total = sum_f64(&sums);
    let want_total = NormGrads::total(&parts);
    let (tg, tb) = (up(gpu, &total[..c]), up(gpu, &total[c..]));
    for ((r, shape, gx, gdy), saved) in on_gpu.iter().zip(&saved_all) {
        let mut dx = poisoned::<T>(gpu, r.len() * c);
        let no_mask: Option<&gpu::DeviceBuffer<T>> = None;
        kernels
            .backward_input(
                s,
                *shape,
                (gx, gdy, no_mask),
                saved,
                &gg,
                (&tg, &tb, rows),
                &mut dx,
            )
            .unwrap();
        let want = backward_input(&part(&x, r), &part(&dy, r), &gamma, &stats, &want_total);
        assert_within(
            &what(&format!("dx of rows {r:?}")),
            &download(gpu, &dx),
            &want,
            tol_dx,
        );
    }
}

#[test]
fn batch_norm_refuses_short_buffers_and_single_rows() {
    let Some(gpu) = gpu_or_skip("batch_norm_refuses_short_buffers_and_single_rows") else {
        return;
    };
    let s = gpu.stream();
    let kernels = BatchNormKernels::load(&gpu).unwrap();
    let shape = NormShape {
        rows: 4,
        channels: 3,
    };
    let (g, b) = (up(&gpu, &[1.0; 3]), up(&gpu, &[0.0; 3]));
    let x = up(&gpu, &[0.0; 11]);
    let mut y = crate::poisoned(&gpu, 12);
    let mut saved = Saved::new(&gpu, 3).unwrap();
    let mut work = crate::poisoned(&gpu, shape.workspace_len());
    let affine = Affine {
        gamma: &g,
        beta: &b,
    };
    let e = kernels
        .forward_train(
            s, shape, &x, affine, &mut y, &mut saved, &mut work, None, false,
        )
        .unwrap_err();
    assert!(e.to_string().contains("x has 11"), "{e}");
    let one = NormShape {
        rows: 1,
        channels: 3,
    };
    let mut contrib = crate::poisoned(&gpu, 6);
    let affine = Affine {
        gamma: &g,
        beta: &b,
    };
    let e = kernels
        .forward_train(
            s,
            one,
            &x,
            affine,
            &mut y,
            &mut saved,
            &mut work,
            Some((&mut contrib.slice_mut(..), 1.0)),
            false,
        )
        .unwrap_err();
    assert!(e.to_string().contains("more than one value"), "{e}");
    let _ = gpu::download(s, &y);
}
