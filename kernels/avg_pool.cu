// avg_pool: 2-D average pooling over NHWC tensors, f32 or bf16 storage (dtype.cuh), f32 sums:
// PyTorch's AvgPool2d (floor mode, count_include_pad) and AdaptiveAvgPool2d (global average
// pooling is the 1x1 case). The CPU reference is src/kernels/avg_pool/cpu.rs.
//
// Math: output (b, oy, ox, c) = sum of x (b, iy, ix, c) over its window / (div_y div_x), per
// axis (size s, outputs o, output index j):
//   fixed     start = j stride - pad, end = min(start + k, s + pad), div = end - start (the
//             padding the window covers counts), then [start, end) clipped to the input;
//   adaptive  start = floor(j s / o), end = ceil((j + 1) s / o), div = end - start.
// Backward: dx (b, iy, ix, c) = sum over the outputs whose window holds (iy, ix) of
// dy / (div_y div_x), gathered per input element (no atomics: deterministic). Along an axis
// those outputs are, fixed, pool.cuh's `fixed_covering` (as for max_pool.cu) and, adaptive,
// j in [floor(i o / s), floor(((i + 1) o - 1) / s)].
//
// Layouts: x, dx (n, h, w, c); y, dy (n, oh, ow, c). One thread per output element (forward)
// or input element (backward), grid-stride.
//
// Variants: avg_pool_<dtype>, avg_pool_backward_<dtype> (dtype f32, bf16); `adaptive` picks
// the windows (k, stride, pad are then unused).
#include "common.cuh"
#include "dtype.cuh"
#include "pool.cuh"

// The window of output j along an axis: [*start, *end) clipped, and its divisor.
__device__ __forceinline__ int window(int j, int size, int out, int k, int s, int p,
                                      int adaptive, int* start, int* end) {
    int a, b, div;
    if (adaptive) {
        a = (int)((long long)j * size / out);
        b = (int)(((long long)(j + 1) * size + out - 1) / out);
        div = b - a;
    } else {
        a = j * s - p;
        b = min(a + k, size + p);
        div = b - a;
    }
    *start = max(a, 0);
    *end = min(b, size);
    return div;
}

// The outputs whose windows hold input i along an axis: [*first, *last].
__device__ __forceinline__ void covering(int i, int size, int out, int k, int s, int p,
                                         int adaptive, int* first, int* last) {
    if (adaptive) {
        *first = (int)((long long)i * out / size);
        *last = (int)(((long long)(i + 1) * out - 1) / size);
    } else {
        fixed_covering(i, out, k, s, p, first, last);
    }
}

template <typename T>
__device__ __forceinline__ void forward(const T* __restrict__ x, T* __restrict__ y, int n, int h,
                                        int w, int c, int oh, int ow, int k, int s, int p,
                                        int adaptive) {
    GRID_STRIDE(i, (long long)n * oh * ow * c) {
        const Nhwc o = nhwc_at(i, oh, ow, c);
        const int b = o.b, ch = o.ch;
        int ys, ye, xs, xe;
        int dy = window(o.y, h, oh, k, s, p, adaptive, &ys, &ye);
        int dx = window(o.x, w, ow, k, s, p, adaptive, &xs, &xe);
        float sum = 0.f;
        for (int iy = ys; iy < ye; ++iy)
            for (int ix = xs; ix < xe; ++ix)
                sum += load_f(x, (((long long)b * h + iy) * w + ix) * c + ch);
        store_f(y, i, sum / (float)(dy * dx));
    }
}

template <typename T>
__device__ __forceinline__ void backward(const T* __restrict__ dy, T* __restrict__ dx, int n,
                                         int h, int w, int c, int oh, int ow, int k, int s,
                                         int p, int adaptive) {
    GRID_STRIDE(i, (long long)n * h * w * c) {
        const Nhwc at = nhwc_at(i, h, w, c);
        const int b = at.b, ch = at.ch;
        int oy0, oy1, ox0, ox1, unused0, unused1;
        covering(at.y, h, oh, k, s, p, adaptive, &oy0, &oy1);
        covering(at.x, w, ow, k, s, p, adaptive, &ox0, &ox1);
        float sum = 0.f;
        for (int oy = oy0; oy <= oy1; ++oy) {
            int dvy = window(oy, h, oh, k, s, p, adaptive, &unused0, &unused1);
            for (int ox = ox0; ox <= ox1; ++ox) {
                int dvx = window(ox, w, ow, k, s, p, adaptive, &unused0, &unused1);
                sum += load_f(dy, (((long long)b * oh + oy) * ow + ox) * c + ch) /
                       (float)(dvy * dvx);
            }
        }
        store_f(dx, i, sum);
    }
}

ATTNRT_KERNEL void avg_pool_f32(const float* x, float* y, int n, int h, int w, int c, int oh,
                                int ow, int k, int s, int p, int adaptive) {
    forward(x, y, n, h, w, c, oh, ow, k, s, p, adaptive);
}

ATTNRT_KERNEL void avg_pool_bf16(const bf16_t* x, bf16_t* y, int n, int h, int w, int c, int oh,
                                 int ow, int k, int s, int p, int adaptive) {
    forward(x, y, n, h, w, c, oh, ow, k, s, p, adaptive);
}

ATTNRT_KERNEL void avg_pool_backward_f32(const float* dy, float* dx, int n, int h, int w, int c,
                                         int oh, int ow, int k, int s, int p, int adaptive) {
    backward(dy, dx, n, h, w, c, oh, ow, k, s, p, adaptive);
}

ATTNRT_KERNEL void avg_pool_backward_bf16(const bf16_t* dy, bf16_t* dx, int n, int h, int w,
                                          int c, int oh, int ow, int k, int s, int p,
                                          int adaptive) {
    backward(dy, dx, n, h, w, c, oh, ow, k, s, p, adaptive);
}
