// GELU, the tanh approximation, forward and backward (the ViT's MLP). cuBLASLt has a fused
// GELU epilogue, but with its own approximation; this one is the CPU reference's
// (src/kernels/gelu/cpu.rs).
//
// Math, with u = K (x + 0.044715 x^3), K = sqrt(2 / pi), t = tanh(u):
//   gelu(x)  = 0.5 x (1 + t),
//   gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) K (1 + 3 * 0.044715 x^2).
// Layouts: flat f32 arrays of n values.
//
// Variants:
//   gelu_f32           y = gelu(x).
//   gelu_backward_f32  d *= gelu'(x), in place on the incoming gradient.
#include "common.cuh"

#define GELU_K 0.7978845608028654f

ATTNRT_KERNEL void gelu_f32(const float* __restrict__ x, float* __restrict__ y, long long n) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(GELU_K * (v + 0.044715f * v * v * v)));
    }
}

ATTNRT_KERNEL void gelu_backward_f32(const float* __restrict__ x, float* __restrict__ d, long long n) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        float t = tanhf(GELU_K * (v + 0.044715f * v * v * v));
        d[i] *= 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * 0.044715f * v * v);
    }
}
