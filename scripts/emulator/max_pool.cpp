// Emulated checks of kernels/max_pool.cu against a float64 loop over the definition: forward
// (f32 and bf16: values and argmax, padding never winning, the first maximum of a tie) and
// the gathered backward, on the GPU test's shapes.
#include "emu.h"
using std::isnan;  // CUDA declares it globally
#include "../../kernels/max_pool.cu"
#include <random>
static std::mt19937_64 rng(5);
int failures = 0;
int main() {
    int shapes[][7] = {{2, 24, 17, 19, 3, 2, 1}, {3, 64, 15, 15, 3, 2, 0}, {1, 7, 8, 6, 2, 2, 0},
                       {2, 5, 9, 9, 3, 1, 1}, {1, 3, 5, 4, 1, 2, 0}};
    for (auto& sh : shapes) {
        int n = sh[0], c = sh[1], h = sh[2], w = sh[3], k = sh[4], s = sh[5], p = sh[6];
        int oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
        size_t in = (size_t)n * h * w * c, out = (size_t)n * oh * ow * c;
        // Negative values on a coarse grid: ties happen and zero padding would win.
        std::vector<float> x(in), y(out, NAN), dy(out), dx(in, NAN);
        for (auto& v : x) v = -(float)(rng() % 16) / 4.0f - 0.25f;
        for (auto& v : dy) v = (float)(rng() % 7) - 3.0f;
        std::vector<int> idx(out, -7);
        std::vector<__nv_bfloat16> xb(in), yb(out);
        for (size_t i = 0; i < in; ++i) xb[i] = __float2bfloat16_rn(x[i]);
        std::vector<int> idxb(out, -7);
        unsigned blocks = (unsigned)((out + 255) / 256);
        emu::launch({blocks, 1, 1}, 256, nullptr, 0,
                    [&] { max_pool_f32(x.data(), y.data(), idx.data(), n, h, w, c, oh, ow, k, s, p); });
        emu::launch({blocks, 1, 1}, 256, nullptr, 0,
                    [&] { max_pool_bf16(xb.data(), yb.data(), idxb.data(), n, h, w, c, oh, ow, k, s, p); });
        std::vector<double> want_dx(in, 0.0);
        for (int b = 0; b < n; ++b) for (int oy = 0; oy < oh; ++oy) for (int ox = 0; ox < ow; ++ox)
        for (int ch = 0; ch < c; ++ch) {
            double best = -INFINITY; int at = -1;
            for (int ky = 0; ky < k; ++ky) for (int kx = 0; kx < k; ++kx) {
                int iy = oy * s - p + ky, ix = ox * s - p + kx;
                if (iy < 0 || ix < 0 || iy >= h || ix >= w) continue;
                double v = x[(((size_t)b * h + iy) * w + ix) * c + ch];
                if (v > best) { best = v; at = iy * w + ix; }
            }
            size_t o = (((size_t)b * oh + oy) * ow + ox) * c + ch;
            want_dx[((size_t)b * h * w + at) * c + ch] += dy[o];
            bool bad = y[o] != best || idx[o] != at || __bfloat162float(yb[o]) != best || idxb[o] != at;
            if (bad && failures++ < 5)
                printf("FAIL forward %dx%dx%dx%d k%d s%d p%d at %zu: %g@%d bf16 %g@%d, want %g@%d\n",
                       n, h, w, c, k, s, p, o, y[o], idx[o], __bfloat162float(yb[o]), idxb[o], best, at);
        }
        blocks = (unsigned)((in + 255) / 256);
        emu::launch({blocks, 1, 1}, 256, nullptr, 0,
                    [&] { max_pool_backward_f32(dy.data(), idx.data(), dx.data(), n, h, w, c, oh, ow, k, s, p); });
        for (size_t i = 0; i < in; ++i)
            if (dx[i] != want_dx[i] && failures++ < 5)
                printf("FAIL backward %dx%dx%dx%d k%d s%d p%d at %zu: %g want %g\n", n, h, w, c, k, s, p,
                       i, dx[i], want_dx[i]);
    }
    printf("max_pool: %d failures\n", failures);
    return failures != 0;
}
