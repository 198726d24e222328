// Cyclic-shift window attention for one head (spec, encoder step 5), fused with the window
// reverse and head concatenation (steps 6-7) in its output write, and its backward.
//
// Math. Query window i and key window l are w*w slots of hd channels. Score column
// col = l*w*w + a*w + e pairs query window i with key window l rolled by (+a, +e):
//   s = q_i . K(l,a,e),  K(l,a,e)[r][c] = K(l)[(r-a) mod w][(c-e) mod w];
//   w > 1: s = (s + sr[a*w+e]) / (w*w);  padded key: s = -inf;  s += bias[i][col] (if any);
//   p = softmax over the n_keys columns;  o_i[pos] = sum_col p[col] * V(l,a,e)[pos].
// A rolled window is a 2-D circular cross-correlation, so (architecture note, "Leads")
//   s(i,l,a,e) = sum_pos D[i*ww + pos][l*ww + shift(pos,a,e)],   D = Q K^T over tokens,
//   o[i*ww + pos] = sum_src P'[i*ww + pos][src] V[src],  P'[i*ww+pos][l*ww+src_pos] = p(i,l,ae),
// where ae is the (a, e) that takes pos to src_pos. Both products are token-level GEMM tiles;
// no shifted copy of K or V is ever made, in global or shared memory.
// With w == 1 this is plain scaled-dot-product attention over tokens (the query arrives
// pre-scaled), which is how the decoder's cross attention uses it.
//
// Blocks. One block per (query tile of 64 slots, key split, batch item b, head z): 64 / (w*w)
// whole query windows (w*w <= 64). A split walks its chunks of 64 key slots (whole key
// windows), flash style, keeping a running max and sum per query window: cp.async has
// brought the chunk's k (and, one step behind, v) into shared memory while the previous
// chunk was finishing; D = Q K^T (64 x 64) by the core; the scores (64 columns per query
// window, each a sum of w*w D entries along a wrapped diagonal) with sr, mask and bias (the
// mask and bias are loaded into registers before D, so their latency hides behind it);
// online softmax (accumulators rescaled); P' (the probabilities expanded to a 64 x 64 slot
// tile); O = O * rescale + P' V by the core. That is the windows body: five block-wide
// phases a chunk, each behind a barrier, the block's threads sharing every tile.
//
// Rows body (w <= 2 with the bf16 core: the encoder's w = 1 and w = 2 sets, and the
// decoder's cross attention). For w <= 2 a query window of the tile lies inside a warp's 16
// rows, so nothing needs the block's threads to share D: each warp owns 16 query rows of the
// tile and one half (32 keys) of every chunk, flash-attention style. Its Q fragments (read
// once from global memory), D = Q K^T, the running max and sum and its full-width O stay in
// registers. With w == 1 a score is one entry of D; with w == 2 each entry of D becomes the
// score of its window's column (roll = pos ^ src), the wrapped-diagonal sums reduced with
// two shuffle butterflies (scores_w2), so that each row holds its window's scores permuted
// and the tile is P'. Either way the mma C fragment of P' is the A fragment of P' V, so the
// probabilities never leave the registers; the softmax's row reductions are quad shuffles.
// k and v chunks are double-buffered (cp.async): a chunk's one barrier both publishes it and
// frees the other buffer, into which the next chunk is loaded while this one is computed.
// After the walk the two key halves of each row merge through shared memory (o = o_0 f_0 +
// o_1 f_1, f_h = exp(m_h - max)), each warp keeping half of the columns: the windows body's
// ownership of O, so both bodies end alike (the output write, or the key splits' merge).
//
// Key splits. A head of one split writes its output directly. With several, each block writes
// its unnormalised output and its windows' running max and sum to `partial`, counts itself in
// `arrived[unit]`, and the block that arrives last merges the splits in split order (so the
// result does not depend on which block is last), writes the output and resets the counter
// for the next launch. Splitting keeps a head off a layer's critical path: a head is 11 query
// tiles at the released size, each walking all 704 keys unless split.
//
// Layouts. Slot s of batch item b has its hd channels at
//   q + b*q_batch_stride + s*q_slot_stride + z*head_stride (likewise k, v with kv_*).
// The encoder passes its per-head (b, L_all, hd) window layout (linear_qkv_windows_f32); the
// decoder passes (tokens, b, c) rows with head z at channel z*hd.
//   bias     (n_queries / (w*w), n_keys) or null     key_pad  (batch, n_keys), nonzero = -inf
//   sr       (w*w), read when w > 1                  slot_token (n_queries) slot -> token, or null
//   out      (tokens, batch, out_row); head z writes channels out_channel + z*hd + [0, hd):
//            the window-reversed, concatenated output (token = slot_token[slot]).
//   head_out (batch, n_queries, hd) or null: the output before window reverse, for tests.
//   partial  splits > 1: (splits, units, 64, hd) outputs, then (splits, units, 2, 64) running
//            max | sum, units = batch x heads x query tiles;  arrived (units), zero between
//            launches.
//
// Fused heads: window_attention_heads_hd*_<precision> runs up to MAX_FUSED argument sets
// (heads of different windows, lengths and splits, sharing the variant and batch) in one
// launch, so one layer's attention fills the GPU; in bf16 the sets of w <= 2 run the rows
// body and the others the windows body, in the same launch. The arguments arrive as one
// __grid_constant__ struct (2.7 KB of kernel parameters, read in place: no upload, capturable
// in a graph). blockIdx.x is flattened over the sets: set i owns blocks [block_start[i],
// block_start[i+1]), its query tiles x heads x splits. Both entry points call the same body
// with the block's (tile, split, b, z), so a head computes bit for bit the same either way.
//
// Cores (template parameter), all with f32 accumulation and an f32 softmax, all with one
// ownership of the results (the mma C fragment: 8 warps as 4 x 2 warp tiles; a warp's D tile
// is 16 x 32, four m16n8 tiles, its O tile 16 x HDP/2):
//   SimtF32   fp32 FMAs on CUDA cores (the exact f32 path), window_attention_*_f32;
//   Tf32Mma   mma.sync m16n8k8, operands rounded to tf32 in registers, *_tf32;
//   Bf16Mma   mma.sync m16n8k16, operands rounded to bf16 in registers, *_bf16.
// Variants: window_attention_hd{16,32,64,128}_<precision>: the tiles are HDP channels wide;
// a head of hd <= HDP channels runs in the narrowest variant, channels [hd, HDP) zero in
// shared memory (and in the rows body's Q fragments), so every hd from 1 to 128 runs (loops
// over channels keep compile-time trip counts). Shared memory is dynamic (above 48 KB the
// launcher opts in), the larger of the two bodies' layouts in bf16.
//
// Backward (the ViT trainer's; one head per launch). The forward keeps no probabilities, so
// the backward recomputes them from q and k, in two deterministic passes without atomics, on
// the trainer's windowed head-major buffers: q (pre-scaled), k, v and the output gradient
// dout, each (n, heads, t, hd) with this head's tokens in its window-partition slot order
// (the trainer gathers them so). No key padding and no bias (the ViT has neither):
//   window_attention_backward_scores_f32: per query window (one warp), the scores as the
//     forward rounds them, p = softmax,
//     dP[col] = sum_pos dout[i*ww + pos] . v[l*ww + wrap_diff(pos, roll)], and
//     dS = p (dP - sum p dP) / ww; writes p and dS, (n, heads, t, t), row i < t / ww;
//   window_attention_backward_grads_f32: per slot and channel, the three sums that read them:
//     dq[i*ww + pos] = sum_col dS[i][col] k[l*ww + wrap_diff(pos, roll)],
//     dk[l*ww + x]   = sum_{i, roll} dS[i][l*ww + roll] q[i*ww + wrap_add(x, roll)],
//     dv[l*ww + x]   = sum_{i, roll}  p[i][l*ww + roll] dout[i*ww + wrap_add(x, roll)].
// dq is the gradient of the pre-scaled q; the trainer's scatter multiplies it by hd^-0.5.
#include "common.cuh"
#include "tensor_core.cuh"

#include <type_traits>

// In-window position arithmetic of the cyclic shifts: positions of a w x w window
// (w = 1 << lw) are pos = r*w + c.
// The position at (r_x - r_y, c_x - c_y) mod w: both the key position that roll y = a*w + e
// brings to query position x, and the roll that brings key position y to x.
__device__ __forceinline__ int wrap_diff(int x, int y, int lw) {
    const int m = (1 << lw) - 1;
    return ((((x >> lw) - (y >> lw)) & m) << lw) | (((x & m) - (y & m)) & m);
}

// The position at (r_x + r_y, c_x + c_y) mod w: the query position to which roll y brings
// key position x (the inverse of wrap_diff in its first argument).
__device__ __forceinline__ int wrap_add(int x, int y, int lw) {
    const int m = (1 << lw) - 1;
    return ((((x >> lw) + (y >> lw)) & m) << lw) | (((x & m) + (y & m)) & m);
}

struct AttentionArgs {
    const float* q;
    const float* k;
    const float* v;
    const float* bias;
    const unsigned char* key_pad;
    const float* sr;
    const unsigned* slot_token;
    float* out;
    float* head_out;
    float* partial;     // splits > 1: (splits, units, TILE, hd) outputs, (splits, units, 2, TILE)
                        // running max | sum; units = batch x heads x query tiles
    unsigned* arrived;  // splits > 1: (units) counters, zero between launches
    long long q_batch_stride, q_slot_stride, kv_batch_stride, kv_slot_stride, head_stride;
    int w, hd, n_queries, n_keys, batch, heads, out_row, out_channel, splits, chunks_per_split;
};

namespace attention {

constexpr int TILE = 64;        // query slots per block and key slots per chunk
constexpr int THREADS = 256;    // 8 warps
constexpr int DS = TILE + 4;    // row stride of D, P' and the scores: fragment reads of 8 rows
                                // x 4 columns and softmax rows hit 32 distinct banks
constexpr int SC_ROWS = 16;     // score rows kept apart from D when w > 1 (64 / 4 windows)
constexpr int MAX_SPLITS = 64;  // the merge's factor table is (splits, TILE) inside D
constexpr int SCORES_PER_THREAD = TILE * TILE / THREADS;

// Shared memory, in floats. Row strides: q and k HDP + 4 (16-byte rows for cp.async;
// fragment reads of 8 rows x 4 columns conflict-free), v HDP + 8 (4 rows x 8 columns).
template <int HDP>
struct Smem {
    static constexpr int QS = HDP + 4, VS = HDP + 8;
    static constexpr int q = 0, k = q + TILE * QS, v = k + TILE * QS, d = v + TILE * VS;
    static constexpr int sc = d + TILE * DS, stats = sc + SC_ROWS * DS;
    // stats: run_max, run_sum, rescale (TILE each), sr (TILE), then one int (the merge flag).
    static constexpr int floats = stats + 4 * TILE + 4;
    static constexpr int bytes = floats * 4;
};

__device__ __forceinline__ bool aligned16(const void* ptr) {
    return (reinterpret_cast<unsigned long long>(ptr) & 15) == 0;
}

// Issues the copies of TILE slots from slot `first` (zero rows from `count` on) of one
// operand, channels [0, hd), into a shared tile of row stride `stride`. Channels [hd, HDP)
// are not touched (zeroed once per block).
template <int HDP>
__device__ __forceinline__ void load_tile(float* tile, int stride, const float* base,
                                          long long slot_stride, int first, int count, int hd,
                                          bool vector) {
    if (vector) {
        constexpr int PER_ROW = HDP / 4;
#pragma unroll 2
        for (int e = threadIdx.x; e < TILE * PER_ROW; e += THREADS) {
            const int r = e / PER_ROW, c = 4 * (e % PER_ROW);
            if (c >= hd) continue;
            const bool in = first + r < count;
            const float* src = in ? base + (long long)(first + r) * slot_stride + c : base;
            cp_async16(tile + r * stride + c, src, in ? 16 : 0);
        }
    } else {
#pragma unroll 4
        for (int e = threadIdx.x; e < TILE * HDP; e += THREADS) {
            const int r = e / HDP, c = e % HDP;
            if (c >= hd) continue;
            const bool in = first + r < count;
            const float* src = in ? base + (long long)(first + r) * slot_stride + c : base;
            cp_async4(tile + r * stride + c, src, in ? 4 : 0);
        }
    }
}

// The cores. qk: d[ni][e] += Q K^T over HDP channels for the warp's 16 x 32 tile at (r0, c0)
// (element e of m16n8 tile ni, in the C-fragment layout). pv: o[ni][e] += P' V over the 64
// key slots for the warp's 16 x (8 NT) tile at (r0, n0). Q and K rows have stride QS, V rows
// VS, P' rows DS.
struct SimtF32 {
    template <int HDP>
    static __device__ __forceinline__ void qk(const float* qs, const float* ks, int r0, int c0,
                                              float (&d)[4][4]) {
        constexpr int QS = Smem<HDP>::QS;
        const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        const float* q0 = qs + (r0 + g) * QS;
        const float* q1 = q0 + 8 * QS;
#pragma unroll 4
        for (int kk = 0; kk < HDP; ++kk) {
            const float x0 = q0[kk], x1 = q1[kk];
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const float* kr = ks + (c0 + 8 * ni + 2 * t) * QS + kk;
                const float y0 = kr[0], y1 = kr[QS];
                d[ni][0] = fmaf(x0, y0, d[ni][0]);
                d[ni][1] = fmaf(x0, y1, d[ni][1]);
                d[ni][2] = fmaf(x1, y0, d[ni][2]);
                d[ni][3] = fmaf(x1, y1, d[ni][3]);
            }
        }
    }

    template <int HDP, int NT>
    static __device__ __forceinline__ void pv(const float* ps, const float* vs, int r0, int n0,
                                              float (&o)[NT][4]) {
        constexpr int VS = Smem<HDP>::VS;
        const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        const float* p0 = ps + (r0 + g) * DS;
        const float* p1 = p0 + 8 * DS;
#pragma unroll 4
        for (int kk = 0; kk < TILE; ++kk) {
            const float x0 = p0[kk], x1 = p1[kk];
#pragma unroll
            for (int ni = 0; ni < NT; ++ni) {
                const float2 y = *reinterpret_cast<const float2*>(vs + kk * VS + n0 + 8 * ni + 2 * t);
                o[ni][0] = fmaf(x0, y.x, o[ni][0]);
                o[ni][1] = fmaf(x0, y.y, o[ni][1]);
                o[ni][2] = fmaf(x1, y.x, o[ni][2]);
                o[ni][3] = fmaf(x1, y.y, o[ni][3]);
            }
        }
    }
};

// The tensor-core cores: Op (tensor_core.cuh) is the operand type, tf32 or bf16.
template <class Op>
struct Mma {
    template <int HDP>
    static __device__ __forceinline__ void qk(const float* qs, const float* ks, int r0, int c0,
                                              float (&d)[4][4]) {
        constexpr int QS = Smem<HDP>::QS;
        const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        const float* q0 = qs + (r0 + g) * QS;
        const float* q1 = q0 + 8 * QS;
#pragma unroll
        for (int k = 0; k < HDP; k += Op::K) {
            unsigned a[4];
            Op::a(a, q0, q1, 1, k, t);
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                unsigned b[2];
                Op::b(b, ks + (c0 + 8 * ni + g) * QS, 1, k, t);  // K^T: key row c0 + 8 ni + g
                Op::mma(d[ni], a, b);
            }
        }
    }

    template <int HDP, int NT>
    static __device__ __forceinline__ void pv(const float* ps, const float* vs, int r0, int n0,
                                              float (&o)[NT][4]) {
        constexpr int VS = Smem<HDP>::VS;
        const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        const float* p0 = ps + (r0 + g) * DS;
        const float* p1 = p0 + 8 * DS;
#pragma unroll
        for (int k = 0; k < TILE; k += Op::K) {
            unsigned a[4];
            Op::a(a, p0, p1, 1, k, t);
#pragma unroll
            for (int ni = 0; ni < NT; ++ni) {
                unsigned b[2];
                Op::b(b, vs + n0 + 8 * ni + g, VS, k, t);
                Op::mma(o[ni], a, b);
            }
        }
    }
};
using Tf32Mma = Mma<Tf32Op>;
using Bf16Mma = Mma<Bf16Op>;

// The end of a block, shared by both bodies: `o` is the warp's unnormalised 16 x HDP/2 output
// tile at rows dr, columns on (the mma C layout; NT = HDP / 16 n8 tiles), run_max and run_sum
// (shared) the tile's query windows' softmax statistics, complete (a barrier since they were
// written), `factor` shared scratch of MAX_SPLITS x TILE floats, `last` a shared int. Writes
// the normalised output of one split; with several, the partial results, and the last block
// to arrive merges the splits.
template <int HDP>
__device__ void finish(const AttentionArgs& p, int tile, int split, int b, int z, int lww,
                       int live, int dr, int on, const float (&o)[HDP / 16][4],
                       const float* run_max, float* run_sum, float* factor, int* last) {
    constexpr int NT = HDP / 16;
    const int tid = threadIdx.x, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int hd = p.hd, q0 = tile * TILE;
    // The output of slot `slot`, channel c: into the concatenated heads at its token, and
    // into head_out (single-head launches) before the window reverse.
    auto write = [&](int slot, int c, float value) {
        const long long token = p.slot_token ? p.slot_token[slot] : slot;
        p.out[(token * p.batch + b) * p.out_row + p.out_channel + z * hd + c] = value;
        if (p.head_out) p.head_out[((long long)b * p.n_queries + slot) * hd + c] = value;
    };
    if (p.splits == 1) {
#pragma unroll
        for (int ni = 0; ni < NT; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = dr + g + (e >= 2 ? 8 : 0), c = on + 8 * ni + 2 * t + (e & 1);
                if (c < hd && q0 + r < p.n_queries) write(q0 + r, c, o[ni][e] / run_sum[r >> lww]);
            }
        return;
    }

    // Split: this block's partial results, then the merge by the last block to arrive.
    const int tiles = (p.n_queries + TILE - 1) / TILE;
    const long long units = (long long)p.batch * p.heads * tiles;
    const long long unit = ((long long)b * p.heads + z) * tiles + tile;
    float* part_o = p.partial;                               // (splits, units, TILE, hd)
    float* part_s = p.partial + p.splits * units * TILE * hd;  // (splits, units, 2, TILE)
    {
        float* mine = part_o + (split * units + unit) * TILE * hd;
#pragma unroll
        for (int ni = 0; ni < NT; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = dr + g + (e >= 2 ? 8 : 0), c = on + 8 * ni + 2 * t + (e & 1);
                if (c < hd && q0 + r < p.n_queries) __stcg(mine + r * hd + c, o[ni][e]);
            }
        float* stats = part_s + (split * units + unit) * 2 * TILE;
        if (tid < live) {
            __stcg(stats + tid, run_max[tid]);
            __stcg(stats + TILE + tid, run_sum[tid]);
        }
    }
    __threadfence();  // the partial results are visible device-wide before the count
    __syncthreads();
    if (tid == 0) *last = atomicAdd(p.arrived + unit, 1u) == (unsigned)p.splits - 1;
    __syncthreads();
    if (!*last) return;
    __threadfence();

    // Merge: per window, M = max of the splits' maxima, factor_s = exp(m_s - M),
    // L = sum_s l_s factor_s; o = (sum_s o_s factor_s) / L, splits in order.
    if (tid < live) {
        float m = NEG_INF;
        for (int s = 0; s < p.splits; ++s)
            m = fmaxf(m, __ldcg(part_s + (s * units + unit) * 2 * TILE + tid));
        const float base = m == NEG_INF ? 0.0f : m;
        float sum = 0.0f;
        for (int s = 0; s < p.splits; ++s) {
            const float* stats = part_s + (s * units + unit) * 2 * TILE;
            const float f = expf(__ldcg(stats + tid) - base);
            factor[s * TILE + tid] = f;
            sum += __ldcg(stats + TILE + tid) * f;
        }
        run_sum[tid] = sum;
    }
    __syncthreads();
    for (int e = tid; e < TILE * hd; e += THREADS) {
        const int r = e / hd, c = e % hd;
        if (q0 + r >= p.n_queries) break;  // rows only grow with e
        const int gw = r >> lww;
        float acc = 0.0f;
        for (int s = 0; s < p.splits; ++s)
            acc += __ldcg(part_o + ((s * units + unit) * TILE + r) * hd + c) * factor[s * TILE + gw];
        write(q0 + r, c, acc / run_sum[gw]);
    }
    if (tid == 0) p.arrived[unit] = 0;  // for the next launch
}

// The windows body (any w, any core): the work of one block, query tile `tile`, key split
// `split`, batch item `b`, head `z`.
template <class Core, int HDP>
__device__ void windows_body(const AttentionArgs& p, int tile, int split, int b, int z) {
    using S = Smem<HDP>;
    constexpr int NT = HDP / 16;  // n8 tiles of a warp's O tile
    extern __shared__ __align__(16) float smem[];
    float* qs = smem + S::q;
    float* ks = smem + S::k;
    float* vs = smem + S::v;
    float* dp = smem + S::d;  // D, then P'
    float* run_max = smem + S::stats;
    float* run_sum = run_max + TILE;
    float* rescale = run_sum + TILE;
    float* sr = rescale + TILE;
    int* last = reinterpret_cast<int*>(sr + TILE);
    // w is a power of two (the launcher checks): index arithmetic is shifts and masks.
    const int lw = __ffs(p.w) - 1, lww = 2 * lw, ww = 1 << lww;
    float* sc = ww == 1 ? dp : smem + S::sc;  // the chunk's scores, then probabilities
    const int windows = TILE >> lww;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int hd = p.hd, q0 = tile * TILE;
    const long long head = z * p.head_stride;
    const float* q = p.q + b * p.q_batch_stride + head;
    const float* k = p.k + b * p.kv_batch_stride + head;
    const float* v = p.v + b * p.kv_batch_stride + head;
    const int first_window = q0 >> lww;
    const float inv_ww = 1.0f / ww;  // exact: ww is a power of two
    // Threads per score: with one query window (w = 8) four threads share a score's 64-term
    // sum and combine it with shuffles (256 scores otherwise: every thread takes part once).
    const int parts = windows * TILE < THREADS ? THREADS / (windows * TILE) : 1;
    // Query windows of this tile that exist (all but the last tile: all; the decoder's single
    // query: one). Scores and softmax skip the others; their outputs are not written.
    const int live = min(windows, (p.n_queries - q0) >> lww);
    const int n_scores = live * TILE * parts;  // a multiple of 64: warp-uniform bounds
    // Threads per query window in the softmax: all threads when there are many windows, at
    // most a warp (a power of two, so groups never straddle warps).
    const int spread = min(32, THREADS / windows);
    const int n_chunks = (p.n_keys + TILE - 1) / TILE;
    const int chunk_begin = split * p.chunks_per_split;
    const int chunk_end = min(n_chunks, chunk_begin + p.chunks_per_split);
    const bool vector_q = hd % 4 == 0 && p.q_slot_stride % 4 == 0 && aligned16(q);
    const bool vector_kv =
        hd % 4 == 0 && p.kv_slot_stride % 4 == 0 && aligned16(k) && aligned16(v);
    // Warp tiles: D rows dr + [0, 16), columns dc + [0, 32); O rows dr, columns on + [0, HDP/2).
    const int dr = 16 * (warp % 4), dc = 32 * (warp / 4), on = HDP / 2 * (warp / 4);

    if (hd < HDP) {
        for (int e = tid; e < TILE * HDP; e += THREADS) {
            const int r = e / HDP, c = e % HDP;
            if (c >= hd) qs[r * S::QS + c] = ks[r * S::QS + c] = vs[r * S::VS + c] = 0.0f;
        }
    }
    if (tid < TILE) {
        run_max[tid] = NEG_INF;
        run_sum[tid] = 0.0f;
        rescale[tid] = 1.0f;  // windows past `live` keep it
        if (tid < ww && ww > 1) sr[tid] = p.sr[tid];
    }
    // Copy groups, in order: q with the first k; the first v; then per chunk the next k
    // (after D) and the next v (after P' V).
    load_tile<HDP>(qs, S::QS, q, p.q_slot_stride, q0, p.n_queries, hd, vector_q);
    load_tile<HDP>(ks, S::QS, k, p.kv_slot_stride, chunk_begin * TILE, p.n_keys, hd, vector_kv);
    cp_async_commit();
    load_tile<HDP>(vs, S::VS, v, p.kv_slot_stride, chunk_begin * TILE, p.n_keys, hd, vector_kv);
    cp_async_commit();
    float o[NT][4] = {};

    for (int chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        const int k0 = chunk * TILE;
        const bool more = chunk + 1 < chunk_end;
        // Each score's mask and bias (-inf when masked), loaded before D so that the loads'
        // latency hides behind it. Score `idx / parts` is (window, column) = (idx / parts) /
        // TILE, (idx / parts) % TILE; only part 0 finishes a score.
        float extra[SCORES_PER_THREAD];
#pragma unroll
        for (int j = 0; j < SCORES_PER_THREAD; ++j) {
            const int idx = tid + j * THREADS;
            extra[j] = 0.0f;
            if (idx < n_scores && idx % parts == 0) {
                const int score = idx / parts, col = k0 + score % TILE;
                if (col >= p.n_keys || p.key_pad[(long long)b * p.n_keys + col])
                    extra[j] = NEG_INF;
                else if (p.bias)
                    extra[j] = p.bias[(long long)(first_window + score / TILE) * p.n_keys + col];
            }
        }
        cp_async_wait(1);  // this chunk's k (and, the first time, q) has landed
        __syncthreads();

        {  // D[query slot][key slot] = Q K^T
            float d[4][4] = {};
            Core::template qk<HDP>(qs, ks, dr, dc, d);
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                float* row = dp + (dr + g) * DS + dc + 8 * ni + 2 * t;
                *reinterpret_cast<float2*>(row) = make_float2(d[ni][0], d[ni][1]);
                *reinterpret_cast<float2*>(row + 8 * DS) = make_float2(d[ni][2], d[ni][3]);
            }
        }
        __syncthreads();  // D is complete and k is free
        if (more) {
            load_tile<HDP>(ks, S::QS, k, p.kv_slot_stride, k0 + TILE, p.n_keys, hd, vector_kv);
            cp_async_commit();
        }

        // Scores: (window gw, column c = l*ww + roll) sums D along the roll's wrapped diagonal.
        // With w == 1, sc is dp and each thread rewrites only the element it read.
#pragma unroll
        for (int j = 0; j < SCORES_PER_THREAD; ++j) {
            const int idx = tid + j * THREADS;
            if (idx < n_scores) {
                const int score = idx / parts, part = idx % parts;
                const int gw = score / TILE, c = score % TILE, l = c >> lww, roll = c & (ww - 1);
                float s = 0.0f;
                for (int pos = part; pos < ww; pos += parts)
                    s += dp[((gw << lww) + pos) * DS + (l << lww) + wrap_diff(pos, roll, lw)];
                for (int o2 = parts / 2; o2 > 0; o2 >>= 1)
                    s += __shfl_xor_sync(0xffffffffu, s, o2);
                if (part == 0) {
                    if (ww > 1) s = (s + sr[roll]) * inv_ww;
                    sc[gw * DS + c] = s + extra[j];
                }
            }
        }
        __syncthreads();

        // Online softmax: `spread` neighbouring threads per query window (4 for w = 1, a
        // warp for w >= 4), each over every spread-th column: p = exp(s - max so far).
        {
            const int gw = tid / spread, sub = tid % spread;
            const unsigned group = __ballot_sync(0xffffffffu, gw < live);
            if (gw < live) {
                float* row = sc + gw * DS;
                float chunk_max = NEG_INF;
                for (int c = sub; c < TILE; c += spread) chunk_max = fmaxf(chunk_max, row[c]);
                for (int o2 = spread / 2; o2 > 0; o2 >>= 1)
                    chunk_max = fmaxf(chunk_max, __shfl_xor_sync(group, chunk_max, o2));
                const float old_max = run_max[gw], new_max = fmaxf(old_max, chunk_max);
                // While every column so far is masked, keep the accumulators at 0.
                const float base = new_max == NEG_INF ? 0.0f : new_max;
                float chunk_sum = 0.0f;
                for (int c = sub; c < TILE; c += spread) {
                    const float e = expf(row[c] - base);
                    row[c] = e;
                    chunk_sum += e;
                }
                for (int o2 = spread / 2; o2 > 0; o2 >>= 1)
                    chunk_sum += __shfl_xor_sync(group, chunk_sum, o2);
                __syncwarp(group);  // the group has read run_max[gw] before it is updated
                if (sub == 0) {
                    const float r = expf(old_max - base);
                    rescale[gw] = r;
                    run_sum[gw] = run_sum[gw] * r + chunk_sum;
                    run_max[gw] = new_max;
                }
            }
        }
        __syncthreads();

        // P'[query slot ts][key slot src] = p(window of ts, key window of src, roll src -> ts).
        // With w == 1, P' is p itself, already in place (rows past `live` hold finite D
        // values: their outputs are never written).
        if (ww > 1) {
#pragma unroll 4
            for (int idx = tid; idx < TILE * TILE; idx += THREADS) {
                const int ts = idx / TILE, src = idx % TILE;
                const int gw = ts >> lww, roll = wrap_diff(ts & (ww - 1), src & (ww - 1), lw);
                dp[ts * DS + src] = gw < live ? sc[gw * DS + (src & ~(ww - 1)) + roll] : 0.0f;
            }
        }
        cp_async_wait(more ? 1 : 0);  // this chunk's v has landed
        __syncthreads();

        // O = O * rescale + P' V.
        {
            const float r_lo = rescale[(dr + g) >> lww], r_hi = rescale[(dr + g + 8) >> lww];
#pragma unroll
            for (int ni = 0; ni < NT; ++ni) {
                o[ni][0] *= r_lo;
                o[ni][1] *= r_lo;
                o[ni][2] *= r_hi;
                o[ni][3] *= r_hi;
            }
            Core::template pv<HDP, NT>(dp, vs, dr, on, o);
        }
        __syncthreads();  // v, P' and the scores are free
        if (more) {
            load_tile<HDP>(vs, S::VS, v, p.kv_slot_stride, k0 + TILE, p.n_keys, hd, vector_kv);
            cp_async_commit();
        }
    }

    finish<HDP>(p, tile, split, b, z, lww, live, dr, on, o, run_max, run_sum, dp, last);
}

// With w == 2, turns the rows body's D tile (the mma C fragment of 16 query slots x 32 key
// slots, bias included) into its score tile in place: element (query position pos, key slot
// src of key window l) becomes its window's score at column l*4 + roll, roll = pos ^ src
// (wrap_diff with w == 2), s = (sum_pos' D[pos'][pos' ^ roll] + sr[roll]) / 4. A (query
// window, key window) pair's 4 x 4 entries lie in 8 lanes: pos = (p1 p0) in lane bits 3 and 2
// (g = lane / 4), src = (tl h) with tl in lane bit 0 and h the element. Element h's roll is
// (r1, r0) = (p1 ^ tl, p0 ^ h): ordered by r0 (the pair swapped where p0 = 1), a lane's two
// entries and those of the lane across p0 (lane ^ 4) add up to the partial sums over p0, and
// those of the lane across p1 and tl (lane ^ 9, the same r1) to the scores of both r0.
// Floating-point addition commutes, so every lane of a window holds the same bits: a
// window's four rows hold the same scores, permuted, and the softmax goes on as with w == 1,
// the tile now P' itself. sr_lo, sr_hi: sr[2 r1], sr[2 r1 + 1].
__device__ __forceinline__ void scores_w2(float (&s)[4][4], float sr_lo, float sr_hi, int g) {
    const bool p0 = g & 1;
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {  // rows g, then g + 8
            float u0 = p0 ? s[ni][e + 1] : s[ni][e], u1 = p0 ? s[ni][e] : s[ni][e + 1];
            u0 += __shfl_xor_sync(0xffffffffu, u0, 4);
            u1 += __shfl_xor_sync(0xffffffffu, u1, 4);
            u0 += __shfl_xor_sync(0xffffffffu, u0, 9);
            u1 += __shfl_xor_sync(0xffffffffu, u1, 9);
            u0 = (u0 + sr_lo) * 0.25f;
            u1 = (u1 + sr_hi) * 0.25f;
            s[ni][e] = p0 ? u1 : u0;
            s[ni][e + 1] = p0 ? u0 : u1;
        }
}

// Shared memory of the rows body, in floats: two buffers of a chunk's k and v (the chunk
// being read and the one being loaded), then run_max and run_sum (TILE each) and the merge
// flag. k rows are HDP + 8 wide, so that a lane's two channels of a B fragment are one 8-byte
// load and a half warp's eight rows hit 32 distinct banks; v rows HDP + 4, so that the
// B fragment's rows 2t, 2t + 1 at column g do. After the walk the buffers hold the key halves'
// exchange, then the merge's factor table.
template <int HDP>
struct RowsSmem {
    static constexpr int KS = HDP + 8, VS = HDP + 4;
    static constexpr int k = 0, v = 2 * TILE * KS, stats = v + 2 * TILE * VS;
    static constexpr int floats = stats + 2 * TILE + 4;
    static constexpr int bytes = floats * 4;
    // The exchange: one O tile (rows of KS) and both halves' running max and sum.
    static_assert(TILE * KS + 4 * TILE <= stats && MAX_SPLITS * TILE <= stats, "buffers");
};

// The rows body: w <= 2 with the bf16 core, flash-attention style. Warp (r, h) = (warp % 4,
// warp / 4) owns query rows 16 r + [0, 16) of the tile (whole query windows) and keys 32 h +
// [0, 32) of every chunk (whole key windows); its Q fragments, scores, running max and sum
// and its full-width O accumulators live in registers. Per chunk: D = bias + Q K^T, with w ==
// 2 the scores (scores_w2), the mask, the online softmax with quad shuffles, O = O * rescale
// + P' V (the C fragment of the scores is the A fragment of P', so P' never leaves the
// registers). The only barrier of a chunk is its load's: the next chunk is loaded into the
// other buffer while this one is computed. At the end the two key halves of each row merge
// through shared memory, each warp keeping half of the columns, which is the windows body's
// ownership of O, so both end in `finish`.
template <int HDP>
__device__ void rows_body(const AttentionArgs& p, int tile, int split, int b, int z) {
    using S = RowsSmem<HDP>;
    constexpr int KT = HDP / 16;  // k16 steps of Q K^T
    constexpr int NO = HDP / 8;   // n8 tiles of a warp's full-width O
    extern __shared__ __align__(16) float smem[];
    float* run_max = smem + S::stats;
    float* run_sum = run_max + TILE;
    int* last = reinterpret_cast<int*>(run_sum + TILE);
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int lw = p.w == 2 ? 1 : 0, lww = 2 * lw, ww = 1 << lww;
    const int hd = p.hd, q0 = tile * TILE, live_rows = min(TILE, p.n_queries - q0);
    const int dr = 16 * (warp % 4), half = warp / 4, kc = 32 * half;
    const bool active = dr < live_rows;  // warp-uniform: the rows of a short last tile (or
                                         // the decoder's one query) leave whole warps idle
    // The query position of both of the lane's rows (g and g + 8: ww divides 8), and the
    // score column that element (ni, h) of the lane's D stands for, k0 + 8 ni + (col ^ h):
    // key slot 8 ni + 2t + h of window l = slot / ww is column l * ww + roll, the roll that
    // brings the slot to pos (wrap_diff, pos ^ src with w == 2: h flips its low bit).
    const int pos = g & (ww - 1);
    const int col = ((2 * t) & ~(ww - 1)) | wrap_diff(pos, (2 * t) & (ww - 1), lw);
    const long long head = z * p.head_stride;
    const float* q = p.q + b * p.q_batch_stride + head;
    const float* k = p.k + b * p.kv_batch_stride + head;
    const float* v = p.v + b * p.kv_batch_stride + head;
    const int n_chunks = (p.n_keys + TILE - 1) / TILE;
    const int chunk_begin = split * p.chunks_per_split;
    const int chunk_end = min(n_chunks, chunk_begin + p.chunks_per_split);
    const bool vector_kv =
        hd % 4 == 0 && p.kv_slot_stride % 4 == 0 && aligned16(k) && aligned16(v);
    auto ks = [&](int buf) { return smem + S::k + buf * TILE * S::KS; };
    auto vs = [&](int buf) { return smem + S::v + buf * TILE * S::VS; };

    if (hd < HDP) {
        for (int e = tid; e < TILE * HDP; e += THREADS) {
            const int r = e / HDP, c = e % HDP;
            if (c >= hd)
                for (int buf = 0; buf < 2; ++buf)
                    ks(buf)[r * S::KS + c] = vs(buf)[r * S::VS + c] = 0.0f;
        }
    }
    load_tile<HDP>(ks(0), S::KS, k, p.kv_slot_stride, chunk_begin * TILE, p.n_keys, hd, vector_kv);
    load_tile<HDP>(vs(0), S::VS, v, p.kv_slot_stride, chunk_begin * TILE, p.n_keys, hd, vector_kv);
    cp_async_commit();

    // Q's A fragments, rounded once, straight from global memory while the first chunk lands
    // (zero past the queries and channels, so the padded channels add nothing).
    unsigned qa[KT][4] = {};
    if (active) {
        auto at = [&](int r, int c) {
            r += q0 + dr;
            return r < p.n_queries && c < hd ? q[r * p.q_slot_stride + c] : 0.0f;
        };
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
            const int c = 16 * kk + 2 * t;
            qa[kk][0] = to_bf16x2(at(g, c), at(g, c + 1));
            qa[kk][1] = to_bf16x2(at(g + 8, c), at(g + 8, c + 1));
            qa[kk][2] = to_bf16x2(at(g, c + 8), at(g, c + 9));
            qa[kk][3] = to_bf16x2(at(g + 8, c + 8), at(g + 8, c + 9));
        }
    }

    // With w == 2, sr of the lane's two rolls (scores_w2).
    float sr_lo = 0.0f, sr_hi = 0.0f;
    if (lw == 1) {
        const int r1 = ((g >> 1) ^ t) & 1;
        sr_lo = p.sr[2 * r1];
        sr_hi = p.sr[2 * r1 + 1];
    }

    // Rows g (lo) and g + 8 (hi) of the warp's 16: running max, and this lane's share of the
    // running sum (its 8 columns of each chunk; the quad's shares are added at the end).
    float o[NO][4] = {}, m_lo = NEG_INF, m_hi = NEG_INF, l_lo = 0.0f, l_hi = 0.0f;
    for (int chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        const int buf = (chunk - chunk_begin) & 1, k0 = chunk * TILE + kc;
        const bool keys = active && k0 < p.n_keys;  // warp-uniform
        // The bias and mask of the score each element of the lane's D stands for (rows dr + g
        // and dr + g + 8, key slot k0 + 8 ni + 2t + h, that is score column `column(ni, h)`),
        // loaded before the wait so that their latency hides behind it: the bias as the
        // initial accumulators of D (with w = 2 the ww entries of a score's sum each carry it,
        // and the sum is divided by ww), the mask as bits (2 ni + h). Indices are clamped
        // instead of branched on: a clamped column is masked, a clamped row never written.
        float s[4][4] = {};
        unsigned masked = 0;
        if (keys) {
            const int last_key = p.n_keys - 1, last_window = (p.n_queries >> lww) - 1;
            auto column = [&](int ni, int h) { return k0 + 8 * ni + (col ^ h); };
            if (p.bias) {
                const float* lo =
                    p.bias + (long long)min((q0 + dr + g) >> lww, last_window) * p.n_keys;
                const float* hi =
                    p.bias + (long long)min((q0 + dr + g + 8) >> lww, last_window) * p.n_keys;
#pragma unroll
                for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int col = min(column(ni, h), last_key);
                        s[ni][h] = lo[col];
                        s[ni][2 + h] = hi[col];
                    }
            }
            const unsigned char* pad = p.key_pad + (long long)b * p.n_keys;
#pragma unroll
            for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int col = column(ni, h);
                    if (col > last_key || pad[min(col, last_key)]) masked |= 1u << (2 * ni + h);
                }
        }
        cp_async_wait(0);  // this chunk's k and v have landed
        __syncthreads();   // for every thread; and every warp is done with the other buffer
        if (chunk + 1 < chunk_end) {
            const int next = (chunk + 1) * TILE;
            load_tile<HDP>(ks(buf ^ 1), S::KS, k, p.kv_slot_stride, next, p.n_keys, hd, vector_kv);
            load_tile<HDP>(vs(buf ^ 1), S::VS, v, p.kv_slot_stride, next, p.n_keys, hd, vector_kv);
            cp_async_commit();
        }
        if (!keys) continue;  // no query rows, or the half is past the keys: nothing to add

        {  // D = bias + Q K^T for the warp's 16 rows x 32 keys
            const float* kr = ks(buf) + (kc + g) * S::KS + 2 * t;  // key kc + 8 ni + g
#pragma unroll
            for (int kk = 0; kk < KT; ++kk)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) {
                    const float* at = kr + 8 * ni * S::KS + 16 * kk;
                    const float2 lo = *reinterpret_cast<const float2*>(at);
                    const float2 hi = *reinterpret_cast<const float2*>(at + 8);
                    const unsigned kb[2] = {to_bf16x2(lo.x, lo.y), to_bf16x2(hi.x, hi.y)};
                    mma_bf16(s[ni], qa[kk], kb);
                }
        }
        if (lw == 1) scores_w2(s, sr_lo, sr_hi, g);
        float c_lo = m_lo, c_hi = m_hi;  // new running maxima
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
            for (int h = 0; h < 2; ++h)
                if (masked >> (2 * ni + h) & 1) s[ni][h] = s[ni][2 + h] = NEG_INF;
            c_lo = fmaxf(c_lo, fmaxf(s[ni][0], s[ni][1]));
            c_hi = fmaxf(c_hi, fmaxf(s[ni][2], s[ni][3]));
        }
#pragma unroll
        for (int o2 = 1; o2 < 4; o2 <<= 1) {
            c_lo = fmaxf(c_lo, __shfl_xor_sync(0xffffffffu, c_lo, o2));
            c_hi = fmaxf(c_hi, __shfl_xor_sync(0xffffffffu, c_hi, o2));
        }
        // While every column so far is masked, keep the accumulators at 0.
        const float base_lo = c_lo == NEG_INF ? 0.0f : c_lo;
        const float base_hi = c_hi == NEG_INF ? 0.0f : c_hi;
        const float r_lo = expf(m_lo - base_lo), r_hi = expf(m_hi - base_hi);
        m_lo = c_lo;
        m_hi = c_hi;
        l_lo *= r_lo;
        l_hi *= r_hi;
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            s[ni][0] = expf(s[ni][0] - base_lo);
            s[ni][1] = expf(s[ni][1] - base_lo);
            s[ni][2] = expf(s[ni][2] - base_hi);
            s[ni][3] = expf(s[ni][3] - base_hi);
            l_lo += s[ni][0] + s[ni][1];
            l_hi += s[ni][2] + s[ni][3];
        }
#pragma unroll
        for (int ni = 0; ni < NO; ++ni) {
            o[ni][0] *= r_lo;
            o[ni][1] *= r_lo;
            o[ni][2] *= r_hi;
            o[ni][3] *= r_hi;
        }
        // O += P V: k step kk of P is S's n8 tiles 2 kk and 2 kk + 1, already in A layout.
        const float* vr = vs(buf) + kc * S::VS + g;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            const unsigned pa[4] = {to_bf16x2(s[2 * kk][0], s[2 * kk][1]),
                                    to_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                                    to_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    to_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int ni = 0; ni < NO; ++ni) {
                unsigned vb[2];
                Bf16Op::b(vb, vr + 8 * ni, S::VS, 16 * kk, t);
                mma_bf16(o[ni], pa, vb);
            }
        }
    }
#pragma unroll
    for (int o2 = 1; o2 < 4; o2 <<= 1) {
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, o2);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, o2);
    }

    // The key halves merge: each warp hands the other half's columns and its statistics over
    // and keeps its own half, o = o_0 f_0 + o_1 f_1 with f_h = exp(m_h - max(m_0, m_1)).
    float* xo = smem;                 // (TILE, KS): the O columns each warp hands over
    float* xm = smem + TILE * S::KS;  // (2, TILE) running max per half, then (2, TILE) sums
    float* xl = xm + 2 * TILE;
    __syncthreads();  // every warp is done with the buffers
    // (Loops over all of O with a predicate, never O indexed by `half`: that would put O in
    // local memory.)
    auto kept = [&](int ni) { return (ni < NO / 2) == (half == 0); };
    if (active) {
#pragma unroll
        for (int ni = 0; ni < NO; ++ni) {
            if (kept(ni)) continue;
            float* at = xo + (dr + g) * S::KS + 8 * ni + 2 * t;
            *reinterpret_cast<float2*>(at) = make_float2(o[ni][0], o[ni][1]);
            *reinterpret_cast<float2*>(at + 8 * S::KS) = make_float2(o[ni][2], o[ni][3]);
        }
        if (t == 0) {
            xm[half * TILE + dr + g] = m_lo;
            xm[half * TILE + dr + g + 8] = m_hi;
            xl[half * TILE + dr + g] = l_lo;
            xl[half * TILE + dr + g + 8] = l_hi;
        }
    }
    __syncthreads();
    float mine[NO / 2][4] = {};  // the merged columns half * HDP/2 + [0, HDP/2)
    if (active) {
        const int other = (1 - half) * TILE;
        const float o_lo = xm[other + dr + g], o_hi = xm[other + dr + g + 8];
        const float top_lo = fmaxf(m_lo, o_lo), top_hi = fmaxf(m_hi, o_hi);
        const float base_lo = top_lo == NEG_INF ? 0.0f : top_lo;
        const float base_hi = top_hi == NEG_INF ? 0.0f : top_hi;
        const float f_lo = expf(m_lo - base_lo), f_hi = expf(m_hi - base_hi);
        const float g_lo = expf(o_lo - base_lo), g_hi = expf(o_hi - base_hi);
#pragma unroll
        for (int ni = 0; ni < NO; ++ni) {
            if (!kept(ni)) continue;
            const float* at = xo + (dr + g) * S::KS + 8 * ni + 2 * t;
            const float2 x_lo = *reinterpret_cast<const float2*>(at);
            const float2 x_hi = *reinterpret_cast<const float2*>(at + 8 * S::KS);
            float* m = mine[ni % (NO / 2)];
            m[0] = o[ni][0] * f_lo + x_lo.x * g_lo;
            m[1] = o[ni][1] * f_lo + x_lo.y * g_lo;
            m[2] = o[ni][2] * f_hi + x_hi.x * g_hi;
            m[3] = o[ni][3] * f_hi + x_hi.y * g_hi;
        }
        // A window's rows hold the same scores (permuted), so the same maxima and, but for
        // the order of the sums, the same sums: its first row's stand for the window.
        if (half == 0 && t == 0 && pos == 0) {
            run_max[(dr + g) >> lww] = top_lo;
            run_max[(dr + g + 8) >> lww] = top_hi;
            run_sum[(dr + g) >> lww] = l_lo * f_lo + xl[other + dr + g] * g_lo;
            run_sum[(dr + g + 8) >> lww] = l_hi * f_hi + xl[other + dr + g + 8] * g_hi;
        }
    }
    __syncthreads();  // the statistics are complete; the buffers are free for the factors
    finish<HDP>(p, tile, split, b, z, lww, live_rows >> lww, dr, HDP / 2 * half, mine, run_max,
                run_sum, smem, last);
}

// A block of either body: the rows body for w <= 2 with the bf16 core (the one core whose C
// fragment is its A fragment), the windows body otherwise. Both kernels of a variant call
// this, so a head computes the same bits alone or fused.
template <class Core, int HDP>
__device__ void run(const AttentionArgs& p, int tile, int split, int b, int z) {
    if constexpr (std::is_same_v<Core, Bf16Mma>)
        if (p.w <= 2) return rows_body<HDP>(p, tile, split, b, z);
    windows_body<Core, HDP>(p, tile, split, b, z);
}

}  // namespace attention

// Argument sets of one fused launch (mirrored in src/kernels/window_attention.rs).
constexpr int MAX_FUSED = 16;
struct AttentionHeads {
    AttentionArgs set[MAX_FUSED];
    int block_start[MAX_FUSED + 1];  // prefix sum of query tiles x heads x splits per set
    int count;
};
static_assert(sizeof(AttentionArgs) == 168, "mirrored in src/kernels/window_attention.rs");
static_assert(sizeof(AttentionHeads) == 2760, "mirrored in src/kernels/window_attention.rs");

// window_attention_hd<HDP>_<precision> (one head or several heads of one shape; grid
// (tiles x splits, batch, heads)) and window_attention_heads_hd<HDP>_<precision> (up to
// MAX_FUSED sets; blockIdx.x flattened over the sets, each set's blocks ordered (head, tile,
// split)). Both run the same body (attention::run).
#define WINDOW_ATTENTION(HDP, PRECISION, CORE, MIN_BLOCKS)                                   \
    ATTNRT_KERNEL void __launch_bounds__(attention::THREADS, MIN_BLOCKS)                     \
        window_attention_hd##HDP##_##PRECISION(AttentionArgs p) {                            \
        attention::run<attention::CORE, HDP>(p, blockIdx.x / p.splits, blockIdx.x % p.splits, \
                                             blockIdx.y, blockIdx.z);                        \
    }                                                                                        \
    ATTNRT_KERNEL void __launch_bounds__(attention::THREADS, MIN_BLOCKS)                     \
        window_attention_heads_hd##HDP##_##PRECISION(const __grid_constant__ AttentionHeads a) { \
        int i = 0;                                                                           \
        while (i + 1 < a.count && (int)blockIdx.x >= a.block_start[i + 1]) ++i;              \
        const AttentionArgs& p = a.set[i];                                                   \
        const int tiles = (p.n_queries + attention::TILE - 1) / attention::TILE;             \
        const int local = blockIdx.x - a.block_start[i], rest = local / p.splits;            \
        attention::run<attention::CORE, HDP>(p, rest % tiles, local % p.splits, blockIdx.y, \
                                             rest / tiles);                                  \
    }

#define WINDOW_ATTENTION_PRECISIONS(HDP, MIN_BLOCKS)       \
    WINDOW_ATTENTION(HDP, f32, SimtF32, MIN_BLOCKS)        \
    WINDOW_ATTENTION(HDP, tf32, Tf32Mma, MIN_BLOCKS)       \
    WINDOW_ATTENTION(HDP, bf16, Bf16Mma, MIN_BLOCKS)
// Blocks an SM holds at once (mirrored by blocks_per_sm in src/kernels/window_attention.rs,
// which sizes the key splits to fill the GPU once): three for hd <= 32 (52 KB of shared
// memory a block; registers held to 80, which spills at most 28 bytes in f32 and tf32 and
// up to 116 in bf16, whose kernels hold both bodies: the rows body would take about 104),
// where two left a layer's 220 blocks walking up to 6 key chunks each, latency-bound at 20%
// of the warps an SM holds (ncu, H100); two for hd 64 (76 KB), one for hd 128 (125 KB; 135
// KB in bf16, the rows body's two chunks).
WINDOW_ATTENTION_PRECISIONS(16, 3)
WINDOW_ATTENTION_PRECISIONS(32, 3)
WINDOW_ATTENTION_PRECISIONS(64, 2)
WINDOW_ATTENTION_PRECISIONS(128, 1)

namespace {

// The backward's view of one head's operands: window w = 1 << lw, t slots, hd channels;
// image b's head data at ((b * heads + head) * t) * hd.
struct HeadGeometry {
    int lw, t, hd, heads, head;
    __device__ long long base(int b) const { return ((long long)b * heads + head) * t * hd; }
    __device__ long long score_row(int b, int i) const {
        return (((long long)b * heads + head) * t + i) * t;
    }
};

__device__ float dot(const float* a, const float* b, int n) {
    float s = 0.0f;
    for (int c = 0; c < n; ++c) s = fmaf(a[c], b[c], s);
    return s;
}

}  // namespace

// One warp per (image, query window): rows = n * t / ww. sr: (ww) or null (w == 1).
ATTNRT_KERNEL void window_attention_backward_scores_f32(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ dout, const float* __restrict__ sr, float* __restrict__ p,
    float* __restrict__ ds, int n, int lw, int t, int hd, int heads, int head) {
    const HeadGeometry g{lw, t, hd, heads, head};
    const int ww = 1 << (2 * lw), windows = t >> (2 * lw);
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= n * windows) return;
    const int b = row / windows, i = row % windows;
    const long long o = g.base(b);
    float* pr = p + g.score_row(b, i);
    float* dr = ds + g.score_row(b, i);
    const float inv_ww = 1.0f / ww;  // exact: ww is a power of two
    float max = NEG_INF;
    for (int col = lane; col < t; col += 32) {
        const int l = col >> (2 * lw), roll = col & (ww - 1);
        float s = 0.0f, dp = 0.0f;
        for (int pos = 0; pos < ww; ++pos) {
            const long long qs = o + (long long)((i << (2 * lw)) + pos) * hd;
            const long long ks = o + (long long)((l << (2 * lw)) + wrap_diff(pos, roll, lw)) * hd;
            s += dot(q + qs, k + ks, hd);
            dp += dot(dout + qs, v + ks, hd);
        }
        if (ww > 1) s = (s + sr[roll]) * inv_ww;  // as the forward kernel rounds it
        pr[col] = s;
        dr[col] = dp;
        max = fmaxf(max, s);
    }
    max = warp_max(max);
    float sum = 0.0f;
    for (int col = lane; col < t; col += 32) sum += expf(pr[col] - max);
    sum = warp_sum(sum);
    float inner = 0.0f;
    for (int col = lane; col < t; col += 32) {
        pr[col] = expf(pr[col] - max) / sum;
        inner += pr[col] * dr[col];
    }
    inner = warp_sum(inner);
    for (int col = lane; col < t; col += 32) dr[col] = pr[col] * (dr[col] - inner) * inv_ww;
}

// One thread per (image, slot, channel) of the head: dq, dk, dv (windowed, this head's part).
ATTNRT_KERNEL void window_attention_backward_grads_f32(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ dout,
    const float* __restrict__ p, const float* __restrict__ ds, float* __restrict__ dq,
    float* __restrict__ dk, float* __restrict__ dv, int n, int lw, int t, int hd, int heads,
    int head) {
    const HeadGeometry g{lw, t, hd, heads, head};
    const int ww = 1 << (2 * lw), windows = t >> (2 * lw);
    GRID_STRIDE(e, (long long)n * t * hd) {
        const int c = e % hd, j = (e / hd) % t, b = e / ((long long)hd * t);
        const int win = j >> (2 * lw), x = j & (ww - 1);
        const long long o = g.base(b);
        // dq: this slot as a query, against every column of its window's row.
        const float* dsr = ds + g.score_row(b, win);
        float aq = 0.0f;
        for (int col = 0; col < t; ++col) {
            const int l = col >> (2 * lw), roll = col & (ww - 1);
            aq = fmaf(dsr[col], k[o + (long long)((l << (2 * lw)) + wrap_diff(x, roll, lw)) * hd + c], aq);
        }
        // dk, dv: this slot as position x of key window `win`, under every roll of every row.
        float ak = 0.0f, av = 0.0f;
        for (int i = 0; i < windows; ++i) {
            const long long r = g.score_row(b, i) + (win << (2 * lw));
            for (int roll = 0; roll < ww; ++roll) {
                const long long qs = o + (long long)((i << (2 * lw)) + wrap_add(x, roll, lw)) * hd + c;
                ak = fmaf(ds[r + roll], q[qs], ak);
                av = fmaf(p[r + roll], dout[qs], av);
            }
        }
        const long long at = o + (long long)j * hd + c;
        dq[at] = aq;
        dk[at] = ak;
        dv[at] = av;
    }
}
