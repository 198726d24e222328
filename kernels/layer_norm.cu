// LayerNorm over the last axis (biased variance, eps given), one warp per row.
//
// Layouts (row-major): x, y (rows, c); gamma, beta (c); add and y_plus (rows, c).
// The residual sum that precedes every LayerNorm in the model is already in x: the linear
// epilogue linear_bias_residual_f32 wrote it (fusing the normalisation into the GEMM would
// need whole rows per block; c = 256 rows are short, so one extra pass over L2 is cheap).
//
// Variants:
//   layer_norm_f32  y = LN(x) * gamma + beta; when `add` is non-null it also writes
//                   y_plus = y + add (the decoder's `t + qpos`, the next query's input).
//
// Statistics are two-pass (mean, then the mean of squared deviations) over the row held in
// L1, which avoids the cancellation of E[x^2] - E[x]^2.
#include "common.cuh"

struct LayerNormArgs {
    const float* x;
    const float* gamma;
    const float* beta;
    float* y;
    const float* add;  // optional, (rows, c)
    float* y_plus;     // written iff add is non-null
    long long rows;
    int c;
    float eps;
};

ATTNRT_KERNEL void layer_norm_f32(LayerNormArgs p) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= p.rows) return;  // whole warps leave together: the shuffles stay full
    const float* x = p.x + row * p.c;
    float sum = 0.0f;
    for (int j = lane; j < p.c; j += 32) sum += x[j];
    const float mean = warp_sum(sum) / p.c;
    float sq = 0.0f;
    for (int j = lane; j < p.c; j += 32) {
        const float d = x[j] - mean;
        sq = fmaf(d, d, sq);
    }
    const float inv = rsqrtf(warp_sum(sq) / p.c + p.eps);
    for (int j = lane; j < p.c; j += 32) {
        const float v = (x[j] - mean) * inv * p.gamma[j] + p.beta[j];
        p.y[row * p.c + j] = v;
        if (p.add) p.y_plus[row * p.c + j] = v + p.add[row * p.c + j];
    }
}
