// channel_copy: the copies of the CNNs' channel plumbing, f32 or bf16 storage, one copy:
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
//   conv2d     the f32 channel-major path's NHWC activations to NCHW (rows = batch, a = h w,
//              b = c) and KRSC filters to KCRS (rows = out, a = kh kw, b = in / groups), and
//              the results back.
// `accumulate` adds to y instead of overwriting it (gradients of a value read twice).
// Values pass through f32, so a converting copy rounds exactly as cast.cu does.
//
// Two kernels compute it, the launcher choosing by the block's sides:
//   channel_copy_<variant>        one thread per destination value, grid-stride. A plain copy
//                                 (a = 1 or b = 1) is coalesced on both sides; a transpose
//                                 reads with stride b.
//   channel_copy_tiled_<variant>  transposes with both sides at least TILE / 2 (conv2d's NHWC
//                                 to NCHW copies, the flatten): a block moves one TILE x TILE
//                                 tile of one row's a x b block through shared memory, reading
//                                 TILE consecutive j (contiguous in x) and writing TILE
//                                 consecutive i (contiguous in y), so both sides are coalesced.
//                                 Block (TILE, TILE_ROWS); grid x: the tiles of a row's block,
//                                 grid y: rows, strided past 65,535. Same values, conversion and
//                                 accumulation as the first.
// Variants (source to destination): f32, bf16, f32_to_bf16, bf16_to_f32.
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

// The tile's side and the rows of it a block's threads cover at once (the launcher's TILE and
// TILE_ROWS, src/kernels/channel_copy.rs).
constexpr int TILE = 32;
constexpr int TILE_ROWS = 8;

template <typename X, typename Y>
__device__ __forceinline__ void copy_tiled(const X* __restrict__ x, Y* __restrict__ y,
                                           long long rows, int x_stride, int x_off, int y_stride,
                                           int y_off, int a, int b, int accumulate) {
    // One column of padding: the transposed reads hit 32 different banks.
    __shared__ float tile[TILE][TILE + 1];
    const int tiles_b = (b + TILE - 1) / TILE;
    const int i0 = (int)(blockIdx.x / tiles_b) * TILE;
    const int j0 = (int)(blockIdx.x % tiles_b) * TILE;
    for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
        const long long src = r * x_stride + x_off, dst = r * y_stride + y_off;
        const int j = j0 + (int)threadIdx.x;
        for (int k = threadIdx.y; k < TILE; k += TILE_ROWS) {
            const int i = i0 + k;
            if (i < a && j < b) tile[k][threadIdx.x] = load_f(x, src + (long long)i * b + j);
        }
        __syncthreads();
        const int i = i0 + (int)threadIdx.x;
        for (int k = threadIdx.y; k < TILE; k += TILE_ROWS) {
            const int jj = j0 + k;
            if (i < a && jj < b) {
                const long long d = dst + (long long)jj * a + i;
                float v = tile[threadIdx.x][k];
                if (accumulate) v += load_f(y, d);
                store_f(y, d, v);
            }
        }
        // The next row's loads overwrite the tile.
        __syncthreads();
    }
}

#define CHANNEL_COPY(variant, X, Y)                                                            \
    ATTNRT_KERNEL void channel_copy_##variant(const X* x, Y* y, long long rows, int x_stride,   \
                                              int x_off, int y_stride, int y_off, int a, int b, \
                                              int accumulate) {                                 \
        copy(x, y, rows, x_stride, x_off, y_stride, y_off, a, b, accumulate);                   \
    }                                                                                           \
    ATTNRT_KERNEL void channel_copy_tiled_##variant(const X* x, Y* y, long long rows,           \
                                                    int x_stride, int x_off, int y_stride,      \
                                                    int y_off, int a, int b, int accumulate) {  \
        copy_tiled(x, y, rows, x_stride, x_off, y_stride, y_off, a, b, accumulate);             \
    }

CHANNEL_COPY(f32, float, float)
CHANNEL_COPY(f32_to_bf16, float, bf16_t)
CHANNEL_COPY(bf16_to_f32, bf16_t, float)
CHANNEL_COPY(bf16, bf16_t, bf16_t)
