// conv2d: the convolutions themselves run in cuDNN (src/kernels/conv2d.rs); this file holds
// only their epilogue for the configurations cuDNN's fused convolution + bias + activation
// does not take, and the bias gradient (cuDNN's does not take bf16 and is slow in f32).
//
// conv2d_epilogue_<dtype>: y = act(y + bias[c] + z), in place, over an NHWC tensor of n
// elements with c channels (the channel of element i is i % c). bias (c values) and z (n
// values, the residual) may each be null; act is ReLU when relu != 0, else the identity.
// The sum is formed in f32 and rounded once to the storage type (bf16: to nearest even).
// ReLU lets NaN through, like cuDNN's CUDNN_PROPAGATE_NAN.
#include <cuda_bf16.h>

#include "common.cuh"

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, long long i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, long long i, float v) {
    p[i] = __float2bfloat16_rn(v);
}

template <typename T>
__device__ __forceinline__ void epilogue(T* y, const T* bias, const T* z, long long n, int c,
                                         int relu) {
    GRID_STRIDE(i, n) {
        float v = load(y, i);
        if (bias) v += load(bias, i % c);
        if (z) v += load(z, i);
        if (relu && v < 0.f) v = 0.f;
        store(y, i, v);
    }
}

ATTNRT_KERNEL void conv2d_epilogue_f32(float* y, const float* bias, const float* z, long long n,
                                       int c, int relu) {
    epilogue(y, bias, z, n, c, relu);
}

ATTNRT_KERNEL void conv2d_epilogue_bf16(__nv_bfloat16* y, const __nv_bfloat16* bias,
                                        const __nv_bfloat16* z, long long n, int c, int relu) {
    epilogue(y, bias, z, n, c, relu);
}

// conv2d_bias_grad_partial_<dtype> + conv2d_bias_grad_finish_<dtype>: db[c] (+)= sum over the
// rows of dy[row][c], for an NHWC gradient dy of `rows` = n*h*w rows and c channels. Ours in
// every precision: cudnnConvolutionBackwardBias answers CUDNN_STATUS_NOT_SUPPORTED for bf16,
// and in f32 its calc_bias_diff_nhwc_packed took 1.09 ms of AlexNet's 13 ms step (batch 64,
// 224x224, H100) where these read dy once at memory speed. Two passes so that the sum is the
// same on every run: the partial pass gives each (32-channel tile, chunk of `chunk_rows` rows)
// block 256 threads, 8 warps whose lanes are the tile's channels, warp w summing rows w,
// w + 8, ... of the chunk in f32; it writes one f32 partial per chunk and channel. The finish
// pass adds the chunks in order (and db's old value when accumulate != 0) and rounds once to
// the storage type.
template <typename T>
__device__ __forceinline__ void bias_grad_partial(const T* __restrict__ dy,
                                                  float* __restrict__ partial, long long rows,
                                                  int c, long long chunk_rows) {
    __shared__ float sums[8][33];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int col = blockIdx.x * 32 + lane;
    const long long first = (long long)blockIdx.y * chunk_rows;
    const long long last = min(rows, first + chunk_rows);
    float s = 0.f;
    if (col < c)
        for (long long r = first + warp; r < last; r += 8) s += load(dy, r * c + col);
    sums[warp][lane] = s;
    __syncthreads();
    if (warp == 0 && col < c) {
        float t = 0.f;
#pragma unroll
        for (int k = 0; k < 8; ++k) t += sums[k][lane];
        partial[(long long)blockIdx.y * c + col] = t;
    }
}

template <typename T>
__device__ __forceinline__ void bias_grad_finish(const float* __restrict__ partial,
                                                 T* __restrict__ db, int chunks, int c,
                                                 int accumulate) {
    GRID_STRIDE(col, c) {
        float s = 0.f;
        for (int k = 0; k < chunks; ++k) s += partial[(long long)k * c + col];
        if (accumulate) s += load(db, col);
        store(db, col, s);
    }
}

#define CONV2D_BIAS_GRAD(dtype, T)                                                           \
    ATTNRT_KERNEL void conv2d_bias_grad_partial_##dtype(                                     \
        const T* __restrict__ dy, float* __restrict__ partial, long long rows, int c,        \
        long long chunk_rows) {                                                              \
        bias_grad_partial(dy, partial, rows, c, chunk_rows);                                 \
    }                                                                                        \
    ATTNRT_KERNEL void conv2d_bias_grad_finish_##dtype(                                      \
        const float* __restrict__ partial, T* __restrict__ db, int chunks, int c,            \
        int accumulate) {                                                                    \
        bias_grad_finish(partial, db, chunks, c, accumulate);                                \
    }

CONV2D_BIAS_GRAD(f32, float)
CONV2D_BIAS_GRAD(bf16, __nv_bfloat16)
