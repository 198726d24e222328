// The ViT's patch cut: images [n, C, S, S] into patch rows [n * T, C * P * P], T = (S / P)^2
// patches per image in row-major order, each patch's values channel-major (then row, then
// column within the patch), as the CPU reference (src/kernels/patchify/cpu.rs) cuts them.
// A linear layer then embeds each row.
//
// Variants:
//   patchify_f32  one thread per output value (grid-stride); a pure permutation.
#include "common.cuh"

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
