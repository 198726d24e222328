// The backward of CSWinTT's cyclic-shift window attention for the ViT trainer (its forward is
// the inference kernel, window_attention.cu). One head per launch, on the trainer's windowed
// head-major buffers: q (pre-scaled by hd^-0.5), k, v and the output gradient dout, each
// (n, heads, t, hd) with this head's tokens in its window-partition slot order (the trainer
// gathers them so). Slot j = window * ww + pos; score column col = l * ww + roll pairs query
// window i with key window l rolled by roll = a*w + e (see window_attention.cu):
//   s[i][col] = (sum_pos q[i*ww + pos] . k[l*ww + wrap_diff(pos, roll)] + sr[roll]) / ww.
//
// The forward keeps no probabilities (the inference kernel never materialises them), so the
// backward recomputes them from q and k, in two deterministic passes without atomics:
//   window_attention_scores_bwd_f32: per query window (one warp), the scores, p = softmax,
//     dP[col] = sum_pos dout[i*ww + pos] . v[l*ww + wrap_diff(pos, roll)], and
//     dS = p (dP - sum p dP) / ww; writes p and dS, (n, heads, t, t), row i < t / ww;
//   window_attention_grads_f32: per slot and channel, the three sums that read them:
//     dq[i*ww + pos] = sum_col dS[i][col] k[l*ww + wrap_diff(pos, roll)],
//     dk[l*ww + x]   = sum_{i, roll} dS[i][l*ww + roll] q[i*ww + wrap_add(x, roll)],
//     dv[l*ww + x]   = sum_{i, roll}  p[i][l*ww + roll] dout[i*ww + wrap_add(x, roll)].
// dq is the gradient of the pre-scaled q; the trainer's scatter multiplies it by hd^-0.5.
#include "common.cuh"
#include "window_shift.cuh"

namespace {

// One head's operands: window w = 1 << lw, t slots, hd channels, image b's head data at
// ((b * heads + head) * t) * hd.
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
ATTNRT_KERNEL void window_attention_scores_bwd_f32(const float* __restrict__ q, const float* __restrict__ k,
                                                   const float* __restrict__ v, const float* __restrict__ dout,
                                                   const float* __restrict__ sr, float* __restrict__ p,
                                                   float* __restrict__ ds, int n, int lw, int t, int hd,
                                                   int heads, int head) {
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
ATTNRT_KERNEL void window_attention_grads_f32(const float* __restrict__ q, const float* __restrict__ k,
                                              const float* __restrict__ dout, const float* __restrict__ p,
                                              const float* __restrict__ ds, float* __restrict__ dq,
                                              float* __restrict__ dk, float* __restrict__ dv, int n, int lw,
                                              int t, int hd, int heads, int head) {
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
