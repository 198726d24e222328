// The index arithmetic the pooling kernels share (max_pool.cu, avg_pool.cu): the NHWC position
// of a flat index, and which outputs' fixed windows cover an input position.
#pragma once

// Element i of an NHWC tensor (n, h, w, c): its image, row, column and channel.
struct Nhwc {
    int b, y, x, ch;
};

__device__ __forceinline__ Nhwc nhwc_at(long long i, int h, int w, int c) {
    Nhwc at;
    at.ch = (int)(i % c);
    long long t = i / c;
    at.x = (int)(t % w);
    t /= w;
    at.y = (int)(t % h);
    at.b = (int)(t / h);
    return at;
}

// Along one axis, the outputs (of `out`) whose windows (size k, stride s, padding p) cover
// input position i: [*first, *last]. Output o covers [o s - p, o s - p + k).
__device__ __forceinline__ void fixed_covering(int i, int out, int k, int s, int p, int* first,
                                               int* last) {
    int hi = i + p;       // o s <= i + p
    int lo = hi - k + 1;  // o s > i + p - k
    *first = lo <= 0 ? 0 : (lo + s - 1) / s;
    *last = min(hi / s, out - 1);
}
