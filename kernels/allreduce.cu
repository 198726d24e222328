// The direct all-reduce of gradient buffers over peer memory (src/train/exchange/allreduce.rs
// runs the phases): each participant sums one chunk of every buffer into its own
// (reduce-scatter), then copies the other chunks from their owners (all-gather). The buffers
// may be on other GPUs (peer access) or all on one (tests); the copy also refreshes a stale
// replica's state from a peer's.
//
// Layouts: flat f32 vectors; a chunk is the element range [begin, end) of each.
//
// Variants:
//   allreduce_sum_chunk_f32   bufs[own][i] = sum over k in 0..n of bufs[k][i], k in order,
//                             so every participant's chunk is summed the same way and every
//                             replica ends with bit-identical sums.
//   allreduce_copy_chunk_f32  dst[i] = src[i] (src is the chunk's owner).
// Both move four values at once (float4) when the range starts on a multiple of 4 and every
// buffer is 16-byte aligned, else one.
#include "common.cuh"

// Participants' buffers, passed by value (mirrored in src/kernels/allreduce.rs).
#define MAX_PEERS 8
struct Peers {
    float* p[MAX_PEERS];
};
static_assert(sizeof(Peers) == 64, "mirrored in src/kernels/allreduce.rs");

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

ATTNRT_KERNEL void allreduce_copy_chunk_f32(float* __restrict__ dst, const float* __restrict__ src,
                                            long long begin, long long end) {
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
