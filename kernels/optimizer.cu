// The optimizers' parameter updates, one thread per parameter (grid-stride). Parameters,
// gradients and optimizer state are flat f32 vectors of n values. The update rules are
// those of the CPU reference (src/kernels/optimizer/cpu.rs), operation for operation, so the
// GPU and CPU trainers take the same steps.
//
// Variants:
//   sgd_f32    SGD with momentum: g' = g + weight_decay * p, v = momentum * v + g',
//              p -= lr * v.
//   adamw_f32  AdamW (decoupled weight decay): m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
//              p -= lr * (weight_decay * p + (m / c1) / (sqrt(v / c2) + eps)), where c1, c2
//              are the bias corrections 1 - beta^t, computed once per step on the host.
#include "common.cuh"

ATTNRT_KERNEL void sgd_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ v,
                           long long n, float lr, float momentum, float weight_decay) {
    GRID_STRIDE(i, n) {
        float gi = g[i] + weight_decay * p[i];
        float vi = momentum * v[i] + gi;
        v[i] = vi;
        p[i] -= lr * vi;
    }
}

ATTNRT_KERNEL void adamw_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, long long n, float lr, float beta1, float beta2,
                             float eps, float weight_decay, float c1, float c2) {
    GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float update = (mi / c1) / (sqrtf(vi / c2) + eps);
        p[i] -= lr * (weight_decay * p[i] + update);
    }
}
