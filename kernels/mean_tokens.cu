// The mean over each image's tokens (the ViT's pooling before its head), forward and
// backward. Layouts: x, dx (n * T, d) row-major, image img's tokens in rows img*T .. +T;
// out, dout (n, d).
//
// Variants:
//   mean_tokens_f32           out[img, c] = sum over tokens of x[img * T + tok, c] / T, one
//                             thread per output value, tokens summed in order.
//   mean_tokens_backward_f32  dx[img * T + tok, c] = dout[img, c] / T, one thread per value.
#include "common.cuh"

ATTNRT_KERNEL void mean_tokens_f32(const float* __restrict__ x, float* __restrict__ out, int n, int t, int d) {
    GRID_STRIDE(i, (long long)n * d) {
        long long img = i / d;
        int c = i % d;
        float s = 0.0f;
        for (int tok = 0; tok < t; ++tok) s += x[(img * t + tok) * d + c];
        out[i] = s / t;
    }
}

ATTNRT_KERNEL void mean_tokens_backward_f32(const float* __restrict__ dout, float* __restrict__ dx, int n,
                                            int t, int d) {
    GRID_STRIDE(i, (long long)n * t * d) {
        long long row = i / d;
        int c = i % d;
        dx[i] = dout[(row / t) * d + c] / t;
    }
}
