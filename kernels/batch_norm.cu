// batch_norm: PyTorch's BatchNorm2d over NHWC tensors seen as rows x c (rows = batch x height
// x width), activations f32 or bf16 (dtype.cuh), statistics and parameters f32. The CPU
// reference is src/kernels/batch_norm/cpu.rs.
//
// Math (train mode): mean and biased var per channel over the rows, then
//   y = gamma (x - mean) / sqrt(var + eps) + beta      (then max(y, 0) when fused with a ReLU)
// Backward, with xhat = (x - mean) invstd and g = dy (masked by y > 0 when fused):
//   dbeta = sum g,  dgamma = sum g xhat,  dx = gamma invstd (g - dbeta / m - xhat dgamma / m).
// Eval mode normalises with the running statistics. The running statistics move by
//   r = (1 - momentum) r + momentum s
// where s is the batch's mean and unbiased variance, or (data-parallel) the sum over the
// GPUs of each one's statistics weighted by its share of the batch: finalize writes that
// weighted contribution, the trainer sums it with the gradients and running applies it.
//
// Reductions: one pass over the rows per statistic, no atomics. A block is 32 channels
// (threadIdx.x: a warp reads 32 consecutive channels of a row) x 8 row lanes (threadIdx.y);
// blockIdx.y takes one split of the rows. Each thread sums its rows in f32, the block sums
// its 8 lanes through shared memory and writes one partial per (split, channel); finalize
// (one warp per channel: split_sums) adds the splits in f64. The row loops are unrolled, so a
// thread has several loads in flight (the sums' order is unchanged). The forward sums are shifted by the
// channel's first value k (sums of x - k and (x - k)^2) so the variance does not cancel
// when the mean is large against the spread; split 0 stores k after the partials.
//
// Synchronised batch norm (the GPUs of a step normalise with the whole step's statistics):
// each GPU turns its partials into moments (the unshifted sums, laid out as one split with
// shift 0), the trainer sums them over the GPUs and finalize reads the sum with the step's
// rows. The backward's sums (dgamma, dbeta) are summed likewise before backward_apply, whose
// `count` is then the step's rows instead of the GPU's.
//
// Layouts: x, y, dy, dx: rows x c. partial: [splits][c][2] then k [c].
//
// The element-wise kernels (apply, backward_apply) take `vec`, the values a thread handles at
// once (8, 4, 2 or 1: the launcher's largest that divides c and the buffers' alignment,
// dtype.cuh's load_vec), with the same arithmetic per value whatever it is. Each thread stays
// on one group of vec channels and walks rows (channel_rows), so it loads the per-channel
// factors once into registers, not once per value (they were four or five scalar loads a
// value, which bounded these kernels). mean, invstd: [c].
//
// Variants (<dtype> = f32 or bf16: the activations' storage):
//   batch_norm_stats_<dtype>             partials of x.
//   batch_norm_finalize_f32              mean, invstd, and the running contribution.
//   batch_norm_moments_f32               a shard's sums of x and x^2 from its partials (for
//                                        synchronised batch norm: summed over the GPUs, then
//                                        finalized as one split with shift 0).
//   batch_norm_apply_<dtype>             y from x, mean, invstd, gamma, beta (relu flag).
//   batch_norm_eval_stats_f32            mean, invstd from the running statistics.
//   batch_norm_running_f32               r = (1 - momentum) r + momentum s, element-wise.
//   batch_norm_backward_reduce_<dtype>   partials of g and g xhat.
//   batch_norm_backward_finalize_f32     dgamma, dbeta.
//   batch_norm_backward_apply_<dtype>    dx (m = count: the rows the sums cover).
#include "common.cuh"
#include "dtype.cuh"

#define BN_CH 32
#define BN_LANES 8
#define BN_EPS 1e-5
// Channels (warps) per block of the finalize kernels.
#define BN_FIN_WARPS 8

// The block's per-channel sums of its lanes' (a, b), written as the split's partial.
__device__ __forceinline__ void block_partial(float a, float b, float* partial, int c, int ch) {
    __shared__ float sa[BN_LANES][BN_CH + 1], sb[BN_LANES][BN_CH + 1];
    sa[threadIdx.y][threadIdx.x] = a;
    sb[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        for (int j = 1; j < BN_LANES; ++j) {
            a += sa[j][threadIdx.x];
            b += sb[j][threadIdx.x];
        }
        long long at = ((long long)blockIdx.y * c + ch) * 2;
        partial[at] = a;
        partial[at + 1] = b;
    }
}

template <typename T>
__device__ __forceinline__ void stats(const T* __restrict__ x, float* __restrict__ partial,
                                      int rows, int c, int per_split) {
    const int ch = blockIdx.x * BN_CH + threadIdx.x;
    const int r0 = blockIdx.y * per_split, r1 = min(r0 + per_split, rows);
    float s = 0.f, q = 0.f;
    if (ch < c) {
        const float k = load_f(x, ch);
#pragma unroll 4
        for (int r = r0 + threadIdx.y; r < r1; r += BN_LANES) {
            float d = load_f(x, (long long)r * c + ch) - k;
            s += d;
            q += d * d;
        }
        if (blockIdx.y == 0 && threadIdx.y == 0) partial[(long long)gridDim.y * c * 2 + ch] = k;
    }
    block_partial(s, q, partial, c, ch);
}

ATTNRT_KERNEL void batch_norm_stats_f32(const float* x, float* partial, int rows, int c,
                                        int per_split) {
    stats(x, partial, rows, c, per_split);
}

ATTNRT_KERNEL void batch_norm_stats_bf16(const bf16_t* x, float* partial, int rows, int c,
                                         int per_split) {
    stats(x, partial, rows, c, per_split);
}

// The finalize kernels' channel: one a warp (blocks of 32 x BN_FIN_WARPS threads), since a
// thread adding up to a thousand splits one after another took ~11 us a launch.
__device__ __forceinline__ int finalize_channel() {
    return blockIdx.x * BN_FIN_WARPS + threadIdx.x / 32;
}

// Channel ch's sums of the splits' two partials, in every lane of its warp: lane l adds splits
// l, l + 32, ... in f64, then the warp adds its lanes (a fixed order: the same bits every run).
__device__ __forceinline__ void split_sums(const float* __restrict__ partial, int splits, int c,
                                           int ch, double& s, double& q) {
    s = 0.0;
    q = 0.0;
    for (int i = threadIdx.x % 32; i < splits; i += 32) {
        s += partial[((long long)i * c + ch) * 2];
        q += partial[((long long)i * c + ch) * 2 + 1];
    }
    s = warp_sum_f64(s);
    q = warp_sum_f64(q);
}

// contrib (nullable): weight x mean at [ch], weight x unbiased var at [c + ch].
ATTNRT_KERNEL void batch_norm_finalize_f32(const float* __restrict__ partial, int splits,
                                           int rows, int c, float* __restrict__ mean,
                                           float* __restrict__ invstd,
                                           float* __restrict__ contrib, float weight) {
    const int ch = finalize_channel();
    if (ch >= c) return;  // the whole warp
    double s, q;
    split_sums(partial, splits, c, ch, s, q);
    if (threadIdx.x % 32 == 0) {
        const double n = rows, d = s / n;
        const double var = fmax(q / n - d * d, 0.0);
        const double m = (double)partial[(long long)splits * c * 2 + ch] + d;
        mean[ch] = (float)m;
        invstd[ch] = (float)(1.0 / sqrt(var + BN_EPS));
        if (contrib) {
            contrib[ch] = (float)(weight * m);
            contrib[c + ch] = (float)(weight * var * n / (n - 1.0));
        }
    }
}

// moments: [c][2] (sum of x, sum of x^2) then [c] zeros (the shift).
ATTNRT_KERNEL void batch_norm_moments_f32(const float* __restrict__ partial, int splits,
                                          int rows, int c, float* __restrict__ moments) {
    const int ch = finalize_channel();
    if (ch >= c) return;  // the whole warp
    double s, q;
    split_sums(partial, splits, c, ch, s, q);
    if (threadIdx.x % 32 == 0) {
        const double k = partial[(long long)splits * c * 2 + ch], n = rows;
        moments[2 * ch] = (float)(s + n * k);
        moments[2 * ch + 1] = (float)(q + 2.0 * k * s + n * k * k);
        moments[2 * c + ch] = 0.f;
    }
}

// The element-wise kernels' work: the c / V channel groups of V values (c a multiple of V, so
// a group shares a row) times `lanes` row lanes, lanes = the grid's threads / groups (at least
// 1). Unit u (a thread's own index, then a grid's stride further while fewer threads than
// groups run) is channel group u % groups on rows u / groups, + lanes, + 2 lanes, ...
struct ChannelRows {
    long long groups, lanes, threads;
};

__device__ __forceinline__ ChannelRows channel_rows(int c, int v) {
    const long long threads = (long long)gridDim.x * blockDim.x, groups = c / v;
    return {groups, threads >= groups ? threads / groups : 1, threads};
}

// V values at a time (see ChannelRows): the per-channel factors loaded once per unit, then
// per value the same float operations as one value a thread, one vector load and store.
template <int V, typename T>
__device__ __forceinline__ void apply(const T* __restrict__ x, T* __restrict__ y,
                                      const float* __restrict__ mean,
                                      const float* __restrict__ invstd,
                                      const float* __restrict__ gamma,
                                      const float* __restrict__ beta, long long n, int c,
                                      int relu) {
    const long long rows = n / c;
    const ChannelRows w = channel_rows(c, V);
    for (long long u = (long long)blockIdx.x * blockDim.x + threadIdx.x; u < w.groups * w.lanes;
         u += w.threads) {
        const int ch = (int)(u % w.groups) * V;
        float m[V], is[V], ga[V], be[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
            m[j] = mean[ch + j];
            is[j] = invstd[ch + j];
            ga[j] = gamma[ch + j];
            be[j] = beta[ch + j];
        }
        for (long long r = u / w.groups; r < rows; r += w.lanes) {
            const long long i = r * c + ch;
            float f[V];
            load_vec<V>(x, i, f);
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const float v = (f[j] - m[j]) * is[j] * ga[j] + be[j];
                f[j] = relu ? fmaxf(v, 0.f) : v;
            }
            store_vec<V>(y, i, f);
        }
    }
}

ATTNRT_KERNEL void batch_norm_apply_f32(const float* x, float* y, const float* mean,
                                        const float* invstd, const float* gamma,
                                        const float* beta, long long n, int c, int relu,
                                        int vec) {
    BY_VEC(vec, apply, x, y, mean, invstd, gamma, beta, n, c, relu);
}

ATTNRT_KERNEL void batch_norm_apply_bf16(const bf16_t* x, bf16_t* y, const float* mean,
                                         const float* invstd, const float* gamma,
                                         const float* beta, long long n, int c, int relu,
                                         int vec) {
    BY_VEC(vec, apply, x, y, mean, invstd, gamma, beta, n, c, relu);
}

ATTNRT_KERNEL void batch_norm_eval_stats_f32(const float* __restrict__ running_mean,
                                             const float* __restrict__ running_var,
                                             float* __restrict__ mean,
                                             float* __restrict__ invstd, int c) {
    GRID_STRIDE(ch, c) {
        mean[ch] = running_mean[ch];
        invstd[ch] = (float)(1.0 / sqrt((double)running_var[ch] + BN_EPS));
    }
}

ATTNRT_KERNEL void batch_norm_running_f32(float* __restrict__ running,
                                          const float* __restrict__ batch, long long n,
                                          float momentum) {
    GRID_STRIDE(i, n) {
        running[i] = (float)((1.0 - momentum) * (double)running[i] + (double)momentum * batch[i]);
    }
}

// g: dy, zero where the fused ReLU's output y (nullable) is not positive.
template <typename T>
__device__ __forceinline__ float grad_in(const T* dy, const T* y, long long i) {
    float g = load_f(dy, i);
    return (y && !(load_f(y, i) > 0.f)) ? 0.f : g;
}

template <typename T>
__device__ __forceinline__ void backward_reduce(const T* __restrict__ x, const T* __restrict__ dy,
                                                const T* __restrict__ y,
                                                const float* __restrict__ mean,
                                                const float* __restrict__ invstd,
                                                float* __restrict__ partial, int rows, int c,
                                                int per_split) {
    const int ch = blockIdx.x * BN_CH + threadIdx.x;
    const int r0 = blockIdx.y * per_split, r1 = min(r0 + per_split, rows);
    float s = 0.f, q = 0.f;
    if (ch < c) {
        const float m = mean[ch], is = invstd[ch];
#pragma unroll 4
        for (int r = r0 + threadIdx.y; r < r1; r += BN_LANES) {
            long long i = (long long)r * c + ch;
            float g = grad_in(dy, y, i);
            s += g;
            q += g * (load_f(x, i) - m) * is;
        }
    }
    block_partial(s, q, partial, c, ch);
}

ATTNRT_KERNEL void batch_norm_backward_reduce_f32(const float* x, const float* dy,
                                                  const float* y, const float* mean,
                                                  const float* invstd, float* partial,
                                                  int rows, int c, int per_split) {
    backward_reduce(x, dy, y, mean, invstd, partial, rows, c, per_split);
}

ATTNRT_KERNEL void batch_norm_backward_reduce_bf16(const bf16_t* x, const bf16_t* dy,
                                                   const bf16_t* y, const float* mean,
                                                   const float* invstd, float* partial,
                                                   int rows, int c, int per_split) {
    backward_reduce(x, dy, y, mean, invstd, partial, rows, c, per_split);
}

ATTNRT_KERNEL void batch_norm_backward_finalize_f32(const float* __restrict__ partial,
                                                    int splits, int c,
                                                    float* __restrict__ dgamma,
                                                    float* __restrict__ dbeta) {
    const int ch = finalize_channel();
    if (ch >= c) return;  // the whole warp
    double s, q;
    split_sums(partial, splits, c, ch, s, q);
    if (threadIdx.x % 32 == 0) {
        dbeta[ch] = (float)s;
        dgamma[ch] = (float)q;
    }
}

// V values at a time, as apply.
template <int V, typename T>
__device__ __forceinline__ void backward_apply(const T* __restrict__ x, const T* __restrict__ dy,
                                               const T* __restrict__ y, T* __restrict__ dx,
                                               const float* __restrict__ mean,
                                               const float* __restrict__ invstd,
                                               const float* __restrict__ gamma,
                                               const float* __restrict__ dgamma,
                                               const float* __restrict__ dbeta, int rows, int c,
                                               int count) {
    const float inv_m = 1.f / (float)count;
    const ChannelRows w = channel_rows(c, V);
    for (long long u = (long long)blockIdx.x * blockDim.x + threadIdx.x; u < w.groups * w.lanes;
         u += w.threads) {
        const int ch = (int)(u % w.groups) * V;
        float m[V], is[V], ga[V], dg[V], db[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
            m[j] = mean[ch + j];
            is[j] = invstd[ch + j];
            ga[j] = gamma[ch + j];
            dg[j] = dgamma[ch + j];
            db[j] = dbeta[ch + j];
        }
        for (long long r = u / w.groups; r < rows; r += w.lanes) {
            const long long i = r * c + ch;
            float fx[V], g[V];
            load_vec<V>(x, i, fx);
            load_vec<V>(dy, i, g);
            if (y) {
                float fy[V];
                load_vec<V>(y, i, fy);
#pragma unroll
                for (int j = 0; j < V; ++j) g[j] = fy[j] > 0.f ? g[j] : 0.f;
            }
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const float xhat = (fx[j] - m[j]) * is[j];
                fx[j] = ga[j] * is[j] * (g[j] - db[j] * inv_m - xhat * dg[j] * inv_m);
            }
            store_vec<V>(dx, i, fx);
        }
    }
}

ATTNRT_KERNEL void batch_norm_backward_apply_f32(const float* x, const float* dy, const float* y,
                                                 float* dx, const float* mean,
                                                 const float* invstd, const float* gamma,
                                                 const float* dgamma, const float* dbeta,
                                                 int rows, int c, int count, int vec) {
    BY_VEC(vec, backward_apply, x, dy, y, dx, mean, invstd, gamma, dgamma, dbeta, rows, c, count);
}

ATTNRT_KERNEL void batch_norm_backward_apply_bf16(const bf16_t* x, const bf16_t* dy,
                                                  const bf16_t* y, bf16_t* dx,
                                                  const float* mean, const float* invstd,
                                                  const float* gamma, const float* dgamma,
                                                  const float* dbeta, int rows, int c,
                                                  int count, int vec) {
    BY_VEC(vec, backward_apply, x, dy, y, dx, mean, invstd, gamma, dgamma, dbeta, rows, c, count);
}
