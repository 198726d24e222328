// soft_argmax: the expected cell of a score map under its softmax, the tracker's corner
// head's last step. For map m of `cells` scores on a grid `side` cells wide:
//   p_i = exp(s_i - max s) / sum_j exp(s_j - max s),
//   out[2 m] = sum_i p_i * stride * (i % side),  out[2 m + 1] = sum_i p_i * stride * (i / side)
// (cell i at (stride col, stride row): no half-cell offset). The exponentials and sums are
// f64, as in the CPU reference (src/kernels/soft_argmax/cpu.rs), so the only difference is
// the order of the sums; the maps are small (576 cells), one block each.
//
// Variants: soft_argmax_f32 and soft_argmax_bf16 (the scores' storage). 256 threads a block,
// blockIdx.x = map.
#include "common.cuh"

#define SOFT_ARGMAX_THREADS 256

__device__ __forceinline__ float soft_argmax_load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float soft_argmax_load(const unsigned short* p, long long i) {
    return __uint_as_float((unsigned)p[i] << 16);
}

template <typename T>
__device__ __forceinline__ void soft_argmax(const T* __restrict__ scores, int cells, int side, float stride,
                                            double* __restrict__ out) {
    __shared__ float smax[SOFT_ARGMAX_THREADS / 32];
    __shared__ double ssum[3][SOFT_ARGMAX_THREADS / 32];
    const T* s = scores + (long long)blockIdx.x * cells;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < cells; i += SOFT_ARGMAX_THREADS) m = fmaxf(m, soft_argmax_load(s, i));
    m = warp_max(m);
    if (lane == 0) smax[warp] = m;
    __syncthreads();
    m = smax[0];
    for (int w = 1; w < SOFT_ARGMAX_THREADS / 32; ++w) m = fmaxf(m, smax[w]);
    double e = 0.0, x = 0.0, y = 0.0;
    for (int i = threadIdx.x; i < cells; i += SOFT_ARGMAX_THREADS) {
        const double p = exp((double)soft_argmax_load(s, i) - (double)m);
        e += p;
        x += p * (double)stride * (double)(i % side);
        y += p * (double)stride * (double)(i / side);
    }
    e = warp_sum_f64(e);
    x = warp_sum_f64(x);
    y = warp_sum_f64(y);
    if (lane == 0) {
        ssum[0][warp] = e;
        ssum[1][warp] = x;
        ssum[2][warp] = y;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double te = 0.0, tx = 0.0, ty = 0.0;
        for (int w = 0; w < SOFT_ARGMAX_THREADS / 32; ++w) {
            te += ssum[0][w];
            tx += ssum[1][w];
            ty += ssum[2][w];
        }
        out[2 * blockIdx.x] = tx / te;
        out[2 * blockIdx.x + 1] = ty / te;
    }
}

ATTNRT_KERNEL void __launch_bounds__(SOFT_ARGMAX_THREADS)
    soft_argmax_f32(const float* __restrict__ scores, int cells, int side, float stride, double* __restrict__ out) {
    soft_argmax(scores, cells, side, stride, out);
}

ATTNRT_KERNEL void __launch_bounds__(SOFT_ARGMAX_THREADS)
    soft_argmax_bf16(const unsigned short* __restrict__ scores, int cells, int side, float stride,
                     double* __restrict__ out) {
    soft_argmax(scores, cells, side, stride, out);
}
