// channel_copy: the copies of the CNNs' channel plumbing, f32 or bf16 storage, one kernel:
// over `rows` rows, a block of a x b values of each source row is written transposed into
// the destination row (b = 1 or a = 1: a plain copy of a run of channels):
//   y[r * y_stride + y_off + j * a + i] (+)= x[r * x_stride + x_off + i * b + j],
//   i < a, j < b.
// What the walker makes of it (NHWC: a row is a pixel's channels):
//   concat     each input's c_i channels into channels [at, at + c_i) (a = 1, b = c_i);
//   channels   channels [start, start + len) of the input (a = 1, b = len); its backward
//              accumulates into that range of the input's gradient;
//   shuffle    (g, c / g) channels transposed to (c / g, g): a = g, b = c / g (the backward
//              is the inverse transpose, a = c / g, b = g);
//   flatten    one image's (h w, c) to PyTorch's (c, h w) order: rows = batch, a = h w, b = c.
//   filters    the f32 parameters' (out, in, kh kw) to KRSC's (out, kh kw, in) in the
//              activations' type, and the gradients back to f32 (the converting variants).
// `accumulate` adds to y instead of overwriting it (gradients of a value read twice).
// Values pass through f32, so a converting copy rounds exactly as cast.cu does.
//
// One thread per destination value, grid-stride.
// Variants (source to destination): channel_copy_f32, channel_copy_bf16,
// channel_copy_f32_to_bf16, channel_copy_bf16_to_f32.
#include "common.cuh"
#include "dtype.cuh"

template <typename X, typename Y>
__device__ __forceinline__ void copy(const X* __restrict__ x, Y* __restrict__ y, long long rows,
                                     int x_stride, int x_off, int y_stride, int y_off, int a,
                                     int b, int accumulate) {
    const long long block = (long long)a * b;
    GRID_STRIDE(t, rows * block) {
        const long long r = t / block;
        const int k = (int)(t % block);
        const int j = k / a, i = k % a;
        const long long dst = r * y_stride + y_off + k;
        float v = load_f(x, r * x_stride + x_off + (long long)i * b + j);
        if (accumulate) v += load_f(y, dst);
        store_f(y, dst, v);
    }
}

#define CHANNEL_COPY(name, X, Y)                                                              \
    ATTNRT_KERNEL void name(const X* x, Y* y, long long rows, int x_stride, int x_off,          \
                            int y_stride, int y_off, int a, int b, int accumulate) {            \
        copy(x, y, rows, x_stride, x_off, y_stride, y_off, a, b, accumulate);                   \
    }

CHANNEL_COPY(channel_copy_f32, float, float)
CHANNEL_COPY(channel_copy_f32_to_bf16, float, bf16_t)
CHANNEL_COPY(channel_copy_bf16_to_f32, bf16_t, float)
CHANNEL_COPY(channel_copy_bf16, bf16_t, bf16_t)
