// The bias + residual + LayerNorm epilogue of the output projection and FFN2, and plain
// LayerNorm (biased variance, eps given), one warp per row.
//
// Layouts (row-major): parts (n_parts, rows, c), part_stride = rows * c apart; bias, gamma,
// beta (c); residual, add, y, y_plus (rows, c).
//
// Variants:
//   add_layer_norm_f32  v = parts[0] + ... + parts[n_parts-1] + bias + residual (in that
//                       order; bias and residual optional), y = LN(v) * gamma + beta, and
//                       when `add` is non-null also y_plus = y + add (the decoder's
//                       `t + qpos`, its next query's input). The parts are the k-split
//                       partial products of linear_split_k_f32 (linear.cu): summing them
//                       here, in a fixed order, is the GEMM's epilogue. Plain LayerNorm is
//                       one part and no bias or residual.
//
// The row (c <= 1024) stays in registers; statistics are two-pass (mean, then the mean of
// squared deviations), which avoids the cancellation of E[v^2] - E[v]^2.
#include "common.cuh"

struct LayerNormArgs {
    const float* parts;
    const float* bias;      // optional, (c)
    const float* residual;  // optional, (rows, c)
    const float* gamma;
    const float* beta;
    float* y;
    const float* add;       // optional, (rows, c)
    float* y_plus;          // written iff add is non-null
    long long rows, part_stride;
    int c, n_parts;
    float eps;
};

namespace {
constexpr int MAX_C = 1024, PER_LANE = MAX_C / 32;
}

ATTNRT_KERNEL void add_layer_norm_f32(LayerNormArgs p) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= p.rows) return;  // whole warps leave together: the shuffles stay full
    const long long base = row * p.c;
    float v[PER_LANE];
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const int j = lane + 32 * i;
        v[i] = 0.0f;
        if (j >= p.c) continue;
        for (int s = 0; s < p.n_parts; ++s) v[i] += p.parts[s * p.part_stride + base + j];
        if (p.bias) v[i] += p.bias[j];
        if (p.residual) v[i] += p.residual[base + j];
        sum += v[i];
    }
    const float mean = warp_sum(sum) / p.c;
    float sq = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const float d = v[i] - mean;
        if (lane + 32 * i < p.c) sq = fmaf(d, d, sq);
    }
    const float inv = rsqrtf(warp_sum(sq) / p.c + p.eps);
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const int j = lane + 32 * i;
        if (j >= p.c) continue;
        const float y = (v[i] - mean) * inv * p.gamma[j] + p.beta[j];
        p.y[base + j] = y;
        if (p.add) p.y_plus[base + j] = y + p.add[base + j];
    }
}
