// Emulated checks of kernels/linear.cu against a float64 loop: the few-rows kernels (default)
// or, with -DTILES, the 64x64 tile kernels (both with -DEMU_STATIC_SHARED: one __shared__
// variable per block); every epilogue and precision, odd and aligned k, partial tiles. The
// few-rows split-k LayerNorm runs twice on one counter (it must come back to zero), in each
// of its row widths.
#include "emu.h"
#include "../../kernels/linear.cu"
#include <random>
#include <string>
static std::mt19937_64 rng(3);
static float uni() { return std::uniform_real_distribution<float>(-1, 1)(rng); }
int failures = 0;
using Fn = void (*)(LinearArgs);
using NormFn = void (*)(LinearArgs, LayerNormArgs, unsigned*);
// The split-k LayerNorm's width variants (rows of at most 256, 512, 1024): the launcher's pick.
struct Norms { NormFn c256, c512, c1024; };
static NormFn pick(const Norms& n, int m) { return m <= 256 ? n.c256 : m <= 512 ? n.c512 : n.c1024; }
struct K { const char* prec; Fn bias, relu, split; Norms norm; double tol; };
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
// The split-k LayerNorm runs on few rows only.
#define NORMS(p) {nullptr, nullptr, nullptr}
#define NS {70, 131}
#define GRID(m, n, s) {(unsigned)((m + 63) / 64), (unsigned)((n + 63) / 64), (unsigned)s}
#define MS {13, 97}
#define KS {5, 45, 48, 300}
#else
#define NORMS(p) {linear_rows_split_k_norm_c256_##p, linear_rows_split_k_norm_c512_##p, linear_rows_split_k_norm_c1024_##p}
#define NS {1, 3, 8}
#define GRID(m, n, s) {(unsigned)((m + 7) / 8), 1, (unsigned)s}
// 300 and 600: rows for the split-k LayerNorm's 512 and 1024 variants.
#define MS {1, 13, 70, 300, 600}
#define KS {5, 45, 48, 300}
#endif
int main() {
    K ks[] = {{"f32", linear_rows_bias_f32, linear_rows_bias_relu_f32, linear_rows_split_k_f32, NORMS(f32), 1e-5},
              {"tf32", linear_rows_bias_tf32, linear_rows_bias_relu_tf32, linear_rows_split_k_tf32, NORMS(tf32), 2e-3},
              {"bf16", linear_rows_bias_bf16, linear_rows_bias_relu_bf16, linear_rows_split_k_bf16, NORMS(bf16), 1e-2}};
    for (auto& kk : ks)
    for (int n : NS)
    for (int m : MS)
    for (int k : KS) {
        std::vector<float> x(n * k), w(m * k), b(m);
        for (auto& v : x) v = uni(); for (auto& v : w) v = uni(); for (auto& v : b) v = uni();
        std::vector<double> ref(n * m);
        for (int r = 0; r < n; ++r) for (int c = 0; c < m; ++c) { double s = 0; for (int i = 0; i < k; ++i) s += (double)x[r*k+i]*w[c*k+i]; ref[r*m+c] = s; }
        const NormFn norm = pick(kk.norm, m);
        for (int e = 0; e < (norm ? 4 : 3); ++e) {
            const int splits = e >= 2 ? (k >= 48 ? 3 : 1) : 1;
            const long long chunk = ((k + splits - 1) / splits + 31) / 32 * 32;
            std::vector<float> out((size_t)splits * n * m, NAN);
            LinearArgs a{};
            a.x = x.data(); a.weight = w.data(); a.bias = b.data(); a.out = out.data();
            a.n = n; a.m = m; a.k = k; a.k_chunk = chunk; a.scale = 0.5f;
            Fn f = e == 0 ? kk.bias : e == 1 ? kk.relu : kk.split;
            LayerNormArgs ln{};
            std::vector<float> res(n * m), gamma(m), beta(m), add(n * m), y(n * m, NAN), yp(n * m, NAN);
            std::vector<unsigned> arrived(1, 0);
            if (e == 3) {
                for (auto& v : res) v = uni(); for (auto& v : gamma) v = uni(); for (auto& v : beta) v = uni(); for (auto& v : add) v = uni();
                ln.parts = out.data(); ln.bias = b.data(); ln.residual = res.data(); ln.gamma = gamma.data(); ln.beta = beta.data();
                ln.y = y.data(); ln.add = add.data(); ln.y_plus = yp.data();
                ln.rows = n; ln.part_stride = (long long)n * m; ln.c = m; ln.n_parts = splits; ln.eps = 1e-5f;
            }
            for (int launch = 0; launch < (e == 3 ? 2 : 1); ++launch)
                emu::launch(GRID(m, n, splits), 256, nullptr, 0, [&] {
                    if (e == 3) norm(a, ln, arrived.data()); else f(a);
                });
            for (unsigned v : arrived) if (v != 0) { printf("FAIL %s n=%d m=%d k=%d: counter %u left\n", kk.prec, n, m, k, v); ++failures; }
            // The LayerNorm's reference rows: (v - mean) / sqrt(var + eps) * gamma + beta.
            std::vector<double> normed(n * m);
            for (int r = 0; e == 3 && r < n; ++r) {
                double mean = 0, var = 0;
                for (int c = 0; c < m; ++c) mean += ref[r*m+c] + b[c] + res[r*m+c];
                mean /= m;
                for (int c = 0; c < m; ++c) { double d = ref[r*m+c] + b[c] + res[r*m+c] - mean; var += d * d; }
                const double inv = 1 / std::sqrt(var / m + 1e-5);
                for (int c = 0; c < m; ++c) normed[r*m+c] = (ref[r*m+c] + b[c] + res[r*m+c] - mean) * inv * gamma[c] + beta[c];
            }
            double num = 0, den = 0; bool bad = false;
            for (int r = 0; r < n; ++r) for (int c = 0; c < m; ++c) {
                if (e == 3) {
                    const double dy = y[r*m+c] - normed[r*m+c], dp = yp[r*m+c] - (normed[r*m+c] + add[r*m+c]);
                    if (!std::isfinite(y[r*m+c]) || !std::isfinite(yp[r*m+c])) bad = true;
                    num += dy * dy + dp * dp; den += 2 * normed[r*m+c] * normed[r*m+c];
                    continue;
                }
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
