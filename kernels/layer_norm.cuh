// The LayerNorm forward's row: layer_norm.cu's kernels, and linear.cu's few-rows split-k GEMM
// that normalises its own rows (linear_rows_split_k_norm_*), share it so that both compute bit
// for bit alike. Math, layouts and variants: layer_norm.cu.
#pragma once
#include "common.cuh"
#include "tensor_core.cuh"

struct LayerNormArgs {
    const float* parts;
    const float* bias;      // optional, (c)
    const float* residual;  // optional, (rows, c)
    const float* gamma;
    const float* beta;
    float* y;
    const float* add;       // optional, (rows, c)
    float* y_plus;          // written iff add is non-null
    float* xhat;            // layer_norm_f32 only, (rows, c)
    float* rstd;            // layer_norm_f32 only, (rows)
    long long rows, part_stride;
    int c, n_parts;
    float eps;
};
// The Rust mirror asserts the same size: a field added on one side only fails both builds.
static_assert(sizeof(LayerNormArgs) == 112, "mirrored in src/kernels/layer_norm.rs");

namespace layer_norm {
constexpr int MAX_C = 1024;
}

// Row `row` of the forward, by one whole warp (`lane` its lane), for rows of c <= 32 *
// PER_LANE: a lane holds PER_LANE values in registers, so a kernel for narrower rows needs
// fewer registers and keeps more warps resident (the ViT trainer's c = 384 runs with 16 a
// lane: 56 registers against 80 with 32, by cuobjdump -res-usage, and 29.6 us a launch against
// 38.7 on an H100: docs/PERF.md). SAVE also writes xhat and rstd. The parts are read through
// L2 (__ldcg): in linear_rows_split_k_norm other blocks of the same launch wrote them.
// EARLY loads the row's other operands before the parts (below); the split-k GEMM's tail
// leaves it off: within the GEMM's 64 registers it spilled 220-240 bytes (ptxas).
template <int PER_LANE, bool SAVE, bool EARLY>
__device__ __forceinline__ void add_layer_norm_row(const LayerNormArgs& p, long long row,
                                                   int lane) {
    static_assert(PER_LANE * 32 <= layer_norm::MAX_C, "rows of at most MAX_C");
    const long long base = row * p.c;
    // EARLY: the bias, residual, gamma, beta and add are loaded before the parts, so that
    // their loads are in flight with the parts' instead of waiting behind the sums (a chain
    // of four memory latencies a row becomes two); the arithmetic is the same either way.
    constexpr int E = EARLY ? PER_LANE : 1;
    float e_bias[E], e_res[E], e_gamma[E], e_beta[E], e_add[E];
    if constexpr (EARLY) {
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            const int j = lane + 32 * i;
            const bool in = j < p.c;
            e_bias[i] = in && p.bias ? p.bias[j] : 0.0f;
            e_res[i] = in && p.residual ? p.residual[base + j] : 0.0f;
            e_gamma[i] = in ? p.gamma[j] : 0.0f;
            e_beta[i] = in ? p.beta[j] : 0.0f;
            e_add[i] = in && p.add ? p.add[base + j] : 0.0f;
        }
    }
    if constexpr (!EARLY) {
        // No registers to spare: start the operands' lines toward L1 instead, so that their
        // loads after the sums hit L1 rather than wait on L2 (the values and the arithmetic
        // are the same either way).
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            const int j = lane + 32 * i;
            if (j >= p.c) continue;
            if (p.bias) prefetch_l1(p.bias + j);
            if (p.residual) prefetch_l1(p.residual + base + j);
            prefetch_l1(p.gamma + j);
            prefetch_l1(p.beta + j);
            if (p.add) prefetch_l1(p.add + base + j);
        }
    }
    float v[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) v[i] = 0.0f;
    // Part by part, each lane's elements at once: one memory latency a part, not one an
    // element and part (each element still sums parts[0], parts[1], ... in order). Narrow
    // rows unroll four parts, so that their loads are in flight together (the decoder's FFN2
    // sums 16 parts of a row); wide rows would need four times their registers for it.
    constexpr int PART_UNROLL = PER_LANE <= 8 ? 4 : 1;
#pragma unroll PART_UNROLL
    for (int s = 0; s < p.n_parts; ++s) {
        const float* part = p.parts + s * p.part_stride + base;
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i)
            if (lane + 32 * i < p.c) v[i] += __ldcg(part + lane + 32 * i);
    }
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const int j = lane + 32 * i;
        if (j >= p.c) continue;
        if (p.bias) v[i] += EARLY ? e_bias[i % E] : p.bias[j];
        if (p.residual) v[i] += EARLY ? e_res[i % E] : p.residual[base + j];
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
    if (SAVE && lane == 0) p.rstd[row] = inv;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const int j = lane + 32 * i;
        if (j >= p.c) continue;
        const float h = (v[i] - mean) * inv;
        const float gamma = EARLY ? e_gamma[i % E] : p.gamma[j];
        const float beta = EARLY ? e_beta[i % E] : p.beta[j];
        const float y = h * gamma + beta;
        p.y[base + j] = y;
        if (SAVE) p.xhat[base + j] = h;
        if (p.add) p.y_plus[base + j] = y + (EARLY ? e_add[i % E] : p.add[base + j]);
    }
}
