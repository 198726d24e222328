// The copies between the row-major activations and the head-major operands of attention
// (the ViT trainer's window attention, whose kernels read each head's tokens contiguously in
// its window-partition order; and the (token, image) -> (image, token) transpose of their
// output).
//
// Layouts. Head-major is [n * H, T, dh]; row-major is columns offset .. offset + H * dh of
// [n * T, stride]. Slot `slot` of head `head` is token slot_token[head * T + slot]: the
// head's window partition; a null table is the identity. Every value is multiplied by
// `scale` on the way (the scores' hd^-0.5 on q, and on its gradient back).
//
// Variants:
//   heads_from_rows_f32  row-major -> head-major (gathers each head's slots).
//   heads_to_rows_f32    head-major -> row-major (scatters them back).
//
// Element e of the head-major layout pairs with row-major element row_major_index(e): index
// maths in 32 bits (the callers' tensors are far below 2^31 elements; the launcher checks),
// and four consecutive elements (same token and head) move as one float4 when dh, stride and
// offset are multiples of 4 and both buffers 16-byte aligned.
#include "common.cuh"

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

ATTNRT_KERNEL void heads_from_rows_f32(const float* __restrict__ src, float* __restrict__ dst,
                                       const unsigned* __restrict__ slot_token, float scale, int n, int t,
                                       int h, int dh, int stride, int offset) {
    heads_copy(src, dst, slot_token, scale, n, t, h, dh, stride, offset, true);
}

ATTNRT_KERNEL void heads_to_rows_f32(const float* __restrict__ src, float* __restrict__ dst,
                                     const unsigned* __restrict__ slot_token, float scale, int n, int t,
                                     int h, int dh, int stride, int offset) {
    heads_copy(src, dst, slot_token, scale, n, t, h, dh, stride, offset, false);
}
