// Emulated checks of kernels/linear.cu against a float64 loop: the few-rows kernels (default)
// or, with -DTILES -DEMU_STATIC_SHARED, the 64x64 tile kernels; every epilogue and precision,
// odd and aligned k, partial tiles.
#include "emu.h"
#include "../../kernels/linear.cu"
#include <random>
#include <string>
static std::mt19937_64 rng(3);
static float uni() { return std::uniform_real_distribution<float>(-1, 1)(rng); }
int failures = 0;
using Fn = void (*)(LinearArgs);
struct K { const char* prec; Fn bias, relu, split; double tol; };
#ifdef TILES
#define linear_rows_bias_f32 linear_bias_f32
#define linear_rows_bias_relu_f32 linear_bias_relu_f32
#define linear_rows_split_k_f32 linear_split_k_f32
#define linear_rows_bias_tf32 linear_bias_tf32
#define linear_rows_bias_relu_tf32 linear_bias_relu_tf32
#define linear_rows_split_k_tf32 linear_split_k_tf32
#define linear_rows_bias_bf16 linear_bias_bf16
#define linear_rows_bias_relu_bf16 linear_bias_relu_bf16
#define linear_rows_split_k_bf16 linear_split_k_bf16
#define NS {70, 131}
#define GRID(m, n, s) {(unsigned)((m + 63) / 64), (unsigned)((n + 63) / 64), (unsigned)s}
#define MS {13, 97}
#define KS {5, 45, 48, 300}
#else
#define NS {1, 3, 8}
#define GRID(m, n, s) {(unsigned)((m + 7) / 8), 1, (unsigned)s}
#define MS {1, 13, 70}
#define KS {5, 45, 48, 300}
#endif
int main() {
    K ks[] = {{"f32", linear_rows_bias_f32, linear_rows_bias_relu_f32, linear_rows_split_k_f32, 1e-5},
              {"tf32", linear_rows_bias_tf32, linear_rows_bias_relu_tf32, linear_rows_split_k_tf32, 2e-3},
              {"bf16", linear_rows_bias_bf16, linear_rows_bias_relu_bf16, linear_rows_split_k_bf16, 1e-2}};
    for (auto& kk : ks)
    for (int n : NS)
    for (int m : MS)
    for (int k : KS) {
        std::vector<float> x(n * k), w(m * k), b(m);
        for (auto& v : x) v = uni(); for (auto& v : w) v = uni(); for (auto& v : b) v = uni();
        std::vector<double> ref(n * m);
        for (int r = 0; r < n; ++r) for (int c = 0; c < m; ++c) { double s = 0; for (int i = 0; i < k; ++i) s += (double)x[r*k+i]*w[c*k+i]; ref[r*m+c] = s; }
        for (int e = 0; e < 3; ++e) {
            const int splits = e == 2 ? (k >= 48 ? 3 : 1) : 1;
            const long long chunk = ((k + splits - 1) / splits + 31) / 32 * 32;
            std::vector<float> out((size_t)splits * n * m, NAN);
            LinearArgs a{};
            a.x = x.data(); a.weight = w.data(); a.bias = b.data(); a.out = out.data();
            a.n = n; a.m = m; a.k = k; a.k_chunk = chunk; a.scale = 0.5f;
            Fn f = e == 0 ? kk.bias : e == 1 ? kk.relu : kk.split;
            emu::launch(GRID(m, n, splits), 256, nullptr, 0, [&] { f(a); });
            double num = 0, den = 0; bool bad = false;
            for (int r = 0; r < n; ++r) for (int c = 0; c < m; ++c) {
                double want = e == 0 ? (ref[r*m+c] + b[c]) * 0.5 : e == 1 ? std::max(ref[r*m+c] + b[c], 0.0) : ref[r*m+c];
                double got = 0;
                if (e == 2) for (int z = 0; z < splits; ++z) got += out[(size_t)z*n*m + r*m + c]; else got = out[r*m+c];
                if (!std::isfinite(got)) bad = true;
                num += (got - want) * (got - want); den += want * want;
            }
            // Relative to the norm, or to values of size 1 where relu leaves a few small ones.
            const double err = std::sqrt(num / std::max(den, (double)n * m));
            if (bad || err > kk.tol) { printf("FAIL %s n=%d m=%d k=%d e=%d err %g bad %d\n", kk.prec, n, m, k, e, err, bad); ++failures; }
        }
    }
    printf("%d failures\n", failures);
    return failures != 0;
}
