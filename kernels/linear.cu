// Linear layers: out = x W^T + bias, a tiled fp32 SGEMM (CUDA cores) with fused epilogues.
//
// Layouts (row-major): x (n, k); W (m, k), PyTorch's nn.Linear layout, so both operands are
// read along k ("NT" product); bias (m). One block computes a 64x64 tile of the (n, m)
// result in 16-wide k steps through shared memory; each of its 256 threads keeps a 4x4
// register block (rows ty + 16 i, columns tx + 16 j, so a warp's shared-memory reads are
// broadcasts or 16 distinct banks). Every load and store is bounds-checked: any n, m, k.
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

// Accumulates x W^T over k in [k_begin, k_end) for this block's tile, then applies `epilogue`.
template <class Epilogue>
__device__ void linear_tile(const LinearArgs& p, long long k_begin, long long k_end,
                            Epilogue epilogue) {
    // +1 column: the transposed stores below hit distinct banks.
    __shared__ float xs[BK][BM + 1];
    __shared__ float ws[BK][BN + 1];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const long long row0 = (long long)blockIdx.y * BM, col0 = (long long)blockIdx.x * BN;
    // Loading: thread -> (tile row tid / 4, four consecutive k from (tid % 4) * 4).
    const int lr = tid / 4, lk = (tid % 4) * 4;
    const long long xr = row0 + lr, wr = col0 + lr;
    float acc[4][4] = {};
    for (long long k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long kk = k0 + lk + j;
            xs[lk + j][lr] = (xr < p.n && kk < k_end) ? p.x[xr * p.k + kk] : 0.0f;
            ws[lk + j][lr] = (wr < p.m && kk < k_end) ? p.weight[wr * p.k + kk] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx + 16 * j];
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
            const long long r = row0 + ty + 16 * i, c = col0 + tx + 16 * j;
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
