// max_pool: 2-D max pooling over NHWC tensors, PyTorch's MaxPool2d (floor mode, no dilation),
// forward and backward in f32 and bf16 (the backward's sums in f32). The CPU reference is src/kernels/max_pool/cpu.rs.
//
// Math: output (b, oy, ox, c) is the maximum of input (b, iy, ix, c) over the window
//   iy in [oy s - p, oy s - p + k) and ix in [ox s - p, ox s - p + k), clipped to the input,
// so padding never wins (it is -inf, not zero). As in PyTorch, a value replaces the running
// maximum when it is larger or NaN, scanning rows then columns: the first maximum wins a tie
// and NaN propagates. The argmax is kept as the index iy * w + ix within the image plane
// (PyTorch's `return_indices`), for the backward pass.
//
// Backward: dx (b, iy, ix, c) sums dy over the outputs whose argmax is (iy, ix). It gathers
// (one thread per input element, over the at most ceil(k/s)^2 windows that cover it, in
// output order) instead of scattering with atomics, so the sum's order is fixed and the
// result deterministic.
//
// Layouts: x (n, h, w, c), y and idx (n, oh, ow, c), dy like y, dx like x. One thread per
// output element (forward) or input element (backward), grid-stride.
//
// Variants:
//   max_pool_f32, max_pool_bf16  y = max over the window, idx = its argmax.
//   max_pool_backward_f32, max_pool_backward_bf16   dx from dy and idx.
#include <cuda_bf16.h>

#include "common.cuh"
#include "pool.cuh"

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, long long i) {
    return __bfloat162float(p[i]);
}

template <typename T>
__device__ __forceinline__ void forward(const T* __restrict__ x, T* __restrict__ y,
                                        int* __restrict__ idx, int n, int h, int w, int c,
                                        int oh, int ow, int k, int s, int p) {
    GRID_STRIDE(i, (long long)n * oh * ow * c) {
        const Nhwc o = nhwc_at(i, oh, ow, c);
        const int b = o.b, ch = o.ch;
        int y0 = o.y * s - p, x0 = o.x * s - p;
        int ys = max(y0, 0), ye = min(y0 + k, h);
        int xs = max(x0, 0), xe = min(x0 + k, w);
        long long plane = (long long)b * h * w;
        float best = NEG_INF;
        int at = ys * w + xs;
        T best_raw = x[(plane + at) * c + ch];
        for (int iy = ys; iy < ye; ++iy) {
            for (int ix = xs; ix < xe; ++ix) {
                long long src = (plane + (long long)iy * w + ix) * c + ch;
                float v = load(x, src);
                if (v > best || isnan(v)) {
                    best = v;
                    best_raw = x[src];
                    at = iy * w + ix;
                }
            }
        }
        y[i] = best_raw;
        idx[i] = at;
    }
}

ATTNRT_KERNEL void max_pool_f32(const float* x, float* y, int* idx, int n, int h, int w, int c,
                                int oh, int ow, int k, int s, int p) {
    forward(x, y, idx, n, h, w, c, oh, ow, k, s, p);
}

ATTNRT_KERNEL void max_pool_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, int* idx, int n,
                                 int h, int w, int c, int oh, int ow, int k, int s, int p) {
    forward(x, y, idx, n, h, w, c, oh, ow, k, s, p);
}

__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, long long i, float v) {
    p[i] = __float2bfloat16_rn(v);
}

template <typename T>
__device__ __forceinline__ void backward(const T* __restrict__ dy, const int* __restrict__ idx,
                                         T* __restrict__ dx, int n, int h, int w, int c, int oh,
                                         int ow, int k, int s, int p) {
    GRID_STRIDE(i, (long long)n * h * w * c) {
        const Nhwc at = nhwc_at(i, h, w, c);
        const int b = at.b, ch = at.ch;
        int oy0, oy1, ox0, ox1;
        fixed_covering(at.y, oh, k, s, p, &oy0, &oy1);
        fixed_covering(at.x, ow, k, s, p, &ox0, &ox1);
        int here = at.y * w + at.x;
        float sum = 0.f;
        for (int oy = oy0; oy <= oy1; ++oy) {
            for (int ox = ox0; ox <= ox1; ++ox) {
                long long o = (((long long)b * oh + oy) * ow + ox) * c + ch;
                if (idx[o] == here) sum += load(dy, o);
            }
        }
        store(dx, i, sum);
    }
}

ATTNRT_KERNEL void max_pool_backward_f32(const float* dy, const int* idx, float* dx, int n, int h,
                                         int w, int c, int oh, int ow, int k, int s, int p) {
    backward(dy, idx, dx, n, h, w, c, oh, ow, k, s, p);
}

ATTNRT_KERNEL void max_pool_backward_bf16(const __nv_bfloat16* dy, const int* idx,
                                          __nv_bfloat16* dx, int n, int h, int w, int c, int oh,
                                          int ow, int k, int s, int p) {
    backward(dy, idx, dx, n, h, w, c, oh, ow, k, s, p);
}
