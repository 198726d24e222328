// The ViT's own training kernels (GEMMs and column sums go through cuBLAS; bias addition
// reuses train_ops.cu). Activations are row-major [rows = images * tokens, width];
// attention tensors are head-major [images * heads, tokens, head_dim].
#include "common.cuh"

// Cuts images [n, C, S, S] into patch rows [n * T, C * P * P], T = (S / P)^2, row-major
// patches, channel-major within a patch (as src/train/vit.rs::patchify).
ATTNRT_KERNEL void patchify_f32(const float* __restrict__ x, float* __restrict__ out, int n, int c, int s,
                                int p) {
    int per_row = s / p, t = per_row * per_row, pd = c * p * p;
    GRID_STRIDE(i, (long long)n * t * pd) {
        int e = i % pd;
        long long row = i / pd;
        int img = row / t, tok = row % t;
        int k = e / (p * p), dy = (e / p) % p, dx = e % p;
        int y = (tok / per_row) * p + dy, xx = (tok % per_row) * p + dx;
        out[i] = x[(((long long)img * c + k) * s + y) * s + xx];
    }
}

// y[i] += pos[i % period] (the position embedding, period = tokens * width).
ATTNRT_KERNEL void add_periodic_f32(float* __restrict__ y, const float* __restrict__ pos, long long n,
                                    int period) {
    GRID_STRIDE(i, n) { y[i] += pos[i % period]; }
}

// y[i] += x[i] (residual connections and gradient sums).
ATTNRT_KERNEL void add_f32(float* __restrict__ y, const float* __restrict__ x, long long n) {
    GRID_STRIDE(i, n) { y[i] += x[i]; }
}

// LayerNorm over rows of d, one warp per row: y = xhat * gamma + beta, keeping xhat and
// 1/std for the backward pass. eps = 1e-5.
ATTNRT_KERNEL void layernorm_fwd_f32(const float* __restrict__ x, const float* __restrict__ gamma,
                                     const float* __restrict__ beta, float* __restrict__ y,
                                     float* __restrict__ xhat, float* __restrict__ rstd, int rows, int d) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* xr = x + (long long)row * d;
    float s = 0.0f;
    for (int i = lane; i < d; i += 32) s += xr[i];
    float mean = warp_sum(s) / d;
    float v = 0.0f;
    for (int i = lane; i < d; i += 32) v += (xr[i] - mean) * (xr[i] - mean);
    float rs = rsqrtf(warp_sum(v) / d + 1e-5f);
    for (int i = lane; i < d; i += 32) {
        float h = (xr[i] - mean) * rs;
        xhat[(long long)row * d + i] = h;
        y[(long long)row * d + i] = h * gamma[i] + beta[i];
    }
    if (lane == 0) rstd[row] = rs;
}

// LayerNorm backward, one warp per row: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with
// g = dy * gamma, added to dx when add != 0. Also writes dyxhat = dy * xhat, whose column sums
// are gamma's gradient (beta's are dy's).
ATTNRT_KERNEL void layernorm_bwd_f32(const float* __restrict__ dy, const float* __restrict__ xhat,
                                     const float* __restrict__ rstd, const float* __restrict__ gamma,
                                     float* __restrict__ dx, float* __restrict__ dyxhat, int rows, int d,
                                     int add) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    long long o = (long long)row * d;
    float sg = 0.0f, sgh = 0.0f;
    for (int i = lane; i < d; i += 32) {
        float g = dy[o + i] * gamma[i];
        sg += g;
        sgh += g * xhat[o + i];
    }
    float mg = warp_sum(sg) / d, mgh = warp_sum(sgh) / d;
    float rs = rstd[row];
    for (int i = lane; i < d; i += 32) {
        float h = xhat[o + i];
        float v = rs * (dy[o + i] * gamma[i] - mg - h * mgh);
        dx[o + i] = add ? dx[o + i] + v : v;
        dyxhat[o + i] = dy[o + i] * h;
    }
}

#define GELU_K 0.7978845608028654f

// y = gelu(x), tanh approximation.
ATTNRT_KERNEL void gelu_fwd_f32(const float* __restrict__ x, float* __restrict__ y, long long n) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(GELU_K * (v + 0.044715f * v * v * v)));
    }
}

// d[i] *= gelu'(x[i]).
ATTNRT_KERNEL void gelu_bwd_f32(const float* __restrict__ x, float* __restrict__ d, long long n) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        float t = tanhf(GELU_K * (v + 0.044715f * v * v * v));
        d[i] *= 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * 0.044715f * v * v);
    }
}

// The head-major <-> row-major copies of the attention operands. Head-major is [n * H, T, dh];
// row-major is columns offset .. offset + H * dh of [n * T, stride]. Slot `slot` of head `head`
// is token slot_token[head * T + slot]: the head's window partition (window attention); a null
// table is the identity. Element e of the head-major layout pairs with row-major element
// row_major_index(e): index maths in 32 bits (the callers' tensors are far below 2^31
// elements; the launcher checks), and four consecutive elements (same token and head) move as
// one float4 when dh, stride and offset are multiples of 4 and both buffers 16-byte aligned.
__device__ __forceinline__ unsigned row_major_index(unsigned e, const unsigned* __restrict__ slot_token,
                                                    unsigned t, unsigned h, unsigned dh, unsigned stride,
                                                    unsigned offset) {
    unsigned c = e % dh, rest = e / dh;
    unsigned slot = rest % t;
    rest /= t;
    unsigned head = rest % h, img = rest / h;
    unsigned tok = slot_token ? slot_token[head * t + slot] : slot;
    return (img * t + tok) * stride + offset + head * dh + c;
}

// Copies head-major `heads` <-> row-major `rows` (direction `to_heads`), times `scale`.
__device__ __forceinline__ void heads_copy(const float* __restrict__ src, float* __restrict__ dst,
                                           const unsigned* __restrict__ slot_token, float scale, int n,
                                           int t, int h, int dh, int stride, int offset, bool to_heads) {
    unsigned total = (unsigned)n * h * t * dh;
    bool vec = dh % 4 == 0 && stride % 4 == 0 && offset % 4 == 0 && ((unsigned long long)src % 16) == 0 &&
               ((unsigned long long)dst % 16) == 0;
    if (vec) {
        GRID_STRIDE(j, total / 4) {
            unsigned e = 4 * (unsigned)j;
            unsigned r = row_major_index(e, slot_token, t, h, dh, stride, offset);
            unsigned from = to_heads ? r : e, to = to_heads ? e : r;
            float4 v = *reinterpret_cast<const float4*>(src + from);
            v.x *= scale; v.y *= scale; v.z *= scale; v.w *= scale;
            *reinterpret_cast<float4*>(dst + to) = v;
        }
    } else {
        GRID_STRIDE(j, total) {
            unsigned e = (unsigned)j;
            unsigned r = row_major_index(e, slot_token, t, h, dh, stride, offset);
            if (to_heads) dst[e] = scale * src[r];
            else dst[r] = scale * src[e];
        }
    }
}

ATTNRT_KERNEL void rows_to_heads_f32(const float* __restrict__ src, float* __restrict__ dst,
                                     const unsigned* __restrict__ slot_token, float scale, int n, int t,
                                     int h, int dh, int stride, int offset) {
    heads_copy(src, dst, slot_token, scale, n, t, h, dh, stride, offset, true);
}

ATTNRT_KERNEL void heads_to_rows_f32(const float* __restrict__ src, float* __restrict__ dst,
                                     const unsigned* __restrict__ slot_token, float scale, int n, int t,
                                     int h, int dh, int stride, int offset) {
    heads_copy(src, dst, slot_token, scale, n, t, h, dh, stride, offset, false);
}

// Softmax of each row of [rows, cols] in place, one warp per row.
ATTNRT_KERNEL void softmax_rows_f32(float* __restrict__ s, int rows, int cols) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    float* r = s + (long long)row * cols;
    float m = -INFINITY;
    for (int i = lane; i < cols; i += 32) m = fmaxf(m, r[i]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int i = lane; i < cols; i += 32) sum += expf(r[i] - m);
    sum = warp_sum(sum);
    for (int i = lane; i < cols; i += 32) r[i] = expf(r[i] - m) / sum;
}

// Softmax backward in place: dp becomes scale * p * (dp - sum_k p_k dp_k), per row.
ATTNRT_KERNEL void softmax_bwd_rows_f32(const float* __restrict__ p, float* __restrict__ dp, int rows,
                                        int cols, float scale) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    long long o = (long long)row * cols;
    float inner = 0.0f;
    for (int i = lane; i < cols; i += 32) inner += p[o + i] * dp[o + i];
    inner = warp_sum(inner);
    for (int i = lane; i < cols; i += 32) dp[o + i] = scale * p[o + i] * (dp[o + i] - inner);
}

// out[img, c] = mean over tokens of x[img * T + tok, c].
ATTNRT_KERNEL void mean_tokens_f32(const float* __restrict__ x, float* __restrict__ out, int n, int t, int d) {
    GRID_STRIDE(i, (long long)n * d) {
        long long img = i / d;
        int c = i % d;
        float s = 0.0f;
        for (int tok = 0; tok < t; ++tok) s += x[(img * t + tok) * d + c];
        out[i] = s / t;
    }
}

// The backward of mean_tokens: dx[img * T + tok, c] = dout[img, c] / T.
ATTNRT_KERNEL void mean_tokens_bwd_f32(const float* __restrict__ dout, float* __restrict__ dx, int n, int t,
                                       int d) {
    GRID_STRIDE(i, (long long)n * t * d) {
        long long row = i / d;
        int c = i % d;
        dx[i] = dout[(row / t) * d + c] / t;
    }
}
