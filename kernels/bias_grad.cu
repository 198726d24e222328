// The bias gradient of a linear layer: db[c] = sum over rows of dy[r, c] (the MLP's; the
// ViT takes its column sums with a GEMM against ones). Layouts: dy (rows, cols) row-major,
// db (cols).
//
// One thread per column, rows in order: the sum is the same on every run and on every GPU,
// so replicas agree bit for bit.
//
// Variants:
//   bias_grad_f32
#include "common.cuh"

ATTNRT_KERNEL void bias_grad_f32(const float* __restrict__ dy, float* __restrict__ db, int rows, int cols) {
    GRID_STRIDE(c, cols) {
        float s = 0.0f;
        for (int r = 0; r < rows; ++r) s += dy[(long long)r * cols + c];
        db[c] = s;
    }
}
