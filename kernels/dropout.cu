// dropout: train-mode dropout, y = x / (1 - p) where kept, 0 where dropped, f32 or bf16
// storage (dtype.cuh). The mask is the CPU reference's (src/kernels/dropout/cpu.rs), bit for
// bit: value i is kept when SplitMix64's finaliser of seed ^ (i * 0x9E3779B97F4A7C15), its
// top 24 bits as a uniform in [0, 1) (exact in f32), is at least p. It depends only on the
// seed and the position, so any grid, thread order or device draws the same mask, and the
// backward pass is the same call on the gradient. The host passes scale = 1 / (1 - p)
// computed in f32 as the reference does; one f32 product per value, so f32 results are the
// reference's exactly.
//
// Layout: flat arrays of n values; in place (x == y) is allowed. One thread per value.
// Variants: dropout_f32, dropout_bf16.
#include "common.cuh"
#include "dtype.cuh"

__device__ __forceinline__ bool keep(unsigned long long seed, long long i, float p) {
    unsigned long long z = seed ^ ((unsigned long long)i * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) / 16777216.0f >= p;
}

template <typename T>
__device__ __forceinline__ void dropout(const T* x, T* y, long long n, float p, float scale,
                                        long long seed) {
    GRID_STRIDE(i, n) {
        float v = load_f(x, i);
        store_f(y, i, keep((unsigned long long)seed, i, p) ? v * scale : 0.f);
    }
}

ATTNRT_KERNEL void dropout_f32(const float* x, float* y, long long n, float p, float scale,
                               long long seed) {
    dropout(x, y, n, p, scale, seed);
}

ATTNRT_KERNEL void dropout_bf16(const bf16_t* x, bf16_t* y, long long n, float p, float scale,
                                long long seed) {
    dropout(x, y, n, p, scale, seed);
}
