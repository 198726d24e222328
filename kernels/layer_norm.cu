// LayerNorm over rows (biased variance, eps given), forward and backward, one warp per row.
//
// Math. For a row v of c values: mean = sum v / c, var = sum (v - mean)^2 / c,
//   rstd = 1 / sqrt(var + eps), xhat = (v - mean) * rstd, y = xhat * gamma + beta.
// Backward, with g = dy * gamma:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
// and the parameters' gradients are column sums: dgamma = sum_rows dy * xhat, dbeta =
// sum_rows dy (the trainer takes them with a GEMM against ones, so the kernel writes the
// products dy * xhat).
//
// Layouts (row-major): parts (n_parts, rows, c), part_stride = rows * c apart; bias, gamma,
// beta (c); residual, add, y, y_plus, xhat, dy, dx, dyxhat (rows, c); rstd (rows).
//
// Variants (each forward as _c256, _c512 and _c1024, for rows of at most that width):
//   add_layer_norm_f32       the inference forward: v = parts[0] + ... + parts[n_parts-1] +
//                            bias + residual (in that order; bias and residual optional),
//                            y = LN(v) * gamma + beta, and when `add` is non-null also
//                            y_plus = y + add (the decoder's `t + qpos`, its next query's
//                            input). The parts are the k-split partial products of
//                            linear_split_k_f32 (linear.cu): summing them here, in a fixed
//                            order, is the GEMM's epilogue. Plain LayerNorm is one part and no
//                            bias or residual. linear_split_k_norm_* (linear.cu) runs the same
//                            rows (layer_norm.cuh) at the end of the GEMM itself.
//   layer_norm_f32           the training forward: the same body (one template, so both
//                            compute bit for bit alike), which also writes xhat and rstd for
//                            the backward. It is a second entry point, not a run-time flag,
//                            so the inference kernel's code stays exactly what it was.
//   layer_norm_backward_f32  dx (added to dx when `accumulate`: the residual stream's
//                            gradient), and dyxhat = dy * xhat.
//
// The forward keeps the row (c <= 1024) in registers and reads it once; statistics are
// two-pass (mean, then the mean of squared deviations), which avoids the cancellation of
// E[v^2] - E[v]^2. The backward's rows have any width: it walks them in global memory.
#include "layer_norm.cuh"

// The forward, one row per warp, rows of at most C; SAVE also writes xhat and rstd.
template <int C, bool SAVE>
__device__ __forceinline__ void add_layer_norm(const LayerNormArgs& p) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= p.rows) return;  // whole warps leave together: the shuffles stay full
    // Rows of up to 256 (8 values a lane) load early; wider ones would hold five times
    // their values in registers for it.
    add_layer_norm_row<C / 32, SAVE, (C <= 256)>(p, row, threadIdx.x & 31);
}

// Each forward for rows of at most 256, 512 and 1024 (the launcher takes the narrowest that
// holds c): the same code and the same sums in the same order, so the same bits.
#define LAYER_NORM_FORWARD(C)                                                                    \
    ATTNRT_KERNEL void add_layer_norm_f32_c##C(LayerNormArgs p) { add_layer_norm<C, false>(p); } \
    ATTNRT_KERNEL void layer_norm_f32_c##C(LayerNormArgs p) { add_layer_norm<C, true>(p); }
LAYER_NORM_FORWARD(256)
LAYER_NORM_FORWARD(512)
LAYER_NORM_FORWARD(1024)

ATTNRT_KERNEL void layer_norm_backward_f32(const float* __restrict__ dy, const float* __restrict__ xhat,
                                           const float* __restrict__ rstd, const float* __restrict__ gamma,
                                           float* __restrict__ dx, float* __restrict__ dyxhat, int rows,
                                           int d, int accumulate) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    long long o = (long long)row * d;
    float sg = 0.0f, sgh = 0.0f;
    for (int i = lane; i < d; i += 32) {
        float g = dy[o + i] * gamma[i];
        sg += g;
        sgh += g * xhat[o + i];
    }
    float mg = warp_sum(sg) / d, mgh = warp_sum(sgh) / d;
    float rs = rstd[row];
    for (int i = lane; i < d; i += 32) {
        float h = xhat[o + i];
        float v = rs * (dy[o + i] * gamma[i] - mg - h * mgh);
        dx[o + i] = accumulate ? dx[o + i] + v : v;
        dyxhat[o + i] = dy[o + i] * h;
    }
}
