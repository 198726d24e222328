//! Each op's kernels (`kernels/<op>.cu`) against its CPU reference (`<op>::cpu`, f64
//! accumulation), one module per op named after it, on odd sizes: partial tiles and blocks,
//! rows that are not multiples of a warp, batch > 1, several heads. Inputs are fresh random
//! values and outputs are poisoned (NaN) first, so an unwritten element fails. Skips without
//! a GPU; `ATTNRT_REQUIRE_GPU=1` makes a missing GPU fail.

mod avg_pool;
mod batch_norm;
mod bias_grad;
mod cast;
mod channel_copy;
mod conv2d;
mod crop;
mod dropout;
mod elementwise;
mod gelu;
mod heads;
mod layer_norm;
mod linear;
mod max_pool;
mod mean_tokens;
mod optimizer;
mod patchify;
mod soft_argmax;
mod softmax;
mod softmax_cross_entropy;
mod window_attention;

use attnrt::base::relative_error;
use attnrt::gpu::{self, Gpu};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What an f32 kernel is held to against its f64 reference (relative Frobenius error).
pub const TOL: f64 = 1e-5;

/// `n` values uniform in [-1, 1).
pub fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_within(what, got, want, TOL);
}

/// `||got - want|| / ||want|| <= tol` (any non-finite value in `got` fails).
pub fn assert_within(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let err = relative_error(got, want).expect("same length");
    println!("{what}: relative error {err:.3e}");
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
}

/// A NaN-filled device buffer of `n` floats.
pub fn poisoned(gpu: &Gpu, n: usize) -> gpu::DeviceBuffer<f32> {
    let s = gpu.stream();
    let mut b = gpu::upload(s, &vec![0.0f32; n]).unwrap();
    gpu::poison_nan(s, &mut b).unwrap();
    b
}

pub fn up(gpu: &Gpu, v: &[f32]) -> gpu::DeviceBuffer<f32> {
    gpu::upload(gpu.stream(), v).unwrap()
}

pub fn down(gpu: &Gpu, b: &gpu::DeviceBuffer<f32>) -> Vec<f32> {
    gpu::download(gpu.stream(), b).unwrap()
}

pub fn to_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Helpers for kernels of either activation type ([`Element`]: f32 or bf16 storage), values
/// passed as f32.
pub mod typed {
    use attnrt::gpu::{self, Gpu};
    use attnrt::kernels::conv2d::Element;
    use rand_chacha::ChaCha8Rng;

    /// `n` random values in [-1, 1), as the storage type holds them (the reference takes
    /// these).
    pub fn random<T: Element>(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        let mut v = crate::random(rng, n);
        v.iter_mut().for_each(|x| *x = T::from_f32(*x).to_f32());
        v
    }

    pub fn upload<T: Element>(gpu: &Gpu, v: &[f32]) -> gpu::DeviceBuffer<T> {
        let host: Vec<T> = v.iter().map(|&x| T::from_f32(x)).collect();
        gpu::upload(gpu.stream(), &host).unwrap()
    }

    /// A device buffer of `n` NaNs.
    pub fn poisoned<T: Element>(gpu: &Gpu, n: usize) -> gpu::DeviceBuffer<T> {
        let mut b = gpu::upload(gpu.stream(), &vec![T::default(); n]).unwrap();
        gpu::poison_nan(gpu.stream(), &mut b).unwrap();
        b
    }

    pub fn download<T: Element>(gpu: &Gpu, b: &gpu::DeviceBuffer<T>) -> Vec<f32> {
        let v: Vec<T> = gpu::download(gpu.stream(), b).unwrap();
        v.into_iter().map(T::to_f32).collect()
    }

    /// `v` rounded to the storage type (what a kernel writing `T` can at best give).
    pub fn rounded<T: Element>(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| T::from_f32(x).to_f32()).collect()
    }
}
