// Softmax over the rows of a matrix, forward and backward, in place: the probabilities of
// the ViT's standard attention (its scores and products are cuBLAS batched GEMMs; window
// attention has its own fused kernels, window_attention.cu).
//
// Math, per row s: p = exp(s - max s) / sum exp(s - max s). Backward, with the incoming
// gradient dp and a factor `scale` (the scores' hd^-0.5, applied on the way):
//   ds = scale * p * (dp - sum_k p_k dp_k).
// Layouts: (rows, cols) row-major.
//
// Variants (one warp per row):
//   softmax_f32           s becomes p.
//   softmax_backward_f32  dp becomes ds, reading p.
#include "common.cuh"

ATTNRT_KERNEL void softmax_f32(float* __restrict__ s, int rows, int cols) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    float* r = s + (long long)row * cols;
    float m = -INFINITY;
    for (int i = lane; i < cols; i += 32) m = fmaxf(m, r[i]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int i = lane; i < cols; i += 32) sum += expf(r[i] - m);
    sum = warp_sum(sum);
    for (int i = lane; i < cols; i += 32) r[i] = expf(r[i] - m) / sum;
}

ATTNRT_KERNEL void softmax_backward_f32(const float* __restrict__ p, float* __restrict__ dp, int rows,
                                        int cols, float scale) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    long long o = (long long)row * cols;
    float inner = 0.0f;
    for (int i = lane; i < cols; i += 32) inner += p[o + i] * dp[o + i];
    inner = warp_sum(inner);
    for (int i = lane; i < cols; i += 32) dp[o + i] = scale * p[o + i] * (dp[o + i] - inner);
}
