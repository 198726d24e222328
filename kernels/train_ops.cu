// Training kernels: the element-wise and reduction parts of the forward and backward passes
// (GEMMs go through cuBLAS and cuBLASLt, which also adds the linear layers' biases and
// ReLU), the bf16 cast of GEMM operands, the optimizers, and the all-reduce over peer memory.
// Layouts: activations are row-major (rows = samples); parameters, gradients and optimizer
// state are flat f32 vectors.
#include "common.cuh"

// f32 -> bf16, round to nearest even, NaN kept (quiet): the rounding of half::bf16::from_f32,
// which the CPU engine's bf16 emulation uses, so both round GEMM operands bit for bit alike.
// Written out rather than __float2bfloat16_rn so the NaN case is the host's too.
__device__ __forceinline__ unsigned short bf16_rn(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// y[i] = bf16(x[i]): the bf16 GEMM operands. It runs at the memory's speed: four
// values per thread (16-byte loads, 8-byte stores) where both pointers allow, else one. The
// launcher sizes the grid for the four-wide form; both forms stride.
ATTNRT_KERNEL void cast_bf16_f32(const float* __restrict__ x, unsigned short* __restrict__ y,
                                 long long n) {
    if (((unsigned long long)x % 16) == 0 && ((unsigned long long)y % 8) == 0) {
        long long n4 = n / 4;
        GRID_STRIDE(j, n4) {
            float4 v = reinterpret_cast<const float4*>(x)[j];
            reinterpret_cast<ushort4*>(y)[j] =
                make_ushort4(bf16_rn(v.x), bf16_rn(v.y), bf16_rn(v.z), bf16_rn(v.w));
        }
        GRID_STRIDE(j, n - 4 * n4) { y[4 * n4 + j] = bf16_rn(x[4 * n4 + j]); }
    } else {
        GRID_STRIDE(i, n) { y[i] = bf16_rn(x[i]); }
    }
}

// dx[i] = 0 where the ReLU output y[i] was 0 (its gradient is zero there).
ATTNRT_KERNEL void relu_backward_f32(float* __restrict__ dx, const float* __restrict__ y, long long n) {
    GRID_STRIDE(i, n) {
        if (!(y[i] > 0.0f)) dx[i] = 0.0f;
    }
}

// db[c] = sum over rows of dy[r, c]. One thread per column, rows in order: the sum is the
// same on every run, so replicas agree bit for bit.
ATTNRT_KERNEL void bias_grad_f32(const float* __restrict__ dy, float* __restrict__ db, int rows, int cols) {
    GRID_STRIDE(c, cols) {
        float s = 0.0f;
        for (int r = 0; r < rows; ++r) s += dy[(long long)r * cols + c];
        db[c] = s;
    }
}

// Softmax cross-entropy, one warp per row of logits (rows x cols). Writes
// dlogits = scale * (softmax - onehot(label)) and adds, per row, scale * loss to stats[0] and
// 1 to stats[1] when the first largest logit is the label's. stats is zeroed by the caller.
ATTNRT_KERNEL void softmax_xent_f32(const float* __restrict__ logits, const unsigned* __restrict__ labels,
                                    float* __restrict__ dlogits, float* __restrict__ stats, int rows,
                                    int cols, float scale) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= rows) return;
    const float* z = logits + (long long)warp * cols;
    float* dz = dlogits + (long long)warp * cols;
    // Max with its first index, so the accuracy count breaks ties like the CPU reference.
    float m = -INFINITY;
    int arg = cols;
    for (int c = lane; c < cols; c += 32) {
        if (z[c] > m) { m = z[c]; arg = c; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float om = __shfl_xor_sync(0xffffffffu, m, o);
        int oa = __shfl_xor_sync(0xffffffffu, arg, o);
        if (om > m || (om == m && oa < arg)) { m = om; arg = oa; }
    }
    float s = 0.0f;
    for (int c = lane; c < cols; c += 32) s += expf(z[c] - m);
    s = warp_sum(s);
    unsigned label = labels[warp];
    for (int c = lane; c < cols; c += 32) {
        float p = expf(z[c] - m) / s;
        dz[c] = scale * (p - (c == (int)label ? 1.0f : 0.0f));
    }
    if (lane == 0) {
        atomicAdd(&stats[0], scale * (logf(s) - (z[label] - m)));
        if (arg == (int)label) atomicAdd(&stats[1], 1.0f);
    }
}

// SGD with momentum; mirrors Optimizer::step_cpu in src/train/optim.rs.
ATTNRT_KERNEL void sgd_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ v,
                           long long n, float lr, float momentum, float weight_decay) {
    GRID_STRIDE(i, n) {
        float gi = g[i] + weight_decay * p[i];
        float vi = momentum * v[i] + gi;
        v[i] = vi;
        p[i] -= lr * vi;
    }
}

// AdamW; mirrors Optimizer::step_cpu. c1, c2 are the bias corrections 1 - beta^t.
ATTNRT_KERNEL void adamw_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, long long n, float lr, float beta1, float beta2,
                             float eps, float weight_decay, float c1, float c2) {
    GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float update = (mi / c1) / (sqrtf(vi / c2) + eps);
        p[i] -= lr * (weight_decay * p[i] + update);
    }
}

// The all-reduce's buffers: one gradient vector per participant, possibly on other GPUs
// (peer access) or all on one (tests).
#define MAX_PEERS 8
struct Peers {
    float* p[MAX_PEERS];
};

// Reduce-scatter step of the direct all-reduce: bufs[own][i] = sum over k in 0..n of
// bufs[k][i] for i in [begin, end), k in order, so every participant's chunk is summed the
// same way. float4 loads when the range is 16-byte aligned in every buffer.
ATTNRT_KERNEL void allreduce_sum_chunk_f32(Peers bufs, int n, int own, long long begin, long long end) {
    float* dst = bufs.p[own];
    bool vec = (begin % 4) == 0;
    for (int k = 0; k < n && vec; ++k) vec = ((unsigned long long)bufs.p[k] % 16) == 0;
    long long len = end - begin;
    if (vec) {
        long long n4 = len / 4;
        GRID_STRIDE(j, n4) {
            long long i = begin + 4 * j;
            float4 s = *reinterpret_cast<const float4*>(bufs.p[0] + i);
            for (int k = 1; k < n; ++k) {
                float4 v = *reinterpret_cast<const float4*>(bufs.p[k] + i);
                s.x += v.x; s.y += v.y; s.z += v.z; s.w += v.w;
            }
            *reinterpret_cast<float4*>(dst + i) = s;
        }
        GRID_STRIDE(j, len - 4 * n4) {
            long long i = begin + 4 * n4 + j;
            float s = bufs.p[0][i];
            for (int k = 1; k < n; ++k) s += bufs.p[k][i];
            dst[i] = s;
        }
    } else {
        GRID_STRIDE(j, len) {
            long long i = begin + j;
            float s = bufs.p[0][i];
            for (int k = 1; k < n; ++k) s += bufs.p[k][i];
            dst[i] = s;
        }
    }
}

// All-gather step: copies chunk [begin, end) of src (its owner) into dst.
ATTNRT_KERNEL void copy_range_f32(float* __restrict__ dst, const float* __restrict__ src, long long begin,
                                  long long end) {
    bool vec = (begin % 4) == 0 && ((unsigned long long)dst % 16) == 0 && ((unsigned long long)src % 16) == 0;
    long long len = end - begin;
    if (vec) {
        long long n4 = len / 4;
        GRID_STRIDE(j, n4) {
            long long i = begin + 4 * j;
            *reinterpret_cast<float4*>(dst + i) = *reinterpret_cast<const float4*>(src + i);
        }
        GRID_STRIDE(j, len - 4 * n4) {
            long long i = begin + 4 * n4 + j;
            dst[i] = src[i];
        }
    } else {
        GRID_STRIDE(j, len) { dst[begin + j] = src[begin + j]; }
    }
}
