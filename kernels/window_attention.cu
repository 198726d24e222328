// Cyclic-shift window attention for one head (spec, encoder step 5), fused with the window
// reverse and head concatenation (steps 6-7) in its output write.
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
// Blocks. One block per (tile of 64 query slots, batch item b, head z): 64 / (w*w) whole query
// windows (w*w <= 64). It walks the keys in chunks of 64 slots (whole key windows), flash
// style: D tile (64x64, 4x4 register blocks) -> the chunk's scores (64 columns per query
// window, each a sum of w*w D entries along a wrapped diagonal) -> online softmax per query
// window (running max and sum, accumulator rescaled) -> P' tile -> O += P' V. Every head of
// the released model (704 tokens) is 11 query tiles per batch item: a per-head launch fills
// only 11 SMs, which is what running heads on their own streams recovers.
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
//
// Fused heads: window_attention_heads_hd*_f32 runs up to MAX_FUSED argument sets (heads of
// different windows, sharing hd and batch) in one launch, so one layer's attention fills the
// GPU with 8 x 11 blocks instead of 11. The arguments arrive as one __grid_constant__ struct
// (2.2 KB of kernel parameters, read in place: no upload, capturable in a graph). blockIdx.x
// is flattened over the sets: set i owns blocks [tile_start[i], tile_start[i+1]), that is
// its query tiles times its heads. Both entry points call the same window_attention body
// with the block's (tile, b, z), so a head computes bit for bit the same either way.
//
// Variants: window_attention_hd{8,16,32,64}_f32, one per head width, so that every loop
// over channels and accumulator rows has a compile-time trip count (a run-time hd cost 3x
// the instructions: predicated unrolled loops and index arithmetic). The launcher picks the
// variant; shared memory is dynamic (above 48 KB the launcher opts in).
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

struct WindowAttentionArgs {
    const float* q;
    const float* k;
    const float* v;
    const float* bias;
    const unsigned char* key_pad;
    const float* sr;
    const unsigned* slot_token;
    float* out;
    float* head_out;
    long long q_batch_stride, q_slot_stride, kv_batch_stride, kv_slot_stride, head_stride;
    int w, n_queries, n_keys, batch, out_row, out_channel;
};

namespace {

constexpr int TILE = 64;      // query slots per block and key slots per chunk
constexpr int THREADS = 256;
constexpr int PAD = TILE + 1;  // row stride of the 64x64 tiles: column walks hit distinct banks

// Loads `TILE` slots from `first` (zeros past `count`) into a (TILE, stride) tile.
template <int HD>
__device__ void load_slots(float* tile, int stride, const float* base, long long slot_stride,
                           int first, int count) {
#pragma unroll
    for (int e = threadIdx.x; e < TILE * HD; e += THREADS) {
        const int t = e / HD, ch = e % HD;
        tile[t * stride + ch] = first + t < count ? base[(first + t) * slot_stride + ch] : 0.0f;
    }
}

// out = A B^T for 64x64 tiles of A (64, HD) and B (64, HD) with row strides sa, sb; each
// thread owns rows ty + 16i and columns tx + 16j.
template <int HD>
__device__ void tile_abt(const float* a, int sa, const float* b, int sb, float* out) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4] = {};
#pragma unroll 8
    for (int kk = 0; kk < HD; ++kk) {
        float x[4], y[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) x[i] = a[(ty + 16 * i) * sa + kk];
#pragma unroll
        for (int j = 0; j < 4; ++j) y[j] = b[(tx + 16 * j) * sb + kk];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(x[i], y[j], acc[i][j]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) out[(ty + 16 * i) * PAD + tx + 16 * j] = acc[i][j];
}

}  // namespace

// The attention of query tile `tile`, batch item `b`, head `z` (one block's work).
template <int HD>
__device__ void window_attention(const WindowAttentionArgs& p, int tile, int b, int z) {
    extern __shared__ float smem[];
    // w is a power of two (the launcher checks): index arithmetic is shifts and masks.
    const int lw = __ffs(p.w) - 1, lww = 2 * lw, ww = 1 << lww;
    constexpr int hd = HD, groups = THREADS / HD, rows = TILE / groups;
    const int windows = TILE >> lww;
    float* qs = smem;                  // (TILE, hd) query slots
    float* ks = qs + TILE * hd;        // (TILE, hd + 1) key chunk
    float* vs = ks + TILE * (hd + 1);  // (TILE, hd) value chunk
    float* dp = vs + TILE * hd;        // (TILE, PAD): D, then P'
    float* sc = dp + TILE * PAD;       // (windows, TILE): the chunk's scores, then p
    float* run_max = sc + TILE * TILE;
    float* run_sum = run_max + TILE;
    float* rescale = run_sum + TILE;
    const int tid = threadIdx.x;
    const int q0 = tile * TILE;
    const long long head = z * p.head_stride;
    const float* q = p.q + b * p.q_batch_stride + head;
    const float* k = p.k + b * p.kv_batch_stride + head;
    const float* v = p.v + b * p.kv_batch_stride + head;
    const int first_window = q0 >> lww;
    const float inv_ww = 1.0f / ww;  // exact: ww is a power of two
    // Threads per score: with few query windows (w = 8) several threads share one score's
    // w*w-term sum, then combine it with shuffles (all threads take part exactly once).
    const int scores = windows * TILE, parts = scores < THREADS ? THREADS / scores : 1;
    // Query windows of this tile that exist (all but the last tile: all of them; the decoder's
    // single query: one). Scores and softmax skip the others; their outputs are not written.
    const int live = min(windows, (p.n_queries - q0) >> lww);
    // Threads per query window in the softmax: all threads when there are many windows,
    // at most a warp (a power of two, so groups never straddle warps).
    const int spread = min(32, THREADS / windows);

    load_slots<HD>(qs, hd, q, p.q_slot_stride, q0, p.n_queries);
    if (tid < TILE) {
        run_max[tid] = NEG_INF;
        run_sum[tid] = 0.0f;
        rescale[tid] = 1.0f;  // windows past `live` keep it
    }
    // Output accumulators: channel ch of tokens tg + groups * j, j < rows.
    const int ch = tid % HD, tg = tid / HD;
    float acc[rows] = {};

    for (int k0 = 0; k0 < p.n_keys; k0 += TILE) {
        load_slots<HD>(ks, hd + 1, k, p.kv_slot_stride, k0, p.n_keys);
        load_slots<HD>(vs, hd, v, p.kv_slot_stride, k0, p.n_keys);
        __syncthreads();
        tile_abt<HD>(qs, hd, ks, hd + 1, dp);  // D[query slot][key slot]
        __syncthreads();

        // Scores: (window g, column c = l*ww + roll) sums D along the roll's wrapped diagonal.
#pragma unroll 4
        for (int idx = tid; idx < live * TILE * parts; idx += THREADS) {
            const int score = idx / parts, part = idx % parts;
            const int g = score / TILE, c = score % TILE, l = c >> lww, roll = c & (ww - 1);
            float s = 0.0f;
            for (int pos = part; pos < ww; pos += parts)
                s += dp[((g << lww) + pos) * PAD + (l << lww) + wrap_diff(pos, roll, lw)];
            for (int o = parts / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (part != 0) continue;
            const int col = k0 + c, window = first_window + g;
            if (ww > 1) s = (s + p.sr[roll]) * inv_ww;
            if (col >= p.n_keys || p.key_pad[(long long)b * p.n_keys + col]) {
                s = NEG_INF;  // the bias would not change that; and col may be out of range
            } else if (p.bias) {
                s += p.bias[(long long)window * p.n_keys + col];
            }
            sc[score] = s;
        }
        __syncthreads();

        // Online softmax: `spread` neighbouring threads per query window (4 for w = 1, a
        // warp for w >= 4), each over every spread-th column: p = exp(s - max so far).
        {
            const int g = tid / spread, sub = tid % spread;
            const unsigned group = __ballot_sync(0xffffffffu, g < live);
            if (g < live) {
                float* row = sc + g * TILE;
                float chunk_max = NEG_INF;
                for (int c = sub; c < TILE; c += spread) chunk_max = fmaxf(chunk_max, row[c]);
                for (int o = spread / 2; o > 0; o >>= 1)
                    chunk_max = fmaxf(chunk_max, __shfl_xor_sync(group, chunk_max, o));
                const float old_max = run_max[g], new_max = fmaxf(old_max, chunk_max);
                // While every column so far is masked, keep the accumulators at 0.
                const float base = new_max == NEG_INF ? 0.0f : new_max;
                float chunk_sum = 0.0f;
                for (int c = sub; c < TILE; c += spread) {
                    const float e = expf(row[c] - base);
                    row[c] = e;
                    chunk_sum += e;
                }
                for (int o = spread / 2; o > 0; o >>= 1)
                    chunk_sum += __shfl_xor_sync(group, chunk_sum, o);
                __syncwarp(group);  // the group has read run_max[g] before it is updated
                if (sub == 0) {
                    const float r = expf(old_max - base);
                    rescale[g] = r;
                    run_sum[g] = run_sum[g] * r + chunk_sum;
                    run_max[g] = new_max;
                }
            }
        }
        __syncthreads();

        // P'[query slot t][key slot src] = p(window of t, key window of src, roll src -> t).
        for (int idx = tid; idx < TILE * TILE; idx += THREADS) {
            const int t = idx / TILE, src = idx % TILE;
            const int g = t >> lww, roll = wrap_diff(t & (ww - 1), src & (ww - 1), lw);
            dp[t * PAD + src] = g < live ? sc[g * TILE + (src & ~(ww - 1)) + roll] : 0.0f;
        }
        __syncthreads();

        // O = O * rescale + P' V.
#pragma unroll
        for (int j = 0; j < rows; ++j) acc[j] *= rescale[(tg + groups * j) >> lww];
#pragma unroll 4
        for (int src = 0; src < TILE; ++src) {
            const float x = vs[src * hd + ch];
#pragma unroll
            for (int j = 0; j < rows; ++j) acc[j] = fmaf(dp[(tg + groups * j) * PAD + src], x, acc[j]);
        }
        __syncthreads();  // before the next chunk overwrites ks, vs, dp, sc
    }

#pragma unroll
    for (int j = 0; j < rows; ++j) {
        const int t = tg + groups * j, slot = q0 + t;
        if (slot >= p.n_queries) continue;
        const float o = acc[j] / run_sum[t >> lww];
        const long long token = p.slot_token ? p.slot_token[slot] : slot;
        p.out[(token * p.batch + b) * p.out_row + p.out_channel + z * hd + ch] = o;
        if (p.head_out) p.head_out[((long long)b * p.n_queries + slot) * hd + ch] = o;
    }
}

// Argument sets of one fused launch (mirrored in src/kernels/window_attention.rs).
constexpr int MAX_FUSED = 16;
struct WindowAttentionHeads {
    WindowAttentionArgs set[MAX_FUSED];
    int tile_start[MAX_FUSED + 1];  // prefix sum of query tiles x heads per set
    int count;
};
// The Rust mirrors assert the same sizes: a field added on one side only fails both builds.
static_assert(sizeof(WindowAttentionArgs) == 136, "mirrored in src/kernels/window_attention.rs");
static_assert(sizeof(WindowAttentionHeads) == 2248, "mirrored in src/kernels/window_attention.rs");

#define WINDOW_ATTENTION(HD)                                                               \
    ATTNRT_KERNEL void __launch_bounds__(THREADS, 1) window_attention_hd##HD##_f32(       \
        WindowAttentionArgs p) {                                                           \
        window_attention<HD>(p, blockIdx.x, blockIdx.y, blockIdx.z);                       \
    }                                                                                      \
    ATTNRT_KERNEL void __launch_bounds__(THREADS, 1) window_attention_heads_hd##HD##_f32( \
        const __grid_constant__ WindowAttentionHeads a) {                                  \
        int i = 0;                                                                         \
        while (i + 1 < a.count && (int)blockIdx.x >= a.tile_start[i + 1]) ++i;             \
        const WindowAttentionArgs& p = a.set[i];                                           \
        const int tiles = (p.n_queries + TILE - 1) / TILE;                                 \
        const int local = blockIdx.x - a.tile_start[i];                                    \
        window_attention<HD>(p, local % tiles, blockIdx.y, local / tiles);                 \
    }
WINDOW_ATTENTION(8)
WINDOW_ATTENTION(16)
WINDOW_ATTENTION(32)
WINDOW_ATTENTION(64)

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
