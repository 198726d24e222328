// The two activation types of the CNN ops, read and written as f32: `float`, and bf16 held
// as its 16 raw bits (`unsigned short`), widened exactly on load and rounded to nearest
// even on store (NaN kept quiet), as cast.cu and half::bf16::from_f32 round. Kernels are
// templates over the storage type; every sum and statistic stays f32.
#pragma once

typedef unsigned short bf16_t;

__device__ __forceinline__ float load_f(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load_f(const bf16_t* p, long long i) {
    return __uint_as_float((unsigned)p[i] << 16);
}

__device__ __forceinline__ void store_f(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f(bf16_t* p, long long i, float v) {
    unsigned u = __float_as_uint(v);
    p[i] = (u & 0x7fffffffu) > 0x7f800000u
               ? (bf16_t)((u >> 16) | 0x40u)
               : (bf16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
