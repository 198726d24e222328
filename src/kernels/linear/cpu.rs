//! The linear op's CPU reference: `y = x W^T + b` and its backward, f64 accumulation, rows in
//! parallel (rayon). The products are [`super::gemm`]'s SIMD kernels: this is the reference
//! the CPU engine runs the transformer with, the trainer's CPU engine trains with (on
//! operands already rounded by `Precision::operand` in bf16), and the tests hold
//! `kernels/linear.cu` to. Shapes: `x` `(n, k)`, `weight` `(m, k)` (PyTorch's layout), `bias`
//! `(m)`, `y` `(n, m)`.

use rayon::prelude::*;

use super::gemm::{ROWS, nn_rows, nt_rows};

/// `y = x W^T + b` in f64, each element rounded to f32 once.
pub fn linear(x: &[f32], weight: &[f32], bias: &[f32], nmk: (usize, usize, usize)) -> Vec<f32> {
    let mut y = vec![0.0f32; nmk.0 * nmk.1];
    products(x, weight, Some(bias), nmk, &mut y, |v| v as f32);
    y
}

/// `x W^T (+ b)` in f64, unrounded: for callers that apply an epilogue of their own first
/// (the tests of the kernels' scale, ReLU and k-split epilogues).
pub fn linear_f64(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    nmk: (usize, usize, usize),
) -> Vec<f64> {
    let mut y = vec![0.0f64; nmk.0 * nmk.1];
    products(x, weight, bias, nmk, &mut y, |v| v);
    y
}

/// The rows of `x W^T + b` in blocks of [`ROWS`] (in parallel), each value through `store`.
fn products<T: Send>(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    (n, m, k): (usize, usize, usize),
    y: &mut [T],
    store: impl Fn(f64) -> T + Sync,
) {
    assert_eq!(x.len(), n * k, "linear: x is not (n, k)");
    assert_eq!(weight.len(), m * k, "linear: weight is not (m, k)");
    assert!(bias.is_none_or(|b| b.len() == m), "linear: bias is not (m)");
    if m == 0 || n == 0 {
        return;
    }
    y.par_chunks_mut(ROWS * m)
        .zip(x.par_chunks(ROWS * k.max(1)))
        .for_each(|(y_blk, x_blk)| {
            let rows = y_blk.len() / m;
            let a: Vec<f64> = x_blk.iter().map(|&v| v as f64).collect();
            let mut acc = vec![0.0f64; rows * m];
            nt_rows(&a, rows, weight, m, k, &mut acc);
            for (y_row, acc_row) in y_blk.chunks_exact_mut(m).zip(acc.chunks_exact(m)) {
                for (j, (dst, &v)) in y_row.iter_mut().zip(acc_row).enumerate() {
                    *dst = store(bias.map_or(v, |b| v + b[j] as f64));
                }
            }
        });
}

/// The backward of `y = x W^T + b` from `dy` `(n, m)`: `dW = dy^T x` `(m, k)` and, with
/// `input_grad`, `dx = dy W` `(n, k)`, each f64-accumulated and rounded once. The bias's
/// gradient is [`crate::kernels::bias_grad::cpu::bias_grad`].
pub fn linear_backward(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    (n, m, k): (usize, usize, usize),
    input_grad: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    assert_eq!(x.len(), n * k, "linear backward: x is not (n, k)");
    assert_eq!(weight.len(), m * k, "linear backward: weight is not (m, k)");
    assert_eq!(dy.len(), n * m, "linear backward: dy is not (n, m)");
    // dW = dy^T x: rows of dy^T (one per output) against x (n, k).
    let mut dyt = vec![0.0f64; m * n];
    for (r, row) in dy.chunks_exact(m.max(1)).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            dyt[o * n + r] = v as f64;
        }
    }
    let mut dw = vec![0.0f32; m * k];
    nn_products(&dyt, x, (m, k, n), &mut dw);
    let dx = input_grad.then(|| {
        let a: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
        let mut dx = vec![0.0f32; n * k];
        nn_products(&a, weight, (n, k, m), &mut dx);
        dx
    });
    (dw, dx)
}

/// `out = a b` rounded to f32: `a` `(rows, inner)` f64, `b` `(inner, cols)` f32, rows in
/// parallel blocks.
fn nn_products(a: &[f64], b: &[f32], (rows, cols, inner): (usize, usize, usize), out: &mut [f32]) {
    if rows == 0 || cols == 0 {
        return;
    }
    out.par_chunks_mut(ROWS * cols)
        .zip(a.par_chunks(ROWS * inner.max(1)))
        .for_each(|(o_blk, a_blk)| {
            let r = o_blk.len() / cols;
            let mut acc = vec![0.0f64; r * cols];
            nn_rows(a_blk, r, b, cols, inner, &mut acc);
            for (dst, v) in o_blk.iter_mut().zip(&acc) {
                *dst = *v as f32;
            }
        });
}
