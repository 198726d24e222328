// Linear layers: out = x W^T + bias, a tiled GEMM with fused epilogues, in three precisions.
//
// Precision: the tile's arithmetic is a template parameter of `linear_tile` (the "core"):
// SimtF32 (fp32 FMAs on CUDA cores, the 4x4 register blocks below), Tf32Core and Bf16Core
// (mma.sync on tensor cores, f32 accumulation). Each core names the shared-memory layout of
// its operand tiles: f32 k-major tiles for SimtF32 and Tf32Core (tf32 operands are rounded in
// registers), bf16 row-major tiles for Bf16Core, rounded once as they are stored (the same
// round-to-nearest-even the fragments applied before, so the same bits) and read as whole
// fragments by ldmatrix: three instructions per 16-wide k step of a warp where gathering
// and rounding f32 values took 24 loads and 12 conversions (ncu on an H100: the f32-tile
// bf16 kernels were bound by shared-memory load instructions, 80-86% of the L1 pipe).
// Global loads and epilogues are shared; each epilogue is instantiated once per core as
// linear_<epilogue>_<f32|tf32|bf16> (LINEAR_KERNELS at the end).
//
// Layouts (row-major): x (n, k); W (m, k), PyTorch's nn.Linear layout, so both operands are
// read along k ("NT" product); bias (m). One block computes a 64x64 tile of the (n, m)
// result in k steps of its tile layout's width (Tiles::K: 32 for the f32 tiles, 64 for the
// bf16 ones) through two shared-memory buffers (one barrier a step).
// Global loads are float4s when k is a multiple of 4 and x, W are 16-byte aligned (the
// engine's buffers), and the next k step's loads are issued before the current step's
// products (register prefetch). Every load and store is bounds-checked: any n, m, k.
//
// Variants (the epilogue applied to each result element; all take LinearArgs; the _f32 names
// below exist as _tf32 and _bf16 too):
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
//
// Few rows (n <= ROWS: the decoder's one query per batch item): linear_rows_<epilogue>_<precision>
// compute the same products with one warp per output column, its lanes along k (float4 loads
// when aligned) and a warp sum per row, no shared memory: m / 8 blocks that each read their
// weight rows once, coalesced, where the 64x64 tiles would give m / 64 blocks walking k in
// 16-wide steps. Operands are rounded as the precision's tensor cores round them (tf32, bf16;
// f32 as is), products and sums in f32. LinearKernels::run picks them for n <= ROWS. One more
// epilogue runs only here:
//   linear_rows_split_k_norm_c<W>_f32, W = 256, 512, 1024 (the widest row it normalises, as
//   in add_layer_norm_f32_c<W>; the launcher takes the narrowest that holds it):
//                             linear_split_k, then bias + residual + LayerNorm in the same
//                             launch: the last block to finish (of every column block and
//                             split) sums the partials as add_layer_norm_f32 does
//                             (layer_norm.cuh: same order, same code), one warp a row, so the
//                             normalisation needs no launch of its own. Blocks count themselves
//                             in `arrived` (one counter, zero before the launch; the last block
//                             zeroes it again, so graph replays need no reset) after a fence,
//                             and the last one reads the partials through L2. Needs m <= 1024
//                             (a row in one warp's registers) and y apart from x and W (other
//                             blocks may still read them). With tiles the last block would
//                             normalise its 64 rows 8 to a warp, one after another, where
//                             add_layer_norm_f32 spreads them over 88 blocks: not done there.
#include "common.cuh"
#include "layer_norm.cuh"
#include "tensor_core.cuh"

struct LinearArgs {
    const float* x;
    const float* weight;
    const float* bias;
    float* out;
    const unsigned* token_slot;   // linear_qkv_windows_f32 only: (heads, l_all)
    long long n, m, k;
    long long k_chunk;            // linear_split_k_f32 and _norm only
    float scale;
    int batch, l_all, heads, hd;  // linear_qkv_windows_f32 only
};
// The Rust mirror asserts the same size: a field added on one side only fails both builds.
static_assert(sizeof(LinearArgs) == 96, "mirrored in src/kernels/linear.rs");

namespace {

constexpr int BM = 64, BN = 64, THREADS = 256;
constexpr int ROWS = 8;  // the most rows of the few-rows kernels (mirrored in linear.rs)

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

// The operand tiles of one k step in shared memory, one layout per kind of core: K values of
// k for BM rows of x and BN rows of W. `put` stores four consecutive k (from kk) of tile row
// `r` of x and of W.

// f32, k-major (xs[k][row], ws[k][col]): a k run of a row has stride BM + 4 = 68 floats, which
// keeps the rows 16-byte aligned for SimtF32's float4 reads. (Two buffers of K = 32 take 34 KB
// of the 48 KB a block may hold statically.)
struct F32Tiles {
    static constexpr int K = 32;
    float x[K][BM + 4];
    float w[K][BN + 4];

    __device__ __forceinline__ void put(int r, int kk, float4 xv, float4 wv) {
        x[kk][r] = xv.x, x[kk + 1][r] = xv.y, x[kk + 2][r] = xv.z, x[kk + 3][r] = xv.w;
        w[kk][r] = wv.x, w[kk + 1][r] = wv.y, w[kk + 2][r] = wv.z, w[kk + 3][r] = wv.w;
    }
};

// bf16, row-major (x[row][k], w[col][k]), rounded to nearest even as stored. K = 64 (two
// buffers: 36 KB): at batch 1 a block's time is its chain of k steps, each waiting for its
// global loads (ncu, H200: the ldmatrix kernels latency-bound at 0.25-0.67 waves), and twice
// the step halves the chain. Rows are K + 8 = 72 values (144 bytes): ldmatrix's eight 16-byte
// row reads of one 8x8 matrix then fall in eight distinct groups of four banks.
struct Bf16Tiles {
    static constexpr int K = 64, STRIDE = K + 8;
    unsigned short x[BM][STRIDE];
    unsigned short w[BN][STRIDE];

    __device__ __forceinline__ void put(int r, int kk, float4 xv, float4 wv) {
        *reinterpret_cast<uint2*>(&x[r][kk]) =
            make_uint2(to_bf16x2(xv.x, xv.y), to_bf16x2(xv.z, xv.w));
        *reinterpret_cast<uint2*>(&w[r][kk]) =
            make_uint2(to_bf16x2(wv.x, wv.y), to_bf16x2(wv.z, wv.w));
    }
};

// The tile's arithmetic, one struct per precision (the template parameter of `linear_tile`).
// Each names its operand tiles (`Tiles`), holds its threads' share of the 64x64 accumulator
// tile, adds one k step from the shared tiles, and hands every element it holds to the
// epilogue. Global loads and epilogues are common to all three.

// f32 on CUDA cores: a 4x4 register block per thread (rows 4 ty + i, columns 4 tx + j), read
// from shared memory as float4s.
struct SimtF32 {
    using Tiles = F32Tiles;
    float acc[4][4] = {};

    __device__ __forceinline__ void step(const Tiles& s) {
        const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
#pragma unroll
        for (int kk = 0; kk < Tiles::K; ++kk) {
            const float4 a4 = *reinterpret_cast<const float4*>(&s.x[kk][4 * ty]);
            const float4 b4 = *reinterpret_cast<const float4*>(&s.w[kk][4 * tx]);
            const float a[4] = {a4.x, a4.y, a4.z, a4.w}, b[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
    }

    template <class Epilogue>
    __device__ __forceinline__ void store(const LinearArgs& p, long long row0, long long col0,
                                          Epilogue& epilogue) const {
        const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const long long r = row0 + 4 * ty + i, c = col0 + 4 * tx + j;
                if (r < p.n && c < p.m) epilogue(r, c, acc[i][j]);
            }
    }
};

// Tensor cores (mma.sync, f32 accumulators). The 8 warps tile the 64x64 block 2 x 4: warp w
// owns rows 32 (w / 4) + [0, 32) and columns 16 (w % 4) + [0, 16) as 2 x 2 m16n8 tiles, in
// the C fragment layout (tensor_core.cuh). The cores below differ in how they gather the
// operand fragments of a k step.
struct MmaAccumulators {
    float acc[2][2][4] = {};  // [m16 tile][n8 tile][c0..c3]

    template <class Epilogue>
    __device__ __forceinline__ void store(const LinearArgs& p, long long row0, long long col0,
                                          Epilogue& epilogue) const {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int g = lane / 4, t = lane % 4;
        const int wr = 32 * (warp / 4), wc = 16 * (warp % 4);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 2; ++ni)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const long long r = row0 + wr + 16 * mi + g + (e >= 2 ? 8 : 0);
                    const long long c = col0 + wc + 8 * ni + 2 * t + (e & 1);
                    if (r < p.n && c < p.m) epilogue(r, c, acc[mi][ni][e]);
                }
    }
};

// tf32 (m16n8k8): fragments gathered from the f32 k-major tiles (a row's k run has stride
// BM + 4) and rounded in registers (cvt.rna.tf32.f32).
struct Tf32Core : MmaAccumulators {
    using Tiles = F32Tiles;

    __device__ __forceinline__ void step(const Tiles& s) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int g = lane / 4, t = lane % 4;
        const int wr = 32 * (warp / 4), wc = 16 * (warp % 4);
#pragma unroll
        for (int k = 0; k < Tiles::K; k += Tf32Op::K) {
            unsigned a[2][4], b[2][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int r = wr + 16 * mi + g;
                Tf32Op::a(a[mi], &s.x[0][r], &s.x[0][r + 8], BM + 4, k, t);
            }
#pragma unroll
            for (int ni = 0; ni < 2; ++ni)
                Tf32Op::b(b[ni], &s.w[0][wc + 8 * ni + g], BN + 4, k, t);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 2; ++ni) mma_tf32(acc[mi][ni], a[mi], b[ni]);
        }
    }
};

// bf16 (m16n8k16): each fragment is one ldmatrix.x4 from the row-major bf16 tiles. For A (16
// rows x 16 k) lanes 8j..8j+7 give the rows of matrix j = a_j: rows + (j & 1) * 8, k + (j >> 1)
// * 8; for B (two n8 tiles x 16 k) matrix j is n8 tile j >> 1, k half j & 1, so registers
// (0, 1) are the first n8 tile's b0, b1 and (2, 3) the second's.
struct Bf16Core : MmaAccumulators {
    using Tiles = Bf16Tiles;

    __device__ __forceinline__ void step(const Tiles& s) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int wr = 32 * (warp / 4), wc = 16 * (warp % 4);
        const int j = lane / 8, row = lane % 8;
#pragma unroll
        for (int k = 0; k < Tiles::K; k += 16) {
            unsigned a[2][4], b[4];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
                ldmatrix_x4(a[mi], &s.x[wr + 16 * mi + row + 8 * (j & 1)][k + 8 * (j >> 1)]);
            ldmatrix_x4(b, &s.w[wc + row + 8 * (j >> 1)][k + 8 * (j & 1)]);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 2; ++ni) {
                    const unsigned bn[2] = {b[2 * ni], b[2 * ni + 1]};
                    mma_bf16(acc[mi][ni], a[mi], bn);
                }
        }
    }
};

// Accumulates x W^T over k in [k_begin, k_end) for this block's tile with `Core`'s
// arithmetic, then applies `epilogue` to every element of the tile inside (n, m).
template <class Core, class Epilogue>
__device__ void linear_tile(const LinearArgs& p, long long k_begin, long long k_end,
                            Epilogue epilogue) {
    // Two buffers: a step's products read one while the next step's operands are stored
    // into the other, one barrier per step.
    using Tiles = typename Core::Tiles;
    constexpr int K = Tiles::K;
    __shared__ __align__(16) Tiles tiles[2];
    const int tid = threadIdx.x;
    const long long row0 = (long long)blockIdx.y * BM, col0 = (long long)blockIdx.x * BN;
    // Loading: K / 4 threads read a row's K consecutive k (four each, from lk), THREADS / (K /
    // 4) rows at a time, PASSES times (rows lr + i * ROWS_AT_ONCE).
    constexpr int PER_ROW = K / 4, ROWS_AT_ONCE = THREADS / PER_ROW, PASSES = BM / ROWS_AT_ONCE;
    static_assert(BM == BN && BM % ROWS_AT_ONCE == 0, "whole passes over both tiles");
    const int lr = tid / PER_ROW, lk = (tid % PER_ROW) * 4;
    const bool vector = p.k % 4 == 0 && aligned16(p.x) && aligned16(p.weight);
    Core core;
    float4 xv[PASSES], wv[PASSES];
    auto load = [&](long long k0) {
#pragma unroll
        for (int i = 0; i < PASSES; ++i) {
            const int r = lr + i * ROWS_AT_ONCE;
            xv[i] = load4(p.x, row0 + r, p.n, p.k, k0 + lk, k_end, vector);
            wv[i] = load4(p.weight, col0 + r, p.m, p.k, k0 + lk, k_end, vector);
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < PASSES; ++i) tiles[buf].put(lr + i * ROWS_AT_ONCE, lk, xv[i], wv[i]);
    };
    load(k_begin);
    store(0);
    __syncthreads();
    int buf = 0;
    for (long long k0 = k_begin; k0 < k_end; k0 += K, buf ^= 1) {
        const bool more = k0 + K < k_end;
        if (more) load(k0 + K);  // in flight during this step's products
        core.step(tiles[buf]);
        // The other buffer's last readers finished before the previous barrier.
        if (more) store(buf ^ 1);
        __syncthreads();
    }
    core.store(p, row0, col0, epilogue);
}

// The few-rows products: x W^T over k in [k_begin, k_end) for n <= ROWS rows, one warp per
// output column, then `epilogue` on each of its n results. `Round` rounds each operand.
template <class Round, class Epilogue>
__device__ void linear_rows(const LinearArgs& p, long long k_begin, long long k_end,
                            Epilogue epilogue) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long c = (long long)blockIdx.x * (THREADS / 32) + warp;
    // A whole warp past m skips the products (the sums below need all its lanes) but does
    // not return: linear_split_k_norm's barriers after them count every thread.
    if (c < p.m) {
        const float* w = p.weight + c * p.k;
        float acc[ROWS] = {};
        // k_begin and k_end are multiples of 4 whenever the loads can be float4s (as in load4).
        if (p.k % 4 == 0 && aligned16(p.x) && aligned16(p.weight)) {
            for (long long kk = k_begin + 4 * lane; kk < k_end; kk += 128) {
                const float4 b = *reinterpret_cast<const float4*>(w + kk);
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    if (r >= p.n) break;
                    const float4 a = *reinterpret_cast<const float4*>(p.x + r * p.k + kk);
                    acc[r] = fmaf(Round::of(a.x), Round::of(b.x), acc[r]);
                    acc[r] = fmaf(Round::of(a.y), Round::of(b.y), acc[r]);
                    acc[r] = fmaf(Round::of(a.z), Round::of(b.z), acc[r]);
                    acc[r] = fmaf(Round::of(a.w), Round::of(b.w), acc[r]);
                }
            }
        } else {
            for (long long kk = k_begin + lane; kk < k_end; kk += 32) {
                const float b = Round::of(w[kk]);
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    if (r >= p.n) break;
                    acc[r] = fmaf(Round::of(p.x[r * p.k + kk]), b, acc[r]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const float sum = warp_sum(acc[r]);
            if (lane == 0 && r < p.n) epilogue(r, c, sum);
        }
    }
}

// Operand rounding of the few-rows products, as each precision's tensor cores round.
struct RoundF32 {
    static __device__ __forceinline__ float of(float v) { return v; }
};
struct RoundTf32 {
    static __device__ __forceinline__ float of(float v) { return __uint_as_float(to_tf32(v)); }
};
struct RoundBf16 {
    static __device__ __forceinline__ float of(float v) {
        return __uint_as_float(to_bf16x2(v, 0.0f) << 16);
    }
};

// How a kernel computes its products: 64x64 tiles with a core, or few rows with a rounding.
template <class Core>
struct Tiles {
    template <class Epilogue>
    static __device__ void run(const LinearArgs& p, long long k_begin, long long k_end,
                               Epilogue epilogue) {
        linear_tile<Core>(p, k_begin, k_end, epilogue);
    }
};
template <class Round>
struct Rows {
    template <class Epilogue>
    static __device__ void run(const LinearArgs& p, long long k_begin, long long k_end,
                               Epilogue epilogue) {
        linear_rows<Round>(p, k_begin, k_end, epilogue);
    }
};

// The epilogues, each over any way of computing the products (`Product`: Tiles<Core>
// or Rows<Round>); the kernels below instantiate them per precision.
template <class Product>
__device__ void linear_bias(const LinearArgs& p) {
    Product::run(p, 0, p.k, [&](long long r, long long c, float acc) {
        p.out[r * p.m + c] = (acc + p.bias[c]) * p.scale;
    });
}

template <class Product>
__device__ void linear_bias_relu(const LinearArgs& p) {
    Product::run(p, 0, p.k, [&](long long r, long long c, float acc) {
        p.out[r * p.m + c] = fmaxf(acc + p.bias[c], 0.0f);
    });
}

template <class Product>
__device__ void linear_split_k(const LinearArgs& p) {
    const long long begin = blockIdx.z * p.k_chunk, end = min(p.k, begin + p.k_chunk);
    float* out = p.out + blockIdx.z * p.n * p.m;
    Product::run(p, begin, end,
                 [&](long long r, long long c, float acc) { out[r * p.m + c] = acc; });
}

// Few rows only (n <= ROWS <= the block's warps): each warp normalises at most one row, of at
// most C values (the width variants of add_layer_norm_f32_c*).
static_assert(ROWS <= THREADS / 32, "linear_split_k_norm: a warp per row");
// `norm` is add_layer_norm_f32's with parts = p.out; `arrived` one counter. (Separate kernel
// parameters: inside LinearArgs they would change every other kernel's register allocation.)
template <class Product, int C>
__device__ void linear_split_k_norm(const LinearArgs& p, const LayerNormArgs& norm,
                                    unsigned* arrived) {
    linear_split_k<Product>(p);
    __shared__ bool last;
    __threadfence();  // this block's partials are visible device-wide before its count
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(arrived, 1u) == gridDim.x * gridDim.z - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();  // every other block counted after its fence: read their partials
    const long long row = threadIdx.x / 32;
    if (row < p.n) add_layer_norm_row<C / 32, false, false>(norm, row, threadIdx.x & 31);
    if (threadIdx.x == 0) *arrived = 0;  // ready for the next launch
}

template <class Product>
__device__ void linear_qkv_windows(const LinearArgs& p) {
    const long long width = p.m / 3;  // c
    Product::run(p, 0, p.k, [&](long long r, long long c, float acc) {
        const long long which = c / width, channel = c % width;
        const long long head = channel / p.hd, ch = channel % p.hd;
        const long long token = r / p.batch, b = r % p.batch;
        float v = acc + p.bias[c];
        if (which == 0) v *= p.scale;
        const long long slot = p.token_slot[head * p.l_all + token];
        p.out[(((which * p.heads + head) * p.batch + b) * p.l_all + slot) * p.hd + ch] = v;
    });
}

}  // namespace

// linear_<epilogue>_<precision>: f32 (CUDA cores), tf32 and bf16 (tensor cores); and
// linear_rows_<epilogue>_<precision> for few rows (no QKV variant: the encoder has many rows;
// the LayerNorm epilogue only there).
#define LINEAR_KERNEL(NAME, BODY, PRODUCT)                                                 \
    ATTNRT_KERNEL void __launch_bounds__(THREADS) NAME(LinearArgs p) { BODY<PRODUCT>(p); }
// The split-k LayerNorm comes in the row widths of add_layer_norm_f32_c* (256, 512, 1024
// values: 8, 16, 32 a lane), the launcher taking the narrowest that holds the row. The widest
// row would take the few-rows GEMM from 40 to about 120 registers, two blocks an SM instead of
// eight, for a tail that one block runs: held to four blocks an SM, it spills 32 bytes in
// f32 and none in tf32 and bf16 (ptxas, sm_90). (With one width for all, the decoder's rows
// of 256 paid for it: its three split-k LayerNorms a layer took 14-25 us each under ncu on
// an H100, the same GEMMs without the tail 4-5 us.)
#define LINEAR_NORM_KERNEL(NAME, PRODUCT, C)                                               \
    ATTNRT_KERNEL void __launch_bounds__(THREADS, 4)                                       \
        NAME(LinearArgs p, LayerNormArgs norm, unsigned* arrived) {                        \
        linear_split_k_norm<PRODUCT, C>(p, norm, arrived);                                 \
    }
#define LINEAR_KERNELS(PRECISION, CORE, ROUND)                                             \
    LINEAR_KERNEL(linear_bias_##PRECISION, linear_bias, Tiles<CORE>)                       \
    LINEAR_KERNEL(linear_bias_relu_##PRECISION, linear_bias_relu, Tiles<CORE>)             \
    LINEAR_KERNEL(linear_split_k_##PRECISION, linear_split_k, Tiles<CORE>)                 \
    LINEAR_KERNEL(linear_qkv_windows_##PRECISION, linear_qkv_windows, Tiles<CORE>)         \
    LINEAR_KERNEL(linear_rows_bias_##PRECISION, linear_bias, Rows<ROUND>)                  \
    LINEAR_KERNEL(linear_rows_bias_relu_##PRECISION, linear_bias_relu, Rows<ROUND>)        \
    LINEAR_KERNEL(linear_rows_split_k_##PRECISION, linear_split_k, Rows<ROUND>)          \
    LINEAR_NORM_KERNEL(linear_rows_split_k_norm_c256_##PRECISION, Rows<ROUND>, 256)      \
    LINEAR_NORM_KERNEL(linear_rows_split_k_norm_c512_##PRECISION, Rows<ROUND>, 512)      \
    LINEAR_NORM_KERNEL(linear_rows_split_k_norm_c1024_##PRECISION, Rows<ROUND>, 1024)

LINEAR_KERNELS(f32, SimtF32, RoundF32)
LINEAR_KERNELS(tf32, Tf32Core, RoundTf32)
LINEAR_KERNELS(bf16, Bf16Core, RoundBf16)
