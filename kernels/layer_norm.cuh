// LayerNorm of one row held by one warp, shared by layer_norm.cu and the kernels that fuse a
// LayerNorm into their own work (decoder.cu): both compute bit for bit alike.
#pragma once
#include "common.cuh"

namespace layer_norm {

constexpr int MAX_C = 1024, PER_LANE = MAX_C / 32;

struct RowStats {
    float mean, inv;  // inv = 1 / sqrt(var + eps)
};

// The statistics of a row of c <= MAX_C values, v[i] at column lane + 32 i (zero past c),
// two-pass (mean, then the mean of squared deviations: no cancellation of E[v^2] - E[v]^2).
// Every lane of the warp must call it.
__device__ __forceinline__ RowStats row_stats(const float (&v)[PER_LANE], int c, float eps) {
    const int lane = threadIdx.x & 31;
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i)
        if (lane + 32 * i < c) sum += v[i];
    const float mean = warp_sum(sum) / c;
    float sq = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const float d = v[i] - mean;
        if (lane + 32 * i < c) sq = fmaf(d, d, sq);
    }
    return {mean, rsqrtf(warp_sum(sq) / c + eps)};
}

}  // namespace layer_norm
