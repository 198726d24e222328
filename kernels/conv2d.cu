// conv2d: the convolutions themselves run in cuDNN (src/kernels/conv2d.rs); this file holds
// only their epilogue for the configurations cuDNN's fused convolution + bias + activation
// does not take.
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
