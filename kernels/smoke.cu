// Smoke-test kernels for the runtime layer: they exercise module loading, launches, streams
// and graphs, and nothing of the model.
//
// axpy_f32: y[i] = a * x[i] + y[i] for i in [0, n). Layout: flat f32 arrays.
#include "common.cuh"

ATTNRT_KERNEL void axpy_f32(float a, const float* __restrict__ x, float* __restrict__ y, long long n) {
    GRID_STRIDE(i, n) { y[i] = a * x[i] + y[i]; }
}
