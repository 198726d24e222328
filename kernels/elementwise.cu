// Small element-wise ops of the trainer's passes, one thread per element (grid-stride).
// Layouts: flat f32 arrays of n values; add_periodic's pos holds one period.
//
// Variants:
//   add_f32            y[i] += x[i]: residual connections and gradient sums.
//   add_periodic_f32   y[i] += pos[i % period]: the ViT's position embedding (period =
//                      tokens * width), added to every image's rows.
//   relu_backward_f32  dx[i] = 0 where the ReLU's output y[i] was not positive (its gradient
//                      is zero there); the forward ReLU is fused into the linear layers'
//                      epilogues (linear.cu, cuBLASLt's), so only the backward is a kernel.
#include "common.cuh"

ATTNRT_KERNEL void add_f32(float* __restrict__ y, const float* __restrict__ x, long long n) {
    GRID_STRIDE(i, n) { y[i] += x[i]; }
}

ATTNRT_KERNEL void add_periodic_f32(float* __restrict__ y, const float* __restrict__ pos, long long n,
                                    int period) {
    GRID_STRIDE(i, n) { y[i] += pos[i % period]; }
}

ATTNRT_KERNEL void relu_backward_f32(float* __restrict__ dx, const float* __restrict__ y, long long n) {
    GRID_STRIDE(i, n) {
        if (!(y[i] > 0.0f)) dx[i] = 0.0f;
    }
}
