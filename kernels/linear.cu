// Linear layers: out = x W^T + bias, a tiled fp32 SGEMM (CUDA cores) with fused epilogues.
//
// Layouts (row-major): x (n, k); W (m, k), PyTorch's nn.Linear layout, so both operands are
// read along k ("NT" product); bias (m). One block computes a 64x64 tile of the (n, m)
// result in 16-wide k steps through shared memory; each of its 256 threads keeps a 4x4
// register block (rows 4 ty + i, columns 4 tx + j), read from shared memory as float4s.
// Global loads are float4s when k is a multiple of 4 and x, W are 16-byte aligned (the
// engine's buffers), and the next k step's loads are issued before the current step's
// products (register prefetch). Every load and store is bounds-checked: any n, m, k.
//
// Variants (the epilogue applied to each result element; all take LinearArgs):
//   linear_bias_f32           out (n, m) = (acc + bias) * scale      (scale 1: plain linear;
//                                                                     the decoder's query uses hd^-0.5)
//   linear_bias_relu_f32      out (n, m) = relu(acc + bias)          (FFN1)
//   linear_split_k_f32        out (splits, n, m): blockIdx.z sums k in [z*k_chunk, (z+1)*k_chunk),
//                             no bias. For the layers followed by bias + residual + LayerNorm
//                             (output projection, FFN2): their outputs are only c = 256 wide, so
//                             64x64 tiles alone give too few blocks (44 at 704 rows, 4 in the
//                             decoder); add_layer_norm_f32 (layer_norm.cu) then sums the partials
//                             in a fixed order with bias and residual, and normalises.
//   linear_qkv_windows_f32    the encoder's QKV projection, m = 3c: q (scaled by `scale`), k
//                             and v are written per head straight into the window-partitioned,
//                             cyclically shifted layout the attention reads:
//                             out[which][head][b][slot][hd], which = q|k|v, where slot is
//                             token_slot[head][token] (the head's P(w, s)) and input row
//                             r = token * batch + b (the (L_all, b, c) activations).
#include "common.cuh"

struct LinearArgs {
    const float* x;
    const float* weight;
    const float* bias;
    float* out;
    const unsigned* token_slot;   // linear_qkv_windows_f32 only: (heads, l_all)
    long long n, m, k;
    long long k_chunk;            // linear_split_k_f32 only
    float scale;
    int batch, l_all, heads, hd;  // linear_qkv_windows_f32 only
};

namespace {

constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;

__device__ __forceinline__ bool aligned16(const void* ptr) {
    return (reinterpret_cast<unsigned long long>(ptr) & 15) == 0;
}

// Four consecutive k of one row, k in [kk, kk + 4), zeros past `k_end` or past `rows`.
__device__ __forceinline__ float4 load4(const float* base, long long row, long long rows,
                                        long long stride, long long kk, long long k_end,
                                        bool vector) {
    if (row >= rows) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const float* src = base + row * stride + kk;
    // k_end is a multiple of 4 whenever `vector` holds (k and the split chunks are).
    if (vector) return kk < k_end ? *reinterpret_cast<const float4*>(src) : make_float4(0, 0, 0, 0);
    return make_float4(kk < k_end ? src[0] : 0.0f, kk + 1 < k_end ? src[1] : 0.0f,
                       kk + 2 < k_end ? src[2] : 0.0f, kk + 3 < k_end ? src[3] : 0.0f);
}

// Accumulates x W^T over k in [k_begin, k_end) for this block's tile, then applies `epilogue`.
template <class Epilogue>
__device__ void linear_tile(const LinearArgs& p, long long k_begin, long long k_end,
                            Epilogue epilogue) {
    // Rows padded to 68 floats: still 16-byte aligned for the float4 reads, and the
    // transposed stores below conflict at most 2-way.
    __shared__ __align__(16) float xs[BK][BM + 4];
    __shared__ __align__(16) float ws[BK][BN + 4];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const long long row0 = (long long)blockIdx.y * BM, col0 = (long long)blockIdx.x * BN;
    // Loading: thread -> (tile row tid / 4, four consecutive k from (tid % 4) * 4).
    const int lr = tid / 4, lk = (tid % 4) * 4;
    const bool vector = p.k % 4 == 0 && aligned16(p.x) && aligned16(p.weight);
    float acc[4][4] = {};
    float4 xv = load4(p.x, row0 + lr, p.n, p.k, k_begin + lk, k_end, vector);
    float4 wv = load4(p.weight, col0 + lr, p.m, p.k, k_begin + lk, k_end, vector);
    for (long long k0 = k_begin; k0 < k_end; k0 += BK) {
        xs[lk][lr] = xv.x, xs[lk + 1][lr] = xv.y, xs[lk + 2][lr] = xv.z, xs[lk + 3][lr] = xv.w;
        ws[lk][lr] = wv.x, ws[lk + 1][lr] = wv.y, ws[lk + 2][lr] = wv.z, ws[lk + 3][lr] = wv.w;
        __syncthreads();
        if (k0 + BK < k_end) {  // the next step's loads overlap this step's products
            xv = load4(p.x, row0 + lr, p.n, p.k, k0 + BK + lk, k_end, vector);
            wv = load4(p.weight, col0 + lr, p.m, p.k, k0 + BK + lk, k_end, vector);
        }
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            const float4 a4 = *reinterpret_cast<const float4*>(&xs[kk][4 * ty]);
            const float4 b4 = *reinterpret_cast<const float4*>(&ws[kk][4 * tx]);
            const float a[4] = {a4.x, a4.y, a4.z, a4.w}, b[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long r = row0 + 4 * ty + i, c = col0 + 4 * tx + j;
            if (r < p.n && c < p.m) epilogue(r, c, acc[i][j]);
        }
}

}  // namespace

ATTNRT_KERNEL void __launch_bounds__(THREADS) linear_bias_f32(LinearArgs p) {
    linear_tile(p, 0, p.k, [&](long long r, long long c, float acc) {
        p.out[r * p.m + c] = (acc + p.bias[c]) * p.scale;
    });
}

ATTNRT_KERNEL void __launch_bounds__(THREADS) linear_bias_relu_f32(LinearArgs p) {
    linear_tile(p, 0, p.k, [&](long long r, long long c, float acc) {
        p.out[r * p.m + c] = fmaxf(acc + p.bias[c], 0.0f);
    });
}

ATTNRT_KERNEL void __launch_bounds__(THREADS) linear_split_k_f32(LinearArgs p) {
    const long long begin = blockIdx.z * p.k_chunk, end = min(p.k, begin + p.k_chunk);
    float* out = p.out + blockIdx.z * p.n * p.m;
    linear_tile(p, begin, end, [&](long long r, long long c, float acc) { out[r * p.m + c] = acc; });
}

ATTNRT_KERNEL void __launch_bounds__(THREADS) linear_qkv_windows_f32(LinearArgs p) {
    const long long width = p.m / 3;  // c
    linear_tile(p, 0, p.k, [&](long long r, long long c, float acc) {
        const long long which = c / width, channel = c % width;
        const long long head = channel / p.hd, ch = channel % p.hd;
        const long long token = r / p.batch, b = r % p.batch;
        float v = acc + p.bias[c];
        if (which == 0) v *= p.scale;
        const long long slot = p.token_slot[head * p.l_all + token];
        p.out[(((which * p.heads + head) * p.batch + b) * p.l_all + slot) * p.hd + ch] = v;
    });
}
