//! `conv2d` on cuDNN ([`Conv2dKernels`]) against the CPU reference (`conv2d::cpu`, f64
//! accumulation), in every precision, on the shapes the tracker's backbone and heads and the
//! five CNNs of the trainer use: the 7x7 stride-2 stem, 3x3 stride 1 and 2, 1x1 stride 1 and
//! 2, AlexNet's 11x11 stride 4, grouped (ResNeXt) and depthwise (ShuffleNet) convolutions, a
//! non-square kernel, one output channel (the corner head), odd sizes and odd channel counts.
//!
//! Every output is poisoned (NaN) first, so an unwritten element fails; inputs are fresh
//! random values. Each forward epilogue (none, bias, bias + ReLU, bias + residual + ReLU) runs
//! through cuDNN's fused call and through our epilogue kernel. Each case prints its error and
//! the plan cuDNN chose (algorithms, math, whether the epilogue was fused), and a test reports
//! every failing case before it fails, so one GPU run tells everything. f32 runs every case
//! with the channel-major path (NCHW copies of the operands) left to timing, and again forced
//! (`set_channel_major`), with and without FFT and Winograd.
//!
//! Tolerances (relative Frobenius error against the reference):
//! - f32: 1e-5 (FMA math; TF32 would show as ~1e-3); 2e-3 with FFT and Winograd allowed
//!   (`set_transforms`: their transforms lose 1e-5 to 1e-3 a call): on an
//!   H200 cuDNN took WINOGRAD_NONFUSED for AlexNet's 5x5 (2x27x27x64 -> 192), 9.4e-4 from the
//!   reference (2026-12-07), where the H100s' choices had stayed under 3e-4;
//! - tf32: 2e-3 (operands rounded to 10-bit mantissas, f32 accumulation);
//! - bf16: 4e-3. The inputs are bf16, so the reference takes the same (rounded) values; the
//!   GPU rounds its result to bf16 once (2^-9 relative at most), twice on the unfused path.
//!
//! Without a GPU (or cuDNN) they print `skipped: <reason>`; `ATTNRT_REQUIRE_GPU=1` makes that
//! a failure. cuDNN is looked for as `src/gpu/cudnn.rs` says (`ATTNRT_CUDNN_LIB` first).

use std::sync::Arc;

use attnrt::Error;
use attnrt::base::Precision;
use attnrt::base::relative_error;
use attnrt::gpu::testing::{REQUIRE_GPU_VAR, gpu_or_skip};
use attnrt::gpu::{self, Gpu, Graph, cudnn};
use attnrt::kernels::conv2d::cpu::{self, Layout};
use attnrt::kernels::conv2d::{Conv2dKernels, Conv2dShape, Element, Epilogue, Passes};
use half::bf16;
use rand_chacha::ChaCha8Rng;

use crate::typed::{download, poisoned, random, upload};

fn required() -> bool {
    std::env::var(REQUIRE_GPU_VAR).is_ok_and(|v| v == "1")
}

/// The GPU and a `precision` [`Conv2dKernels`] on it, or `None` after printing why not (no
/// GPU, or no cuDNN: a failure when a GPU is required).
fn conv_or_skip(test: &str, precision: Precision) -> Option<(Arc<Gpu>, Conv2dKernels)> {
    let gpu = gpu_or_skip(test)?;
    match Conv2dKernels::load(&gpu, precision) {
        Ok(conv) => Some((gpu, conv)),
        Err(e @ Error::MissingLibrary { .. }) if !required() => {
            println!("{test}: skipped: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// The shapes every test runs, named.
fn cases() -> Vec<(&'static str, Conv2dShape)> {
    let s = Conv2dShape::new;
    vec![
        (
            "stem 7x7 s2",
            s(2, [37, 41], 3, 16, 7).with_stride(2).with_pad(3),
        ),
        ("3x3 s1", s(2, [13, 11], 16, 24, 3).with_pad(1)),
        (
            "3x3 s2",
            s(1, [15, 17], 32, 48, 3).with_stride(2).with_pad(1),
        ),
        ("3x3 odd channels", s(1, [9, 10], 5, 7, 3).with_pad(1)),
        ("1x1", s(2, [9, 7], 64, 32, 1)),
        (
            "1x1 s2 downsample",
            s(1, [14, 13], 32, 64, 1).with_stride(2),
        ),
        (
            "alexnet 11x11 s4",
            s(1, [67, 63], 3, 16, 11).with_stride(4).with_pad(2),
        ),
        (
            "grouped 32x4 (resnext)",
            s(1, [10, 9], 128, 128, 3).with_pad(1).with_groups(32),
        ),
        (
            "grouped 4, 6 -> 9 a group",
            s(2, [8, 9], 24, 36, 3).with_pad(1).with_groups(4),
        ),
        (
            "depthwise s1",
            s(2, [11, 13], 24, 24, 3).with_pad(1).with_groups(24),
        ),
        (
            "depthwise s2 (shufflenet)",
            s(1, [15, 15], 58, 58, 3)
                .with_stride(2)
                .with_pad(1)
                .with_groups(58),
        ),
        ("corner head 32 -> 1", s(1, [24, 24], 32, 1, 1)),
        (
            "1x5 kernel",
            Conv2dShape {
                kernel_h: 1,
                kernel_w: 5,
                ..s(1, [7, 12], 8, 12, 1).with_pad(1)
            },
        ),
    ]
}

/// How a test sets the kernels up: the GEMM path and f32's channel-major path (`Some`
/// forces it on or off, `None` measures) and whether f32 may use FFT and Winograd.
#[derive(Clone, Copy, Default)]
struct Paths {
    gemm: Option<bool>,
    channel_major: Option<bool>,
    transforms: bool,
}

impl Paths {
    const GEMM: Paths = Paths {
        gemm: Some(true),
        channel_major: None,
        transforms: false,
    };
    const TRANSFORMS: Paths = Paths {
        gemm: None,
        channel_major: None,
        transforms: true,
    };
    const CHANNEL_MAJOR: Paths = Paths {
        gemm: None,
        channel_major: Some(true),
        transforms: false,
    };
    const CHANNEL_MAJOR_TRANSFORMS: Paths = Paths {
        gemm: None,
        channel_major: Some(true),
        transforms: true,
    };

    fn apply(self, conv: &mut Conv2dKernels) {
        conv.set_gemm(self.gemm);
        conv.set_channel_major(self.channel_major).unwrap();
        conv.set_transforms(self.transforms);
    }

    /// What a case's label adds.
    fn label(self) -> String {
        let mut label = String::new();
        if self.gemm == Some(true) {
            label += " (GEMM forced)";
        }
        if self.channel_major == Some(true) {
            label += " (channel-major forced)";
        }
        if self.transforms {
            label += " (FFT/Winograd allowed)";
        }
        label
    }

    /// Records in `failures` each of `passes` ("forward", "backward data", ...) that
    /// `described` does not run as these paths force.
    fn check_forced(
        self,
        name: &str,
        described: &str,
        passes: &[&str],
        failures: &mut Vec<String>,
    ) {
        // Channel-major wins where both are forced.
        let forced = [
            (self.channel_major, "channel-major (NCHW)"),
            (self.gemm, "cuBLASLt GEMM"),
        ];
        let Some((_, path)) = forced.iter().find(|(set, _)| *set == Some(true)) else {
            return;
        };
        for pass in passes {
            if !described.contains(&format!("{pass} {path}")) {
                failures.push(format!(
                    "{name}: {pass} not run as the forced {path}: {described}"
                ));
            }
        }
    }

    /// The tolerance of `precision` on these paths (see the module docs).
    fn tolerance(self, precision: Precision) -> f64 {
        match precision {
            Precision::F32 if self.transforms => 2e-3,
            _ => tolerance(precision),
        }
    }
}

/// The tolerance of each precision (see the module docs).
fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-5,
        Precision::Tf32 => 2e-3,
        Precision::Bf16 => 4e-3,
    }
}

/// The reference's description of `shape` (NHWC).
fn reference(shape: &Conv2dShape, relu: bool) -> cpu::Conv2d {
    cpu::Conv2d {
        shape: *shape,
        relu,
        layout: Layout::Nhwc,
    }
}

/// Compares, prints one line, and records a failure (NaN included) in `failures`.
fn compare(what: String, got: &[f32], want: &[f32], tol: f64, failures: &mut Vec<String>) {
    let err = relative_error(got, want).expect("same length");
    let nan = got.iter().filter(|v| v.is_nan()).count();
    let verdict = if err <= tol { "ok" } else { "FAILED" };
    let line =
        format!("{what}: relative error {err:.2e} (tolerance {tol:.0e}, {nan} NaN) {verdict}");
    println!("{line}");
    if err > tol {
        failures.push(line);
    }
}

fn finish(test: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{test}: {} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The four epilogues, by name: (bias, residual, relu).
const EPILOGUES: [(&str, bool, bool, bool); 4] = [
    ("plain", false, false, false),
    ("bias", true, false, false),
    ("bias+relu", true, false, true),
    ("bias+residual+relu", true, true, true),
];

/// The 1x1 shapes that are GEMMs (no padding, one group; stride 1, or a stride dividing the
/// height, whose backward filter pass stays on cuDNN), named: the tracker's backbone's,
/// ResNet's downsampling shortcuts and odd ones.
fn gemm_cases() -> Vec<(&'static str, Conv2dShape)> {
    let s = Conv2dShape::new;
    vec![
        ("1x1", s(2, [9, 7], 64, 32, 1)),
        ("corner head 32 -> 1", s(1, [24, 24], 32, 1, 1)),
        ("odd channels 5 -> 7", s(1, [5, 3], 5, 7, 1)),
        ("backbone 1024 -> 256", s(1, [24, 24], 1024, 256, 1)),
        ("bottleneck 64 -> 256", s(2, [20, 20], 64, 256, 1)),
        (
            "downsample 256 -> 512 stride 2",
            s(2, [14, 14], 256, 512, 1).with_stride(2),
        ),
        (
            "odd width, stride 2",
            s(3, [6, 7], 24, 40, 1).with_stride(2),
        ),
        ("stride 3", s(2, [9, 5], 16, 8, 1).with_stride(3)),
    ]
}

/// Shapes where cuDNN's f32 may take FFT or Winograd when allowed: AlexNet's 5x5 and 3x3
/// layers at their 224x224 sizes (a batch of 2), ResNet's 3x3 at 28x28.
fn transform_cases() -> Vec<(&'static str, Conv2dShape)> {
    let s = Conv2dShape::new;
    vec![
        ("alexnet 5x5", s(2, [27, 27], 64, 192, 5).with_pad(2)),
        ("alexnet 3x3", s(2, [13, 13], 192, 384, 3).with_pad(1)),
        ("resnet 3x3 at 28", s(2, [28, 28], 128, 128, 3).with_pad(1)),
    ]
}

fn forward_cases<T: Element>(test: &str, precision: Precision) {
    check_forward::<T>(test, precision, Paths::default(), cases());
}

/// The GEMM shapes with the GEMM path forced, then left to choose.
fn gemm_forward_cases<T: Element>(test: &str, precision: Precision) {
    for paths in [Paths::GEMM, Paths::default()] {
        check_forward::<T>(test, precision, paths, gemm_cases());
    }
}

/// Every epilogue of every shape in `cases` (the kernels set up as `paths`) against the CPU
/// reference, into outputs poisoned first.
fn check_forward<T: Element>(
    test: &str,
    precision: Precision,
    paths: Paths,
    cases: Vec<(&'static str, Conv2dShape)>,
) {
    let Some((gpu, mut conv)) = conv_or_skip(test, precision) else {
        return;
    };
    paths.apply(&mut conv);
    let mut rng = crate::rng(0xC02D);
    let mut failures = Vec::new();
    let tol = paths.tolerance(precision);
    for (name, shape) in cases {
        let x = random::<T>(&mut rng, shape.input_len());
        let w_oihw = random::<T>(&mut rng, shape.weight_len());
        let bias = random::<T>(&mut rng, shape.out_channels);
        let residual = random::<T>(&mut rng, shape.output_len());
        let (dx, dw) = (
            upload::<T>(&gpu, &x),
            upload::<T>(&gpu, &shape.weight_to_gpu(&w_oihw)),
        );
        let (db, dz) = (upload::<T>(&gpu, &bias), upload::<T>(&gpu, &residual));
        for (epi, has_bias, has_residual, relu) in EPILOGUES {
            let want = cpu::conv2d(
                &reference(&shape, relu),
                &x,
                &w_oihw,
                has_bias.then_some(&bias[..]),
                has_residual.then_some(&residual[..]),
            )
            .unwrap();
            let fusions: &[bool] = if epi == "plain" {
                &[true]
            } else {
                &[true, false]
            };
            for &fused in fusions {
                conv.set_fused(fused);
                let mut y = poisoned::<T>(&gpu, shape.output_len());
                let epilogue = Epilogue {
                    bias: has_bias.then(|| db.as_view()),
                    residual: has_residual.then(|| dz.as_view()),
                    relu,
                };
                let what = format!(
                    "{precision} {name} [{shape}] {epi}{}{}",
                    if fused { "" } else { " (our epilogue kernel)" },
                    paths.label()
                );
                match conv.forward(&shape, &dx, &dw, epilogue, &mut y) {
                    Ok(()) => compare(what, &download(&gpu, &y), &want, tol, &mut failures),
                    Err(e) => {
                        println!("{what}: {e}");
                        failures.push(format!("{what}: {e}"));
                    }
                }
            }
        }
        let described = conv.describe(&shape).unwrap_or_default();
        println!("  {described}");
        paths.check_forced(name, &described, &["forward"], &mut failures);
    }
    finish(test, failures);
}

#[test]
fn conv2d_forward_f32_matches_the_reference() {
    forward_cases::<f32>("conv2d_forward_f32_matches_the_reference", Precision::F32);
}

/// f32 with FFT and Winograd allowed (a CNN job's `f32_conv_transforms`).
#[test]
fn conv2d_forward_f32_transforms_matches_the_reference() {
    let test = "conv2d_forward_f32_transforms_matches_the_reference";
    let all = cases().into_iter().chain(transform_cases()).collect();
    check_forward::<f32>(test, Precision::F32, Paths::TRANSFORMS, all);
}

/// f32 with every pass of every shape forced onto the channel-major path (NCHW copies).
#[test]
fn conv2d_forward_f32_channel_major_matches_the_reference() {
    let test = "conv2d_forward_f32_channel_major_matches_the_reference";
    check_forward::<f32>(test, Precision::F32, Paths::CHANNEL_MAJOR, cases());
}

/// The channel-major path with FFT and Winograd allowed: where cuDNN's f32 offers FFT.
#[test]
fn conv2d_forward_f32_channel_major_transforms_matches_the_reference() {
    let test = "conv2d_forward_f32_channel_major_transforms_matches_the_reference";
    let all = cases().into_iter().chain(transform_cases()).collect();
    check_forward::<f32>(test, Precision::F32, Paths::CHANNEL_MAJOR_TRANSFORMS, all);
}

#[test]
fn conv2d_forward_tf32_matches_the_reference() {
    forward_cases::<f32>("conv2d_forward_tf32_matches_the_reference", Precision::Tf32);
}

#[test]
fn conv2d_forward_bf16_matches_the_reference() {
    forward_cases::<bf16>("conv2d_forward_bf16_matches_the_reference", Precision::Bf16);
}

#[test]
fn conv2d_gemm_forward_f32_matches_the_reference() {
    gemm_forward_cases::<f32>(
        "conv2d_gemm_forward_f32_matches_the_reference",
        Precision::F32,
    );
}

#[test]
fn conv2d_gemm_forward_tf32_matches_the_reference() {
    gemm_forward_cases::<f32>(
        "conv2d_gemm_forward_tf32_matches_the_reference",
        Precision::Tf32,
    );
}

#[test]
fn conv2d_gemm_forward_bf16_matches_the_reference() {
    gemm_forward_cases::<bf16>(
        "conv2d_gemm_forward_bf16_matches_the_reference",
        Precision::Bf16,
    );
}

fn backward_cases<T: Element>(test: &str, precision: Precision) {
    check_backward::<T>(test, precision, Paths::default(), cases());
}

/// The GEMM shapes' backward passes with the GEMM path forced, then left to choose.
fn gemm_backward_cases<T: Element>(test: &str, precision: Precision) {
    for paths in [Paths::GEMM, Paths::default()] {
        check_backward::<T>(test, precision, paths, gemm_cases());
    }
}

/// Both backward passes and the bias gradient of every shape in `cases` (the kernels set up
/// as `paths`), overwriting and accumulating, against the CPU reference.
fn check_backward<T: Element>(
    test: &str,
    precision: Precision,
    paths: Paths,
    cases: Vec<(&'static str, Conv2dShape)>,
) {
    let Some((gpu, mut conv)) = conv_or_skip(test, precision) else {
        return;
    };
    paths.apply(&mut conv);
    let mut rng = crate::rng(0xBAC2D);
    let mut failures = Vec::new();
    let tol = paths.tolerance(precision);
    for (name, shape) in cases {
        let r = reference(&shape, false);
        let x = random::<T>(&mut rng, shape.input_len());
        let w_oihw = random::<T>(&mut rng, shape.weight_len());
        let dy = random::<T>(&mut rng, shape.output_len());
        let want_dx = cpu::backward_data(&r, &w_oihw, &dy).unwrap();
        let want_dw = shape.weight_to_gpu(&cpu::backward_filter(&r, &x, &dy).unwrap());
        let want_db = cpu::backward_bias(&r, &dy).unwrap();
        let (gx, gw) = (
            upload::<T>(&gpu, &x),
            upload::<T>(&gpu, &shape.weight_to_gpu(&w_oihw)),
        );
        let gdy = upload::<T>(&gpu, &dy);
        let what = |pass: &str| {
            format!(
                "{precision} {name} [{shape}] backward {pass}{}",
                paths.label()
            )
        };
        // Overwriting (into NaN), then accumulating onto earlier values.
        for accumulate in [false, true] {
            let start = |n: usize, rng: &mut ChaCha8Rng| -> (Vec<f32>, gpu::DeviceBuffer<T>) {
                if accumulate {
                    let v = random::<T>(rng, n);
                    let b = upload::<T>(&gpu, &v);
                    (v, b)
                } else {
                    (vec![0.0; n], poisoned::<T>(&gpu, n))
                }
            };
            let plus = |base: &[f32], grad: &[f32]| -> Vec<f32> {
                base.iter().zip(grad).map(|(a, b)| a + b).collect()
            };
            let suffix = if accumulate { " (accumulate)" } else { "" };
            let (base, mut gdx) = start(shape.input_len(), &mut rng);
            let got = conv.backward_data(&shape, &gw, &gdy, &mut gdx, accumulate);
            record(
                got.map(|()| download(&gpu, &gdx)),
                what("data") + suffix,
                &plus(&base, &want_dx),
                tol,
                &mut failures,
            );
            let (base, mut gdw) = start(shape.weight_len(), &mut rng);
            let got = conv.backward_filter(&shape, &gx, &gdy, &mut gdw, accumulate);
            record(
                got.map(|()| download(&gpu, &gdw)),
                what("filter") + suffix,
                &plus(&base, &want_dw),
                tol,
                &mut failures,
            );
            let (base, mut gdb) = start(shape.out_channels, &mut rng);
            let got = conv.backward_bias(&shape, &gdy, &mut gdb, accumulate);
            record(
                got.map(|()| download(&gpu, &gdb)),
                what("bias") + suffix,
                &plus(&base, &want_db),
                tol,
                &mut failures,
            );
        }
        let described = conv.describe(&shape).unwrap_or_default();
        println!("  {described}");
        // A strided 1x1's filter pass is no GEMM (see `gemm_cases`); every pass has the
        // channel-major path.
        let passes: &[&str] = if shape.stride == 1 || paths.channel_major == Some(true) {
            &["backward data", "backward filter"]
        } else {
            &["backward data"]
        };
        paths.check_forced(name, &described, passes, &mut failures);
    }
    finish(test, failures);
}

/// Compares a pass's result, or records its error.
fn record(
    got: attnrt::Result<Vec<f32>>,
    what: String,
    want: &[f32],
    tol: f64,
    failures: &mut Vec<String>,
) {
    match got {
        Ok(got) => compare(what, &got, want, tol, failures),
        Err(e) => {
            println!("{what}: {e}");
            failures.push(format!("{what}: {e}"));
        }
    }
}

#[test]
fn conv2d_backward_f32_matches_the_reference() {
    backward_cases::<f32>("conv2d_backward_f32_matches_the_reference", Precision::F32);
}

/// f32 with FFT and Winograd allowed (a CNN job's `f32_conv_transforms`).
#[test]
fn conv2d_backward_f32_transforms_matches_the_reference() {
    let test = "conv2d_backward_f32_transforms_matches_the_reference";
    let all = cases().into_iter().chain(transform_cases()).collect();
    check_backward::<f32>(test, Precision::F32, Paths::TRANSFORMS, all);
}

/// f32 with every pass of every shape forced onto the channel-major path (NCHW copies).
#[test]
fn conv2d_backward_f32_channel_major_matches_the_reference() {
    let test = "conv2d_backward_f32_channel_major_matches_the_reference";
    check_backward::<f32>(test, Precision::F32, Paths::CHANNEL_MAJOR, cases());
}

/// The channel-major path with FFT and Winograd allowed: where cuDNN's f32 offers FFT.
#[test]
fn conv2d_backward_f32_channel_major_transforms_matches_the_reference() {
    let test = "conv2d_backward_f32_channel_major_transforms_matches_the_reference";
    let all = cases().into_iter().chain(transform_cases()).collect();
    check_backward::<f32>(test, Precision::F32, Paths::CHANNEL_MAJOR_TRANSFORMS, all);
}

/// Only f32 has the channel-major path: forcing it elsewhere is an error; its scratch
/// copies are counted with the workspace.
#[test]
fn conv2d_channel_major_is_f32_only_and_counted() {
    let test = "conv2d_channel_major_is_f32_only_and_counted";
    for precision in [Precision::Tf32, Precision::Bf16] {
        let Some((_, mut conv)) = conv_or_skip(test, precision) else {
            return;
        };
        let e = conv.set_channel_major(Some(true)).unwrap_err().to_string();
        assert!(e.contains("f32's only"), "{precision}: {e}");
        conv.set_channel_major(Some(false)).unwrap();
        conv.set_channel_major(None).unwrap();
    }
    let Some((_, mut conv)) = conv_or_skip(test, Precision::F32) else {
        return;
    };
    conv.set_channel_major(Some(true)).unwrap();
    let shape = Conv2dShape::new(2, [12, 10], 8, 16, 3).with_pad(1);
    conv.prepare(&shape, Passes::Training).unwrap();
    let copies = 4 * (shape.input_len() + shape.weight_len() + shape.output_len());
    let described = conv.describe(&shape).unwrap();
    println!("{described}; {} bytes", conv.workspace_bytes());
    assert!(
        conv.workspace_bytes() >= copies,
        "{}",
        conv.workspace_bytes()
    );
    for pass in ["forward", "backward data", "backward filter"] {
        let want = format!("{pass} channel-major (NCHW)");
        assert!(described.contains(&want), "{described}");
    }
}

/// Timing the channel-major path grows its scratch copies to the pass's tensors; after each
/// pass's route is decided they hold only what the passes that run channel-major need (one
/// byte each where none does), so a path that loses keeps no memory (DenseNet-121 in f32 at
/// 224 kept 394 MiB so). The shapes are one where the path may win (3x3 with the transforms)
/// and ones where it is likely to lose; whichever wins, the bytes must match.
#[test]
fn conv2d_channel_major_scratch_fits_the_passes_that_take_it() {
    let test = "conv2d_channel_major_scratch_fits_the_passes_that_take_it";
    let Some((_, mut conv)) = conv_or_skip(test, Precision::F32) else {
        return;
    };
    conv.set_transforms(true);
    let shapes = [
        Conv2dShape::new(16, [28, 28], 96, 96, 3).with_pad(1),
        Conv2dShape::new(16, [28, 28], 256, 128, 1),
        Conv2dShape::new(2, [12, 10], 8, 16, 3).with_pad(1),
        Conv2dShape::new(16, [56, 56], 64, 64, 7)
            .with_pad(3)
            .with_stride(2),
    ];
    let mut need = [1usize; 3];
    for shape in shapes {
        conv.prepare(&shape, Passes::Training).unwrap();
        let described = conv.describe(&shape).unwrap();
        let runs = ["forward", "backward data", "backward filter"]
            .iter()
            .any(|pass| described.contains(&format!("{pass} channel-major (NCHW)")));
        if runs {
            let bytes = [shape.input_len(), shape.weight_len(), shape.output_len()];
            for (n, b) in need.iter_mut().zip(bytes) {
                *n = (*n).max(4 * b);
            }
        }
        println!(
            "{test}: {shape}: {described}; {} bytes",
            conv.channel_major_bytes()
        );
        assert_eq!(
            conv.channel_major_bytes(),
            need.iter().sum::<usize>(),
            "{shape}: {described}"
        );
    }
}

/// A first layer's plan (`Passes::ForwardAndFilter`) holds the forward and the filter's
/// gradient, not the backward data pass its images never take; that pass is still planned on
/// its first call.
#[test]
fn conv2d_first_layer_plans_no_backward_data() {
    let test = "conv2d_first_layer_plans_no_backward_data";
    let Some((gpu, mut conv)) = conv_or_skip(test, Precision::F32) else {
        return;
    };
    let shape = Conv2dShape::new(2, [16, 16], 3, 8, 7)
        .with_pad(3)
        .with_stride(2);
    conv.prepare(&shape, Passes::ForwardAndFilter).unwrap();
    let described = conv.describe(&shape).unwrap();
    println!("{test}: {described}");
    assert!(described.contains("; backward filter "), "{described}");
    assert!(!described.contains("backward data"), "{described}");
    let mut rng = crate::rng(7);
    let w_oihw = random::<f32>(&mut rng, shape.weight_len());
    let dy = random::<f32>(&mut rng, shape.output_len());
    let want = cpu::backward_data(&reference(&shape, false), &w_oihw, &dy).unwrap();
    let w = upload::<f32>(&gpu, &shape.weight_to_gpu(&w_oihw));
    let gdy = upload::<f32>(&gpu, &dy);
    let mut dx = poisoned::<f32>(&gpu, shape.input_len());
    conv.backward_data(&shape, &w, &gdy, &mut dx, false)
        .unwrap();
    let mut failures = Vec::new();
    let got = download(&gpu, &dx);
    let tol = tolerance(Precision::F32);
    compare(format!("{test} dx"), &got, &want, tol, &mut failures);
    finish(test, failures);
    let described = conv.describe(&shape).unwrap();
    assert!(described.contains("; backward data "), "{described}");
}

#[test]
fn conv2d_backward_tf32_matches_the_reference() {
    backward_cases::<f32>(
        "conv2d_backward_tf32_matches_the_reference",
        Precision::Tf32,
    );
}

#[test]
fn conv2d_backward_bf16_matches_the_reference() {
    backward_cases::<bf16>(
        "conv2d_backward_bf16_matches_the_reference",
        Precision::Bf16,
    );
}

#[test]
fn conv2d_gemm_backward_f32_matches_the_reference() {
    gemm_backward_cases::<f32>(
        "conv2d_gemm_backward_f32_matches_the_reference",
        Precision::F32,
    );
}

#[test]
fn conv2d_gemm_backward_tf32_matches_the_reference() {
    gemm_backward_cases::<f32>(
        "conv2d_gemm_backward_tf32_matches_the_reference",
        Precision::Tf32,
    );
}

#[test]
fn conv2d_gemm_backward_bf16_matches_the_reference() {
    gemm_backward_cases::<bf16>(
        "conv2d_gemm_backward_bf16_matches_the_reference",
        Precision::Bf16,
    );
}

/// Deterministic algorithms give bit-identical gradients run to run (the filter gradient's
/// reduction is where cuDNN's fast algorithms use atomics).
#[test]
fn conv2d_deterministic_backward_repeats_bit_for_bit() {
    let test = "conv2d_deterministic_backward_repeats_bit_for_bit";
    let Some((gpu, mut conv)) = conv_or_skip(test, Precision::F32) else {
        return;
    };
    conv.set_deterministic(true);
    let shape = Conv2dShape::new(8, [28, 28], 64, 64, 3).with_pad(1);
    let mut rng = crate::rng(7);
    let x = upload::<f32>(&gpu, &random::<f32>(&mut rng, shape.input_len()));
    let w = upload::<f32>(&gpu, &random::<f32>(&mut rng, shape.weight_len()));
    let dy = upload::<f32>(&gpu, &random::<f32>(&mut rng, shape.output_len()));
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut dw = poisoned::<f32>(&gpu, shape.weight_len());
        let mut dx = poisoned::<f32>(&gpu, shape.input_len());
        conv.backward_filter(&shape, &x, &dy, &mut dw, false)
            .unwrap();
        conv.backward_data(&shape, &w, &dy, &mut dx, false).unwrap();
        runs.push((download(&gpu, &dw), download(&gpu, &dx)));
    }
    println!("{}", conv.describe(&shape).unwrap());
    assert!(runs[0] == runs[1], "{test}: two runs differ");
}

/// A CUDA graph of prepared convolutions (fused and not, forward and backward) replays to
/// the eager results bit for bit (deterministic algorithms): the tracker captures its whole
/// step.
#[test]
fn conv2d_runs_inside_a_cuda_graph() {
    let test = "conv2d_runs_inside_a_cuda_graph";
    for precision in Precision::ALL {
        let Some((gpu, mut conv)) = conv_or_skip(test, precision) else {
            return;
        };
        if precision == Precision::Bf16 {
            graph_case::<bf16>(&gpu, &mut conv);
        } else {
            graph_case::<f32>(&gpu, &mut conv);
        }
    }
    // The channel-major path's copies and NCHW convolutions are captured as well.
    let Some((gpu, mut conv)) = conv_or_skip(test, Precision::F32) else {
        return;
    };
    conv.set_channel_major(Some(true)).unwrap();
    graph_case::<f32>(&gpu, &mut conv);
}

fn graph_case<T: Element>(gpu: &Arc<Gpu>, conv: &mut Conv2dKernels) {
    let shape = Conv2dShape::new(1, [20, 20], 32, 64, 3).with_pad(1);
    let mut rng = crate::rng(11);
    let x = upload::<T>(gpu, &random::<T>(&mut rng, shape.input_len()));
    let w = upload::<T>(gpu, &random::<T>(&mut rng, shape.weight_len()));
    let b = upload::<T>(gpu, &random::<T>(&mut rng, shape.out_channels));
    let z = upload::<T>(gpu, &random::<T>(&mut rng, shape.output_len()));
    let run = |conv: &mut Conv2dKernels,
               y1: &mut gpu::DeviceBuffer<T>,
               y2: &mut gpu::DeviceBuffer<T>,
               dx: &mut gpu::DeviceBuffer<T>| {
        conv.forward(
            &shape,
            &x,
            &w,
            Epilogue::bias_add_relu(b.as_view(), z.as_view()),
            y1,
        )?;
        conv.forward(&shape, &x, &w, Epilogue::bias(b.as_view()), y2)?;
        conv.backward_data(&shape, &w, &z, dx, false)
    };
    conv.set_deterministic(true);
    conv.prepare(&shape, Passes::Training).unwrap();
    let mut eager = [0; 3].map(|_| poisoned::<T>(gpu, shape.output_len()));
    let mut dx = poisoned::<T>(gpu, shape.input_len());
    {
        let [y1, y2, _] = &mut eager;
        run(conv, y1, y2, &mut dx).unwrap();
    }
    let want = [
        download(gpu, &eager[0]),
        download(gpu, &eager[1]),
        download(gpu, &dx),
    ];
    let mut y1 = poisoned::<T>(gpu, shape.output_len());
    let mut y2 = poisoned::<T>(gpu, shape.output_len());
    let mut gdx = poisoned::<T>(gpu, shape.input_len());
    let graph = Graph::capture(gpu.stream(), || run(conv, &mut y1, &mut y2, &mut gdx)).unwrap();
    graph.replay().unwrap();
    let got = [download(gpu, &y1), download(gpu, &y2), download(gpu, &gdx)];
    println!(
        "graph {}: {}",
        conv.precision(),
        conv.describe(&shape).unwrap()
    );
    assert!(
        got == want,
        "{}: the graph's results differ from the eager ones",
        conv.precision()
    );
}

/// Wrong buffers are errors naming the tensor, not cuDNN failures.
#[test]
fn conv2d_refuses_wrong_buffers() {
    let test = "conv2d_refuses_wrong_buffers";
    let Some((gpu, mut conv)) = conv_or_skip(test, Precision::Bf16) else {
        return;
    };
    let shape = Conv2dShape::new(1, [8, 8], 8, 16, 3).with_pad(1);
    let x32 = upload::<f32>(&gpu, &vec![0.0; shape.input_len()]);
    let w32 = upload::<f32>(&gpu, &vec![0.0; shape.weight_len()]);
    let mut y32 = poisoned::<f32>(&gpu, shape.output_len());
    let e = conv
        .forward(&shape, &x32, &w32, Epilogue::none(), &mut y32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("f32 tensors given; this precision stores bf16"),
        "{e}"
    );
    let x = upload::<bf16>(&gpu, &vec![0.0; shape.input_len() + 8]);
    let w = upload::<bf16>(&gpu, &vec![0.0; shape.weight_len()]);
    let mut y = poisoned::<bf16>(&gpu, shape.output_len());
    let e = conv
        .forward(&shape, &x, &w, Epilogue::none(), &mut y)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv2d forward") && e.contains("x has"), "{e}");
    // A view one element in: 2 bytes off the 16-byte boundary.
    let e = conv
        .forward(
            &shape,
            &x.slice(1..=shape.input_len()),
            &w,
            Epilogue::none(),
            &mut y,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x starts at") && e.contains("16-byte boundary"),
        "{e}"
    );
    let bad = Conv2dShape::new(1, [8, 8], 8, 16, 3).with_groups(3);
    let mut db = poisoned::<bf16>(&gpu, 16);
    let e = conv
        .backward_bias(&bad, &y, &mut db, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 groups must divide"), "{e}");
}

/// Where cuDNN was found (printed), or, with no cuDNN, an error that says how to get it.
/// Runs without a GPU.
#[test]
fn cudnn_is_found_or_the_error_says_how_to_get_it() {
    match cudnn::library() {
        Ok(lib) => println!(
            "cuDNN {} from {} ({})",
            lib.version_string(),
            lib.source,
            lib.path
                .as_ref()
                .map_or("by name".into(), |p| p.display().to_string())
        ),
        Err(e) => {
            let e = e.to_string();
            println!("no cuDNN: {e}");
            assert!(
                e.contains("libcudnn.so.9")
                    && e.contains("scripts/setup-cuda.sh")
                    && e.contains("ATTNRT_CUDNN_LIB")
                    && e.contains("import nvidia.cudnn"),
                "{e}"
            );
            assert!(!required(), "{REQUIRE_GPU_VAR}=1 but {e}");
        }
    }
    // A named library that is not there is the error, with what to do.
    let dir = std::env::temp_dir().join("attnrt-no-cudnn-here");
    let e = cudnn::locate(Some(dir.as_os_str()), &[]).unwrap_err();
    assert!(
        e.contains("ATTNRT_CUDNN_LIB=") && e.contains("does not exist"),
        "{e}"
    );
}
