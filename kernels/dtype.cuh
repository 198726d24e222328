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

// Vector access: V consecutive values from element i (i and the buffer aligned to V values,
// which the launchers check before they pick V > 1), one 16-byte load or store where V values
// fill it, each widened or rounded as load_f and store_f do, so a kernel's results do not
// depend on V.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
    T v[V];
};

template <int V, typename T>
__device__ __forceinline__ void load_vec(const T* p, long long i, float (&f)[V]) {
    const Pack<T, V> k = *reinterpret_cast<const Pack<T, V>*>(p + i);
#pragma unroll
    for (int j = 0; j < V; ++j) f[j] = load_f(k.v, j);
}

template <int V, typename T>
__device__ __forceinline__ void store_vec(T* p, long long i, const float (&f)[V]) {
    Pack<T, V> k;
#pragma unroll
    for (int j = 0; j < V; ++j) store_f(k.v, j, f[j]);
    *reinterpret_cast<Pack<T, V>*>(p + i) = k;
}

// Calls F<V>(args...) for the launcher's vector width `vec` (8, 4, 2 or 1).
#define BY_VEC(vec, F, ...)            \
    switch (vec) {                     \
        case 8: F<8>(__VA_ARGS__); break; \
        case 4: F<4>(__VA_ARGS__); break; \
        case 2: F<2>(__VA_ARGS__); break; \
        default: F<1>(__VA_ARGS__); break; \
    }
