// The transformer's decoder (spec, "Decoder"): every layer and the final post_norm in one
// launch, on the encoder memory's k|v that one GEMM computed beforehand for all layers.
//
// Math, per layer, for each of the `batch` rows (one query per batch item), t0 = 0:
//   v  = t W_v^T + b_v;            t1 = LN1(t + v W_so^T + b_so)      (self attention: one
//                                                                      query, one key, so the
//                                                                      softmax is 1)
//   q  = ((t1 + qpos) W_q^T + b_q) * hd^-0.5;  a = MHA(q, mem k, mem v, key padding)
//   t2 = LN2(t1 + a W_co^T + b_co)
//   h  = relu(t2 W_1^T + b_1);     t' = LN3(t2 + h W_2^T + b_2)
// and finally hs = post_norm(t_last). Operands of every product (the linears, q.k and p.v) are
// rounded as the precision's tensor cores round them (f32 as is, tf32, bf16), products and sums
// in f32; the softmax and LayerNorm are f32 (the few-rows linears of linear.cu round alike).
//
// Why one launch: every product has `batch` rows, so each is a weight stream of c x c or
// c x ff floats that takes a microsecond or two; as separate kernels (about ten a layer) the
// launches and the drain between them cost more than the work.
//
// Phases. The work is a chain of phases, each a grid of independent blocks that needs all of
// the previous phase's results: per layer V (t W_v^T), SO (v W_so^T), Q (tq W_q^T), A (the
// attention, split over keys), CO (a W_co^T), F1 (t2 W_1^T), F2 (h W_2^T); then one block for
// the last LN3 and post_norm. A phase's blocks write raw partial products; the next phase's
// blocks build their input from them in their prologue (sum of the k-split parts in split
// order, bias, residual, LayerNorm, relu, or the merge of the attention splits), so the
// epilogue of every product is its consumer's prologue, computed redundantly by each consumer
// block (a row of c or ff values) instead of by a separate launch. Residuals that a later
// phase needs (t, t1, t2) are written by the phase's first block.
//
// Ordering without a grid barrier or a cooperative launch: each block takes a ticket from
// control[0] (atomicAdd) when it starts and works on the ticket's place in the chain, not
// on blockIdx; it asks L2 for its weights (they depend on nothing), then waits until
// control[1] (blocks done) covers every block of the earlier phases. A block only ever waits for blocks with smaller tickets, which have
// started and so are resident or finished: the chain makes progress whatever the scheduler's
// block order or residency (the decoupled look-back argument of single-pass scans). Results
// are published with __threadfence() before the count and read with __ldcg (L2) after it:
// L1 is not coherent between blocks. The last block (the post_norm) waits for all others, so
// it resets both counters for the next launch (a graph replays with them at zero).
// Nothing depends on which block finishes first: every sum has a fixed order, so results are
// bit for bit the same on every run.
//
// Linear phases (GEMV): output column n of N, k chunk s of K: one warp per column, lanes
// along k (float4 loads where aligned), its rows' inputs from shared memory, written to
// parts (splits, batch, N). `columns` (8 per warp round) columns a block, `splits` chunks of
// k: blocks = ceil(N / columns) x splits; rows in groups of at most ROWS (the group's input
// chunk fits shared memory).
// Attention phase: one block per (row, head, key split) walks its keys once: scores (q.k,
// key padding -inf), their max m, p = exp(s - m), l = sum p, o = sum p v; writes o, m, l.
// CO's prologue merges the splits: M = max m_s, o = sum o_s e^(m_s - M) / sum l_s e^(m_s - M).
//
// Layouts (row-major, f32): weights: one packed buffer; layer j's field f at
// j * layer_stride + field[f] (PyTorch layouts: W (out, in), b (out), gamma, beta (c));
// post_norm's gamma at post_norm, beta after it. mem_kv (l_all, batch, kv_row), layer j's k at
// channel j * 2c and v at j * 2c + c, head z at z * hd within each. key_pad (batch, l_all),
// nonzero = padded. qpos (batch, c). layers_out (layers, batch, c): each layer's t' (the
// residual t of the next layer). hs (batch, c). residual (2, batch, c): t1, t2. work: two
// halves of work_half floats, phase i writes half i % 2 and reads the other.
#include "common.cuh"
#include "layer_norm.cuh"
#include "tensor_core.cuh"

namespace decoder {

// Fields of a packed layer (mirrored in src/kernels/decoder.rs).
enum Field {
    W_V, B_V, W_SO, B_SO, W_Q, B_Q, W_CO, B_CO, W_1, B_1, W_2, B_2,
    G_1, BETA_1, G_2, BETA_2, G_3, BETA_3, FIELDS
};

}  // namespace decoder

struct DecoderArgs {
    const float* weights;
    const float* mem_kv;
    const unsigned char* key_pad;
    const float* qpos;
    float* layers_out;
    float* hs;
    float* residual;
    float* work;
    unsigned* control;  // ticket, blocks done; zero between launches
    long long layer_stride, post_norm, work_half;
    long long field[decoder::FIELDS];
    int batch, c, ff, heads, layers, l_all;
    // k chunks of the linears (K = c: V, SO, Q, CO; F1; K = ff: F2) and keys per attention
    // split; the splits follow as ceil(K / chunk). Output columns per block of each linear (a
    // multiple of the 8 warps).
    int proj_chunk, ffn1_chunk, ffn2_chunk, keys_per_split;
    int proj_columns, ffn1_columns, ffn2_columns;
    float scale, eps;
};
// The Rust mirror asserts the same size: a field added on one side only fails both builds.
static_assert(sizeof(DecoderArgs) == 304, "mirrored in src/kernels/decoder.rs");

namespace decoder {

constexpr int THREADS = 256, WARPS = THREADS / 32;
constexpr int ROWS = 8;               // rows of one GEMV pass (accumulators per lane)
constexpr int SMEM_FLOATS = 8192;     // the input chunks of a row group; the attention's keys
constexpr int PHASES = 7;             // per layer: V, SO, Q, A, CO, F1, F2
enum Phase { V, SO, Q, A, CO, F1, F2, POST };

__host__ __device__ __forceinline__ long long ceil_div(long long a, long long b) {
    return (a + b - 1) / b;
}

// The chain's shape: blocks per phase of a layer.
struct Chain {
    long long blocks[PHASES];
    long long per_layer;

    __device__ explicit Chain(const DecoderArgs& p) {
        const long long proj = ceil_div(p.c, p.proj_columns) * ceil_div(p.c, p.proj_chunk);
        blocks[V] = blocks[SO] = blocks[Q] = blocks[CO] = proj;
        blocks[A] = (long long)p.batch * p.heads * ceil_div(p.l_all, p.keys_per_split);
        blocks[F1] = ceil_div(p.ff, p.ffn1_columns) * ceil_div(p.c, p.ffn1_chunk);
        blocks[F2] = ceil_div(p.c, p.ffn2_columns) * ceil_div(p.ff, p.ffn2_chunk);
        per_layer = 0;
        for (int i = 0; i < PHASES; ++i) per_layer += blocks[i];
    }
};

// Reads a value another block of this launch wrote (L2, not a stale L1 line).
__device__ __forceinline__ float fresh(const float* p) { return __ldcg(p); }

// v = LN(v) * gamma + beta for the row a warp holds (column lane + 32 i).
__device__ __forceinline__ void norm_row(float (&v)[layer_norm::PER_LANE], const float* gamma,
                                         const float* beta, int c, float eps) {
    const int lane = threadIdx.x & 31;
    const layer_norm::RowStats st = layer_norm::row_stats(v, c, eps);
#pragma unroll
    for (int i = 0; i < layer_norm::PER_LANE; ++i) {
        const int j = lane + 32 * i;
        if (j < c) {
            const float h = (v[i] - st.mean) * st.inv;
            v[i] = h * gamma[j] + beta[j];
        }
    }
}

// One row of LN(sum_s parts[s] + bias + residual) * gamma + beta into v, summed in that
// order (as add_layer_norm_f32); residual may be null (zero). The whole warp calls it.
__device__ __forceinline__ void add_norm_row(float (&v)[layer_norm::PER_LANE], const float* parts,
                                             int n_parts, long long part_stride,
                                             const float* bias, const float* residual,
                                             const float* gamma, const float* beta, int c,
                                             float eps) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < layer_norm::PER_LANE; ++i) {
        const int j = lane + 32 * i;
        v[i] = 0.0f;
        if (j >= c) continue;
        for (int s = 0; s < n_parts; ++s) v[i] += fresh(parts + s * part_stride + j);
        v[i] += bias[j];
        if (residual) v[i] += fresh(residual + j);
    }
    norm_row(v, gamma, beta, c, eps);
}

// Stores the row a warp holds: all c columns to `keep` (when given); columns [k0, k0 + kc),
// plus `add` (when given), to `chunk`.
__device__ __forceinline__ void store_row(const float (&v)[layer_norm::PER_LANE], int c,
                                          float* keep, const float* add, float* chunk, int k0,
                                          int kc) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < layer_norm::PER_LANE; ++i) {
        const int j = lane + 32 * i;
        if (j >= c) continue;
        if (keep) __stcg(keep + j, v[i]);
        if (j >= k0 && j < k0 + kc) chunk[j - k0] = add ? v[i] + add[j] : v[i];
    }
}

// One linear phase's products for rows [r0, r0 + rows), rows <= ROWS, their input chunks in
// xs (row g's k in [k0, k0 + kc) at xs + g * stride): column n of W (N, K), one warp's,
// written to out[(r0 + g) * N + n]. A warp past N does nothing (its block still reaches the
// caller's barriers).
template <class Round>
__device__ __forceinline__ void gemv(const float* xs, int stride, int r0, int rows,
                                     const float* w, long long n, int N, int K, int k0, int kc,
                                     float* out) {
    const int lane = threadIdx.x % 32;
    if (n >= N) return;
    const float* wr = w + n * K + k0;
    float acc[ROWS] = {};
    // kc and stride are multiples of 4 whenever K and the chunk are.
    if (K % 4 == 0 && stride % 4 == 0 && aligned16(wr)) {
        for (int kk = 4 * lane; kk < kc; kk += 128) {
            const float4 b = __ldg(reinterpret_cast<const float4*>(wr + kk));
#pragma unroll
            for (int g = 0; g < ROWS; ++g) {
                if (g >= rows) break;
                const float4 a = *reinterpret_cast<const float4*>(xs + g * stride + kk);
                acc[g] = fmaf(Round::of(a.x), Round::of(b.x), acc[g]);
                acc[g] = fmaf(Round::of(a.y), Round::of(b.y), acc[g]);
                acc[g] = fmaf(Round::of(a.z), Round::of(b.z), acc[g]);
                acc[g] = fmaf(Round::of(a.w), Round::of(b.w), acc[g]);
            }
        }
    } else {
        for (int kk = lane; kk < kc; kk += 32) {
            const float b = Round::of(__ldg(wr + kk));
#pragma unroll
            for (int g = 0; g < ROWS; ++g) {
                if (g >= rows) break;
                acc[g] = fmaf(Round::of(xs[g * stride + kk]), b, acc[g]);
            }
        }
    }
#pragma unroll
    for (int g = 0; g < ROWS; ++g) {
        const float sum = warp_sum(acc[g]);
        if (lane == 0 && g < rows) __stcg(out + (long long)(r0 + g) * N + n, sum);
    }
}

// Block-wide reduction of one value per thread (max or sum), in a fixed order; `scratch`
// holds WARPS floats. Every thread gets the result.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    v = MAX ? warp_max(v) : warp_sum(v);
    __syncthreads();  // scratch's previous readers are done
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = scratch[0];
    for (int w = 1; w < WARPS; ++w) r = MAX ? fmaxf(r, scratch[w]) : r + scratch[w];
    return r;
}

// A block's place in the chain: layer, phase, its index within the phase, and how many
// blocks precede the phase.
struct Place {
    int layer, phase;
    long long index, before;
};

__device__ __forceinline__ Place place(const DecoderArgs& p, const Chain& chain,
                                       long long ticket) {
    Place at{(int)(ticket / chain.per_layer), 0, ticket % chain.per_layer, 0};
    at.before = at.layer * chain.per_layer;
    if (at.layer == p.layers) {
        at.phase = POST;
        return at;
    }
    while (at.index >= chain.blocks[at.phase]) {
        at.index -= chain.blocks[at.phase];
        at.before += chain.blocks[at.phase];
        ++at.phase;
    }
    return at;
}

template <class Round>
struct Decoder {
    const DecoderArgs& p;
    Place at;
    const float* in;  // the previous phase's results
    float* out;       // this phase's
    float* smem;

    __device__ const float* field(int layer, Field f) const {
        return p.weights + layer * p.layer_stride + p.field[f];
    }
    __device__ float* residual(int which) const {
        return p.residual + (long long)which * p.batch * p.c;
    }
    // The layer's input t (zero for the first layer).
    __device__ const float* layer_input(int layer) const {
        return layer == 0 ? nullptr : p.layers_out + (long long)(layer - 1) * p.batch * p.c;
    }

    // A linear phase: W (N, K) in k chunks of `chunk`, `columns` output columns a block;
    // `input(r0, rows, k0, kc, xs, stride)` writes rows [r0, r0 + rows) of the input, columns
    // [k0, k0 + kc), into xs.
    template <class Input>
    __device__ void linear(const float* w, int N, int K, int chunk, int columns, Input input) {
        const long long blocks = ceil_div(N, columns);
        const int split = (int)(at.index / blocks);
        const long long first = at.index % blocks * columns;
        const int k0 = split * chunk, kc = min(chunk, K - k0);
        const int group = min(ROWS, SMEM_FLOATS / chunk);
        float* parts = out + (long long)split * p.batch * N;
        for (int r0 = 0; r0 < p.batch; r0 += group) {
            const int rows = min(group, p.batch - r0);
            __syncthreads();  // the previous group's readers of smem are done
            input(r0, rows, k0, kc, smem, chunk);
            __syncthreads();
            for (long long n = first + threadIdx.x / 32; n < first + columns; n += WARPS)
                gemv<Round>(smem, chunk, r0, rows, w, n, N, K, k0, kc, parts);
        }
    }

    // Rows of LN(parts + bias + residual) (one warp a row): kept whole in `keep` by the
    // phase's first block, their chunk (+ add) in xs.
    __device__ void norm_input(int r0, int rows, int k0, int kc, float* xs, int stride,
                               int parts, const float* bias, const float* residual,
                               const float* gamma, const float* beta, float* keep,
                               const float* add) const {
        const long long row_stride = (long long)p.batch * p.c;
        for (int g = threadIdx.x / 32; g < rows; g += WARPS) {
            const long long r = (long long)(r0 + g) * p.c;
            float v[layer_norm::PER_LANE];
            add_norm_row(v, in + r, parts, row_stride, bias, residual ? residual + r : nullptr,
                         gamma, beta, p.c, p.eps);
            store_row(v, p.c, at.index == 0 && keep ? keep + r : nullptr, add ? add + r : nullptr,
                      xs + g * stride, k0, kc);
        }
    }

    // Rows of act(sum of `parts` k-split parts of width `width` + bias), chunk [k0, k0 + kc).
    template <bool RELU>
    __device__ void bias_input(int r0, int rows, int k0, int kc, float* xs, int stride, int parts,
                               int width, const float* bias) const {
        for (int e = threadIdx.x; e < rows * kc; e += THREADS) {
            const int g = e / kc, j = k0 + e % kc;
            const float* src = in + (long long)(r0 + g) * width + j;
            float v = 0.0f;
            for (int s = 0; s < parts; ++s) v += fresh(src + (long long)s * p.batch * width);
            v += bias[j];
            xs[g * stride + e % kc] = RELU ? fmaxf(v, 0.0f) : v;
        }
    }

    // The attention's splits merged, rows [r0, r0 + rows), channels [k0, k0 + kc).
    __device__ void merged_attention(int r0, int rows, int k0, int kc, float* xs,
                                     int stride) const {
        const int hd = p.c / p.heads, splits = (int)ceil_div(p.l_all, p.keys_per_split);
        for (int e = threadIdx.x; e < rows * kc; e += THREADS) {
            const int g = e / kc, j = k0 + e % kc, z = j / hd, ch = j % hd;
            const float* part = in + ((long long)(r0 + g) * p.heads + z) * splits * (hd + 2);
            float m = NEG_INF;
            for (int s = 0; s < splits; ++s) m = fmaxf(m, fresh(part + s * (hd + 2) + hd));
            const float base = m == NEG_INF ? 0.0f : m;
            float o = 0.0f, l = 0.0f;
            for (int s = 0; s < splits; ++s) {
                const float* mine = part + s * (hd + 2);
                const float f = expf(fresh(mine + hd) - base);
                o += fresh(mine + ch) * f;
                l += fresh(mine + hd + 1) * f;
            }
            xs[g * stride + e % kc] = o / l;
        }
    }

    // Brings the weights of this block's linear phase into L2 (k and v of its keys for the
    // attention): they do not depend on the earlier phases, so this runs before the wait.
    __device__ void prefetch() const {
        const int j = at.layer, c = p.c, ff = p.ff;
        switch (at.phase) {
        case V: return prefetch_linear(field(j, W_V), c, c, p.proj_chunk, p.proj_columns);
        case SO: return prefetch_linear(field(j, W_SO), c, c, p.proj_chunk, p.proj_columns);
        case Q: return prefetch_linear(field(j, W_Q), c, c, p.proj_chunk, p.proj_columns);
        case CO: return prefetch_linear(field(j, W_CO), c, c, p.proj_chunk, p.proj_columns);
        case F1: return prefetch_linear(field(j, W_1), ff, c, p.ffn1_chunk, p.ffn1_columns);
        case F2: return prefetch_linear(field(j, W_2), c, ff, p.ffn2_chunk, p.ffn2_columns);
        case A: {
            const int hd = c / p.heads, splits = (int)ceil_div(p.l_all, p.keys_per_split);
            const int split = (int)(at.index % splits);
            const int z = (int)(at.index / splits % p.heads), r = (int)(at.index / splits / p.heads);
            const int key0 = split * p.keys_per_split, keys = min(p.keys_per_split, p.l_all - key0);
            const long long kv_row = 2LL * p.layers * c, at_k = (long long)j * 2 * c + z * hd;
            // Each key's k (then v) channels: one line per 32 floats, and one for a misaligned end.
            const int lines = (int)ceil_div(hd, 32) + 1;
            for (int e = threadIdx.x; e < 2 * keys * lines; e += THREADS) {
                const int which = e / (keys * lines), key = e / lines % keys, line = e % lines;
                const long long at = ((long long)(key0 + key) * p.batch + r) * kv_row + at_k +
                                     which * c + min(32 * line, hd - 1);
                prefetch_l2(p.mem_kv + at);
            }
            return;
        }
        default:
            return;
        }
    }

    __device__ void prefetch_linear(const float* w, int N, int K, int chunk, int columns) const {
        const long long blocks = ceil_div(N, columns);
        const int split = (int)(at.index / blocks), k0 = split * chunk, kc = min(chunk, K - k0);
        const long long first = at.index % blocks * columns;
        const int lines = (int)ceil_div(kc, 32) + 1;  // as above
        for (int e = threadIdx.x; e < columns * lines; e += THREADS) {
            const long long n = first + e / lines;
            if (n < N) prefetch_l2(w + n * K + k0 + min(32 * (e % lines), kc - 1));
        }
    }

    // One (row, head, key split) of the cross attention: o, m, l of its keys.
    __device__ void attention() const {
        const int hd = p.c / p.heads, splits = (int)ceil_div(p.l_all, p.keys_per_split);
        const int split = (int)(at.index % splits);
        const int z = (int)(at.index / splits % p.heads), r = (int)(at.index / splits / p.heads);
        const int key0 = split * p.keys_per_split, keys = min(p.keys_per_split, p.l_all - key0);
        const int tid = threadIdx.x;
        const long long kv_row = 2LL * p.layers * p.c;
        // smem: q (hd), the keys' scores then probabilities, the p.v sums, reduction scratch.
        float* qs = smem;
        float* sc = qs + hd;
        float* acc = sc + keys;
        const int groups = max(1, THREADS / hd);
        float* scratch = acc + groups * hd;
        const float* q_parts = in + (long long)r * p.c + z * hd;
        const float* bias = field(at.layer, B_Q) + z * hd;
        const int q_splits = (int)ceil_div(p.c, p.proj_chunk);
        for (int ch = tid; ch < hd; ch += THREADS) {
            float v = 0.0f;
            for (int s = 0; s < q_splits; ++s)
                v += fresh(q_parts + (long long)s * p.batch * p.c + ch);
            qs[ch] = Round::of((v + bias[ch]) * p.scale);
        }
        __syncthreads();
        const long long k_at = (long long)at.layer * 2 * p.c + z * hd;
        const float* kv = p.mem_kv + (long long)r * kv_row;
        const long long token_stride = (long long)p.batch * kv_row;
        float m = NEG_INF;
        for (int i = tid; i < keys; i += THREADS) {
            const long long token = key0 + i;
            float s = NEG_INF;
            if (!p.key_pad[(long long)r * p.l_all + token]) {
                const float* k = kv + token * token_stride + k_at;
                s = 0.0f;
                for (int ch = 0; ch < hd; ++ch) s = fmaf(qs[ch], Round::of(__ldg(k + ch)), s);
            }
            sc[i] = s;
            m = fmaxf(m, s);
        }
        m = block_reduce<true>(m, scratch);
        float l = 0.0f;
        for (int i = tid; i < keys; i += THREADS) {
            const float e = m == NEG_INF ? 0.0f : expf(sc[i] - m);
            l += e;
            sc[i] = Round::of(e);
        }
        l = block_reduce<false>(l, scratch);  // its barriers also publish sc
        const long long v_at = k_at + p.c;
        for (int e = tid; e < groups * hd; e += THREADS) {
            const int g = e / hd, ch = e % hd;
            float o = 0.0f;
            for (int i = g; i < keys; i += groups)
                o = fmaf(sc[i], Round::of(__ldg(kv + (key0 + i) * token_stride + v_at + ch)), o);
            acc[e] = o;
        }
        __syncthreads();
        float* part = out + (((long long)r * p.heads + z) * splits + split) * (hd + 2);
        for (int ch = tid; ch < hd; ch += THREADS) {
            float o = 0.0f;
            for (int g = 0; g < groups; ++g) o += acc[g * hd + ch];
            __stcg(part + ch, o);
        }
        if (tid == 0) {
            __stcg(part + hd, m);
            __stcg(part + hd + 1, l);
        }
    }

    // The last layer's LN3, then post_norm: layers_out's last layer and hs.
    __device__ void post_norm() const {
        const int layer = p.layers - 1, f2_splits = (int)ceil_div(p.ff, p.ffn2_chunk);
        const long long row_stride = (long long)p.batch * p.c;
        float* last = p.layers_out + layer * row_stride;
        for (int r = threadIdx.x / 32; r < p.batch; r += WARPS) {
            const long long at_row = (long long)r * p.c;
            float v[layer_norm::PER_LANE];
            add_norm_row(v, in + at_row, f2_splits, row_stride, field(layer, B_2),
                         residual(1) + at_row, field(layer, G_3), field(layer, BETA_3), p.c,
                         p.eps);
            store_row(v, p.c, last + at_row, nullptr, nullptr, 0, 0);
            const float* gamma = p.weights + p.post_norm;
            norm_row(v, gamma, gamma + p.c, p.c, p.eps);
            store_row(v, p.c, p.hs + at_row, nullptr, nullptr, 0, 0);
        }
    }

    __device__ void run() {
        const int j = at.layer, c = p.c, ff = p.ff;
        const int proj_splits = (int)ceil_div(c, p.proj_chunk);
        switch (at.phase) {
        case V:
            linear(field(j, W_V), c, c, p.proj_chunk, p.proj_columns,
                   [&](int r0, int rows, int k0, int kc, float* xs, int stride) {
                       if (j == 0) {  // t = 0
                           for (int e = threadIdx.x; e < rows * kc; e += THREADS)
                               xs[e / kc * stride + e % kc] = 0.0f;
                           return;
                       }
                       const int f2_splits = (int)ceil_div(ff, p.ffn2_chunk);
                       norm_input(r0, rows, k0, kc, xs, stride, f2_splits, field(j - 1, B_2),
                                  residual(1), field(j - 1, G_3), field(j - 1, BETA_3),
                                  p.layers_out + (long long)(j - 1) * p.batch * c, nullptr);
                   });
            break;
        case SO:
            linear(field(j, W_SO), c, c, p.proj_chunk, p.proj_columns,
                   [&](int r0, int rows, int k0, int kc, float* xs, int stride) {
                       bias_input<false>(r0, rows, k0, kc, xs, stride, proj_splits, c,
                                         field(j, B_V));
                   });
            break;
        case Q:
            linear(field(j, W_Q), c, c, p.proj_chunk, p.proj_columns,
                   [&](int r0, int rows, int k0, int kc, float* xs, int stride) {
                       norm_input(r0, rows, k0, kc, xs, stride, proj_splits, field(j, B_SO),
                                  layer_input(j), field(j, G_1), field(j, BETA_1), residual(0),
                                  p.qpos);
                   });
            break;
        case A:
            attention();
            break;
        case CO:
            linear(field(j, W_CO), c, c, p.proj_chunk, p.proj_columns,
                   [&](int r0, int rows, int k0, int kc, float* xs, int stride) {
                       merged_attention(r0, rows, k0, kc, xs, stride);
                   });
            break;
        case F1:
            linear(field(j, W_1), ff, c, p.ffn1_chunk, p.ffn1_columns,
                   [&](int r0, int rows, int k0, int kc, float* xs, int stride) {
                       norm_input(r0, rows, k0, kc, xs, stride, proj_splits, field(j, B_CO),
                                  residual(0), field(j, G_2), field(j, BETA_2), residual(1),
                                  nullptr);
                   });
            break;
        case F2:
            linear(field(j, W_2), c, ff, p.ffn2_chunk, p.ffn2_columns,
                   [&](int r0, int rows, int k0, int kc, float* xs, int stride) {
                       const int f1_splits = (int)ceil_div(c, p.ffn1_chunk);
                       bias_input<true>(r0, rows, k0, kc, xs, stride, f1_splits, ff,
                                        field(j, B_1));
                   });
            break;
        default:
            post_norm();
        }
    }
};

template <class Round>
__device__ void run_decoder(const DecoderArgs& p) {
    __shared__ __align__(16) float smem[SMEM_FLOATS];
    __shared__ unsigned ticket;
    const int tid = threadIdx.x;
    if (tid == 0) ticket = atomicAdd(p.control, 1u);
    __syncthreads();
    const Chain chain(p);
    const Place at = place(p, chain, ticket);
    // The phase's place in the whole chain (the post_norm block follows the last F2).
    const long long phase = (long long)at.layer * PHASES + (at.phase == POST ? 0 : at.phase);
    Decoder<Round> d{p, at, p.work + (phase + 1) % 2 * p.work_half,
                     p.work + phase % 2 * p.work_half, smem};
    d.prefetch();
    if (tid == 0) {
        // Every block of the earlier phases has a smaller ticket: it is running or done.
        while (*reinterpret_cast<volatile unsigned*>(p.control + 1) < at.before) __nanosleep(64);
        __threadfence();
    }
    __syncthreads();
    d.run();
    __threadfence();  // this block's results are visible device-wide before it counts
    __syncthreads();
    if (tid == 0) {
        if (at.phase == POST) {
            // Every other block has counted itself: nothing reads the counters any more.
            p.control[0] = 0;
            p.control[1] = 0;
        } else {
            atomicAdd(p.control + 1, 1u);
        }
    }
}

}  // namespace decoder

// decoder_<precision>: the products' operands rounded as f32 (as is), tf32 or bf16.
#define DECODER_KERNEL(PRECISION, ROUND)                                                    \
    ATTNRT_KERNEL void __launch_bounds__(decoder::THREADS) decoder_##PRECISION(DecoderArgs p) { \
        decoder::run_decoder<ROUND>(p);                                                      \
    }
DECODER_KERNEL(f32, RoundF32)
DECODER_KERNEL(tf32, RoundTf32)
DECODER_KERNEL(bf16, RoundBf16)
