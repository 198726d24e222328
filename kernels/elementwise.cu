// Small element-wise ops of the trainer's passes and the tracker's heads, one thread per
// element (grid-stride).
// Layouts: flat f32 arrays of n values; add_periodic's pos holds one period.
//
// Variants:
//   add_{f32,bf16}     y[i] += x[i]: residual connections and gradient sums.
//   add_periodic_f32   y[i] += pos[i % period]: the ViT's position embedding (period =
//                      tokens * width), added to every image's rows.
//   relu_{f32,bf16}    y[i] = max(x[i], 0): the CNNs' ReLUs that no epilogue takes (the
//                      linear layers' and most convolutions' and batch norms' are fused).
//   relu_backward_{f32,bf16}  dx[i] = 0 where the ReLU's output y[i] was not positive (its
//                      gradient is zero there).
//   add_relu_{f32,bf16}  y[i] = max(a[i] + b[i], 0): a residual connection and the ReLU after
//                      it in one pass (ResNet's blocks), the sum rounded once (for bf16 the
//                      same value as rounding the sum, then the ReLU).
// The bf16 variants read and write bf16 storage and compute in f32 (dtype.cuh). add, add_relu
// and relu_backward take `vec`, the values a thread handles (8, 4, 2 or 1: the launcher's
// largest that divides n and the buffers' alignment), with the same arithmetic whatever it is.
//   scale_by_dot_{f32,bf16}  each row times its dot product with a vector (see below; one
//                      warp per row, not one thread per element).
#include "common.cuh"
#include "dtype.cuh"

template <int V, typename T>
__device__ __forceinline__ void add(T* __restrict__ y, const T* __restrict__ x, long long n) {
    GRID_STRIDE(iv, n / V) {
        float a[V], b[V];
        load_vec<V>(y, iv * V, a);
        load_vec<V>(x, iv * V, b);
#pragma unroll
        for (int j = 0; j < V; ++j) a[j] += b[j];
        store_vec<V>(y, iv * V, a);
    }
}

ATTNRT_KERNEL void add_f32(float* y, const float* x, long long n, int vec) {
    BY_VEC(vec, add, y, x, n);
}
ATTNRT_KERNEL void add_bf16(bf16_t* y, const bf16_t* x, long long n, int vec) {
    BY_VEC(vec, add, y, x, n);
}

ATTNRT_KERNEL void add_periodic_f32(float* __restrict__ y, const float* __restrict__ pos, long long n,
                                    int period) {
    GRID_STRIDE(i, n) { y[i] += pos[i % period]; }
}

template <typename T>
__device__ __forceinline__ void relu(const T* __restrict__ x, T* __restrict__ y, long long n) {
    GRID_STRIDE(i, n) { store_f(y, i, fmaxf(load_f(x, i), 0.0f)); }
}

ATTNRT_KERNEL void relu_f32(const float* x, float* y, long long n) { relu(x, y, n); }
ATTNRT_KERNEL void relu_bf16(const bf16_t* x, bf16_t* y, long long n) { relu(x, y, n); }

template <int V, typename T>
__device__ __forceinline__ void add_relu(const T* __restrict__ a, const T* __restrict__ b,
                                         T* __restrict__ y, long long n) {
    GRID_STRIDE(iv, n / V) {
        float fa[V], fb[V];
        load_vec<V>(a, iv * V, fa);
        load_vec<V>(b, iv * V, fb);
#pragma unroll
        for (int j = 0; j < V; ++j) fa[j] = fmaxf(fa[j] + fb[j], 0.0f);
        store_vec<V>(y, iv * V, fa);
    }
}

ATTNRT_KERNEL void add_relu_f32(const float* a, const float* b, float* y, long long n, int vec) {
    BY_VEC(vec, add_relu, a, b, y, n);
}
ATTNRT_KERNEL void add_relu_bf16(const bf16_t* a, const bf16_t* b, bf16_t* y, long long n,
                                 int vec) {
    BY_VEC(vec, add_relu, a, b, y, n);
}

template <int V, typename T>
__device__ __forceinline__ void relu_backward(T* __restrict__ dx, const T* __restrict__ y,
                                              long long n) {
    GRID_STRIDE(iv, n / V) {
        float d[V], fy[V];
        load_vec<V>(dx, iv * V, d);
        load_vec<V>(y, iv * V, fy);
#pragma unroll
        for (int j = 0; j < V; ++j) d[j] = fy[j] > 0.0f ? d[j] : 0.0f;
        store_vec<V>(dx, iv * V, d);
    }
}

ATTNRT_KERNEL void relu_backward_f32(float* dx, const float* y, long long n, int vec) {
    BY_VEC(vec, relu_backward, dx, y, n);
}
ATTNRT_KERNEL void relu_backward_bf16(bf16_t* dx, const bf16_t* y, long long n, int vec) {
    BY_VEC(vec, relu_backward, dx, y, n);
}

// scale_by_dot_<out>: y[r][:] = x[r][:] * dot(x[r][:], v) over `rows` rows of `width` values
// (the tracker's search features weighted by their similarity to the decoder output: the
// corner head's input). One warp per row, the dot in f32 (lanes' partial sums, then the
// shuffle tree); out is f32 or bf16 (rounded to nearest even, the NaN case aside: the
// inputs are finite activations).
__device__ __forceinline__ void scale_by_dot_store(float* y, long long i, float v) { y[i] = v; }
__device__ __forceinline__ void scale_by_dot_store(unsigned short* y, long long i, float v) {
    unsigned u = __float_as_uint(v);
    y[i] = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <typename T>
__device__ __forceinline__ void scale_by_dot(const float* __restrict__ x, const float* __restrict__ v,
                                             T* __restrict__ y, int rows, int width) {
    const int lane = threadIdx.x % 32;
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const float* xr = x + row * width;
    float d = 0.0f;
    for (int i = lane; i < width; i += 32) d += xr[i] * v[i];
    d = warp_sum(d);
    for (int i = lane; i < width; i += 32) scale_by_dot_store(y, row * width + i, xr[i] * d);
}

ATTNRT_KERNEL void scale_by_dot_f32(const float* __restrict__ x, const float* __restrict__ v,
                                    float* __restrict__ y, int rows, int width) {
    scale_by_dot(x, v, y, rows, width);
}

ATTNRT_KERNEL void scale_by_dot_bf16(const float* __restrict__ x, const float* __restrict__ v,
                                     unsigned short* __restrict__ y, int rows, int width) {
    scale_by_dot(x, v, y, rows, width);
}
