//! `kernels/elementwise.cu` against `elementwise::cpu`: single f32 operations, so exactly.

use attnrt::gpu::{self, testing::gpu_or_skip};
use attnrt::kernels::elementwise::ElementwiseKernels;
use attnrt::kernels::elementwise::cpu::{add, add_periodic, add_relu, relu_backward, scale_by_dot};

use crate::{assert_within, down, poisoned, random, rng, to_bits, up};

#[test]
fn elementwise_ops_match_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("elementwise_ops_match_the_cpu_reference") else {
        return;
    };
    let s = gpu.stream();
    let kernels = ElementwiseKernels::load(&gpu).unwrap();
    let mut rng = rng(37);
    let (n, period) = (10_005, 115);
    let (y, x, pos) = (
        random(&mut rng, n),
        random(&mut rng, n),
        random(&mut rng, period),
    );

    let mut want = y.clone();
    add(&mut want, &x);
    let mut dy = up(&gpu, &y);
    kernels.add(s, &mut dy, &up(&gpu, &x), n).unwrap();
    assert_eq!(to_bits(&down(&gpu, &dy)), to_bits(&want), "add");

    let mut want = y.clone();
    add_periodic(&mut want, &pos);
    let mut dy = up(&gpu, &y);
    kernels
        .add_periodic(s, &mut dy, &up(&gpu, &pos), n, period)
        .unwrap();
    assert_eq!(to_bits(&down(&gpu, &dy)), to_bits(&want), "add_periodic");

    // x as the ReLU's output: about half its values are not positive.
    let mut want = y.clone();
    relu_backward(&mut want, &x);
    let mut dy = up(&gpu, &y);
    kernels.relu_backward(s, &mut dy, &up(&gpu, &x), n).unwrap();
    assert_eq!(to_bits(&down(&gpu, &dy)), to_bits(&want), "relu_backward");
}

/// Rows times their dot product with a vector (f32 dot against the f64 reference), into f32
/// and bf16, on widths below, at and above a warp and rows that do not fill a block.
#[test]
fn scale_by_dot_matches_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("scale_by_dot_matches_the_cpu_reference") else {
        return;
    };
    let s = gpu.stream();
    let kernels = ElementwiseKernels::load(&gpu).unwrap();
    let mut rng = rng(38);
    for (rows, width) in [(576, 64), (13, 256), (9, 20)] {
        let (x, v) = (random(&mut rng, rows * width), random(&mut rng, width));
        let want = scale_by_dot(&x, &v);
        let (dx, dv) = (up(&gpu, &x), up(&gpu, &v));
        let mut y = poisoned(&gpu, rows * width);
        kernels.scale_by_dot(s, &dx, &dv, &mut y, rows).unwrap();
        let what = format!("scale_by_dot {rows}x{width} f32");
        assert_within(&what, &down(&gpu, &y), &want, 1e-6);
        let mut y = s.alloc_zeros::<half::bf16>(rows * width).unwrap();
        gpu::poison_nan(s, &mut y).unwrap();
        kernels.scale_by_dot(s, &dx, &dv, &mut y, rows).unwrap();
        let got: Vec<f32> = gpu::download(s, &y)
            .unwrap()
            .iter()
            .map(|b| b.to_f32())
            .collect();
        assert_within(
            &format!("scale_by_dot {rows}x{width} bf16"),
            &got,
            &want,
            4e-3,
        );
    }
}

/// The CNNs' ReLU and its backward, the residual add, and the two in one, in f32 and bf16
/// storage: f32 arithmetic per value, rounded once in bf16, so bit for bit.
#[test]
fn relu_and_add_match_the_host_in_f32_and_bf16() {
    use attnrt::kernels::conv2d::Element;
    use half::bf16;

    use crate::typed::{download, random as typed_random, rounded, upload};

    fn one<T: Element>(gpu: &attnrt::gpu::Gpu, kernels: &ElementwiseKernels, n: usize) {
        let s = gpu.stream();
        let mut rng = crate::rng(39);
        let (x, g) = (
            typed_random::<T>(&mut rng, n),
            typed_random::<T>(&mut rng, n),
        );
        let relu: Vec<f32> = x.iter().map(|&v| v.max(0.0)).collect();
        let mut y = upload::<T>(gpu, &g);
        kernels.relu(s, &upload::<T>(gpu, &x), &mut y, n).unwrap();
        assert_eq!(
            to_bits(&download(gpu, &y)),
            to_bits(&relu),
            "relu {}",
            T::NAME
        );
        let mut want = g.clone();
        relu_backward(&mut want, &relu);
        let mut dx = upload::<T>(gpu, &g);
        kernels.relu_backward(s, &mut dx, &y, n).unwrap();
        assert_eq!(
            to_bits(&download(gpu, &dx)),
            to_bits(&want),
            "relu_backward {}",
            T::NAME
        );
        let mut want = g.clone();
        add(&mut want, &x);
        let mut sum = upload::<T>(gpu, &g);
        kernels.add(s, &mut sum, &upload::<T>(gpu, &x), n).unwrap();
        assert_eq!(
            to_bits(&download(gpu, &sum)),
            to_bits(&rounded::<T>(&want)),
            "add {}",
            T::NAME
        );
        let mut y = upload::<T>(gpu, &vec![f32::NAN; n]);
        let (a, b) = (upload::<T>(gpu, &x), upload::<T>(gpu, &g));
        kernels.add_relu(s, &a, &b, &mut y, n).unwrap();
        assert_eq!(
            to_bits(&download(gpu, &y)),
            to_bits(&rounded::<T>(&add_relu(&x, &g))),
            "add_relu {}",
            T::NAME
        );
    }

    let Some(gpu) = gpu_or_skip("relu_and_add_match_the_host_in_f32_and_bf16") else {
        return;
    };
    let kernels = ElementwiseKernels::load(&gpu).unwrap();
    // 4099 runs one value a thread, 4096 eight (the vector width the launchers pick).
    for n in [4099, 4096] {
        one::<f32>(&gpu, &kernels, n);
        one::<bf16>(&gpu, &kernels, n);
    }
}
