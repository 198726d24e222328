// Cyclic-shift window attention for one head (spec, encoder step 5), fused with the window
// reverse and head concatenation (steps 6-7) in its output write.
//
// One block per (query window i, batch item b, head z). The query window is a w*w*hd vector
// (w*w consecutive slots of hd channels). Score column col = l*w*w + a*w + e pairs it with key
// window l rolled by (+a, +e): K(l,a,e)[r][c] = K(l)[(r-a) mod w][(c-e) mod w]. The roll is
// modular indexing into the unshifted K and V (w is a power of two), so shifted copies never
// exist in memory:
//   s = q_i . K(l,a,e);  w > 1: s = (s + sr[a*w+e]) / (w*w);  padded key: s = -inf;
//   s += bias[i][col] (when given);  p = softmax over the n_keys columns;
//   o_i[pos][ch] = sum_col p[col] * V(l,a,e)[pos][ch].
// With w == 1 this is plain scaled-dot-product attention over tokens (the query is expected
// pre-scaled), which is how the decoder's cross attention uses it.
//
// Layouts. Slot s of batch item b (s in [0, n_keys)) has its hd channels at
//   q + b*q_batch_stride + s*q_slot_stride (+ z*head_stride), likewise k and v with kv_*.
// The encoder passes its per-head (b, L_all, hd) window layout (written by
// linear_qkv_windows_f32); the decoder passes (tokens, b, c) rows with head z at channel z*hd.
//   bias     (gridDim.x, n_keys) or null          key_pad  (batch, n_keys), nonzero = -inf
//   sr       (w*w) for w > 1                      slot_token (n_keys) slot -> token, or null
//   out      (tokens, batch, out_row) rows; this head's channels start at out_channel + z*hd:
//            the window-reversed, concatenated output (token = slot_token[slot]).
//   head_out (batch, n_keys, hd), or null: the output before window reverse, for tests.
//
// Variants: window_attention_f32 only. Work per block is n_keys * w*w*hd multiply-adds for
// the scores and as many for the output; scores live in shared memory (n_keys floats).
#include "common.cuh"

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
    int w, hd, n_keys, batch, out_row, out_channel;
};

namespace {

// sum over columns col = first, first + step, ... of p[col] * V(l,a,e)[pos][ch], entry = pos*hd + ch.
__device__ float weighted_values(const WindowAttentionArgs& p, const float* weights,
                                 const float* v, int entry, int first, int step) {
    const int ww = p.w * p.w, wmask = p.w - 1;
    const int pos = entry / p.hd, ch = entry % p.hd, r = pos / p.w, c = pos % p.w;
    float acc = 0.0f;
    for (int col = first; col < p.n_keys; col += step) {
        const int l = col / ww, a = (col % ww) / p.w, e = col % p.w;
        const int src = ((r - a) & wmask) * p.w + ((c - e) & wmask);
        acc = fmaf(weights[col], v[(long long)(l * ww + src) * p.kv_slot_stride + ch], acc);
    }
    return acc;
}

// Stores output entry `entry` of query window i: window-reversed into `out`, and in slot
// order into `head_out` when asked.
__device__ void store_output(const WindowAttentionArgs& p, int i, int b, int z, int entry,
                             float o) {
    const int slot = i * p.w * p.w + entry / p.hd, ch = entry % p.hd;
    const long long token = p.slot_token ? p.slot_token[slot] : slot;
    p.out[(token * p.batch + b) * p.out_row + p.out_channel + z * p.hd + ch] = o;
    if (p.head_out) p.head_out[((long long)b * p.n_keys + slot) * p.hd + ch] = o;
}

}  // namespace

ATTNRT_KERNEL void window_attention_f32(WindowAttentionArgs p) {
    extern __shared__ float smem[];
    const int ww = p.w * p.w, dim = ww * p.hd, wmask = p.w - 1;
    float* qs = smem;                    // the query window, dim floats
    float* scores = qs + dim;            // n_keys floats
    float* partial = scores + p.n_keys;  // blockDim.x floats, also the reduction scratch
    const int tid = threadIdx.x, nt = blockDim.x;
    const int i = blockIdx.x, b = blockIdx.y, z = blockIdx.z;
    const long long head = z * p.head_stride;
    const float* q = p.q + b * p.q_batch_stride + (long long)i * ww * p.q_slot_stride + head;
    const float* k = p.k + b * p.kv_batch_stride + head;
    const float* v = p.v + b * p.kv_batch_stride + head;

    for (int e = tid; e < dim; e += nt) qs[e] = q[(e / p.hd) * p.q_slot_stride + e % p.hd];
    __syncthreads();

    // Scores, one column per thread: the query reads are broadcasts (every thread walks the
    // same position), the key rows come through L1.
    const float inv_ww = 1.0f / ww;  // exact: ww is a power of two
    float local_max = NEG_INF;
    for (int col = tid; col < p.n_keys; col += nt) {
        const int l = col / ww, a = (col % ww) / p.w, e = col % p.w;
        float s = 0.0f;
        for (int pos = 0; pos < ww; ++pos) {
            const int src = (((pos / p.w) - a) & wmask) * p.w + (((pos % p.w) - e) & wmask);
            const float* kr = k + (long long)(l * ww + src) * p.kv_slot_stride;
            const float* qr = qs + pos * p.hd;
            for (int ch = 0; ch < p.hd; ++ch) s = fmaf(qr[ch], kr[ch], s);
        }
        if (ww > 1) s = (s + p.sr[col % ww]) * inv_ww;
        if (p.key_pad[(long long)b * p.n_keys + col]) s = NEG_INF;
        if (p.bias) s += p.bias[(long long)i * p.n_keys + col];
        scores[col] = s;
        local_max = fmaxf(local_max, s);
    }
    const float row_max = block_max(local_max, partial);
    float local_sum = 0.0f;
    for (int col = tid; col < p.n_keys; col += nt) {
        const float e = expf(scores[col] - row_max);
        scores[col] = e;
        local_sum += e;
    }
    // block_sum's barriers also make every thread's scores[] visible to all.
    const float inv_sum = 1.0f / block_sum(local_sum, partial);

    if (dim >= nt) {
        for (int entry = tid; entry < dim; entry += nt)
            store_output(p, i, b, z, entry, weighted_values(p, scores, v, entry, 0, 1) * inv_sum);
        return;
    }
    // Fewer entries than threads: `groups` threads share an entry over interleaved columns,
    // and their partial sums are added in a fixed order (results do not depend on timing).
    const int groups = nt / dim, group = tid / dim, entry = tid % dim;
    __syncthreads();  // block_sum's last reads of `partial` are done
    if (group < groups) partial[tid] = weighted_values(p, scores, v, entry, group, groups);
    __syncthreads();
    if (tid < dim) {
        float acc = 0.0f;
        for (int g = 0; g < groups; ++g) acc += partial[g * dim + tid];
        store_output(p, i, b, z, tid, acc * inv_sum);
    }
}
