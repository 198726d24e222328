// Softmax cross-entropy loss and its gradient, the models' last step.
//
// Math, per row z of logits with label y: m = max z, s = sum exp(z - m),
//   loss = log s - (z_y - m),  dlogits = scale * (softmax(z) - onehot(y)),
// and the row counts as correct when its first largest logit is the label's (ties broken
// like the CPU reference: the lowest index wins).
//
// Layouts: logits, dlogits (rows, cols) row-major; labels (rows); stats (2): the kernel adds
// scale * loss of every row to stats[0] and the correct count to stats[1] (zeroed by the
// caller).
//
// Variants:
//   softmax_cross_entropy_f32  one warp per row.
#include "common.cuh"

ATTNRT_KERNEL void softmax_cross_entropy_f32(const float* __restrict__ logits,
                                             const unsigned* __restrict__ labels,
                                             float* __restrict__ dlogits, float* __restrict__ stats,
                                             int rows, int cols, float scale) {
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
