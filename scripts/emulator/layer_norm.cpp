// Emulated checks of kernels/layer_norm.cu's forwards against a float64 loop: every width
// kernel (add_layer_norm_f32_cW and layer_norm_f32_cW, W = 256, 512, 1024) on rows of widths
// on both sides of each limit, with three parts, bias, residual and the fused `+ add`, and the
// training forward's xhat and rstd; every kernel that holds a row gives the same bits (the
// launcher may pick any of them), and the training forward's y is the inference forward's.
#include "emu.h"
#include "../../kernels/layer_norm.cu"
#include <random>
static std::mt19937_64 rng(9);
int failures = 0;

static float uniform() { return (float)((double)(rng() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

using Kernel = void (*)(LayerNormArgs);
struct Width { int limit; Kernel inference, training; };
static const Width widths[] = {{256, add_layer_norm_f32_c256, layer_norm_f32_c256},
                               {512, add_layer_norm_f32_c512, layer_norm_f32_c512},
                               {1024, add_layer_norm_f32_c1024, layer_norm_f32_c1024}};

static void fail(const char* what, int c, int limit, size_t at, double got, double want) {
    if (failures++ < 8) printf("FAIL %s c %d (kernel c%d) at %zu: %.9g want %.9g\n", what, c, limit, at, got, want);
}

int main() {
    const int rows = 37, parts = 3;  // 37: the last block's warps partly idle
    const float eps = 1e-5f;
    for (int c : {100, 256, 257, 512, 513, 1024}) {
        const size_t n = (size_t)rows * c;
        std::vector<float> x(parts * n), gamma(c), beta(c), bias(c), residual(n), add(n);
        for (auto& v : x) v = 3.0f * uniform() + 0.5f;
        for (auto* a : {&gamma, &beta, &bias, &residual, &add})
            for (auto& v : *a) v = uniform();
        // The reference: v = parts + bias + residual, two-pass statistics, in f64.
        std::vector<double> want_y(n), want_xhat(n), want_rstd(rows);
        for (int r = 0; r < rows; ++r) {
            std::vector<double> v(c);
            double mean = 0, var = 0;
            for (int j = 0; j < c; ++j) {
                double s = 0;
                for (int p = 0; p < parts; ++p) s += x[p * n + (size_t)r * c + j];
                v[j] = s + bias[j] + residual[(size_t)r * c + j];
                mean += v[j];
            }
            mean /= c;
            for (int j = 0; j < c; ++j) var += (v[j] - mean) * (v[j] - mean);
            const double rstd = 1.0 / std::sqrt(var / c + eps);
            want_rstd[r] = rstd;
            for (int j = 0; j < c; ++j) {
                want_xhat[(size_t)r * c + j] = (v[j] - mean) * rstd;
                want_y[(size_t)r * c + j] = want_xhat[(size_t)r * c + j] * gamma[j] + beta[j];
            }
        }
        std::vector<float> first_y;  // the first kernel's y: every other must match it bit for bit
        for (const Width& w : widths) {
            if (c > w.limit) continue;
            std::vector<float> y(n, NAN), y_plus(n, NAN), ty(n, NAN), xhat(n, NAN), rstd(rows, NAN);
            LayerNormArgs p{};
            p.parts = x.data(); p.bias = bias.data(); p.residual = residual.data();
            p.gamma = gamma.data(); p.beta = beta.data(); p.y = y.data();
            p.add = add.data(); p.y_plus = y_plus.data();
            p.rows = rows; p.part_stride = (long long)n; p.c = c; p.n_parts = parts; p.eps = eps;
            const unsigned blocks = (rows + 7) / 8;  // the launcher's: a warp a row, 8 rows a block
            emu::launch({blocks, 1, 1}, 256, nullptr, 0, [&] { w.inference(p); });
            LayerNormArgs t = p;
            t.add = nullptr; t.y_plus = nullptr; t.y = ty.data(); t.xhat = xhat.data(); t.rstd = rstd.data();
            emu::launch({blocks, 1, 1}, 256, nullptr, 0, [&] { w.training(t); });
            for (size_t i = 0; i < n; ++i) {
                const double tol = 1e-5 * (1.0 + std::fabs(want_y[i]));
                if (!(std::fabs(y[i] - want_y[i]) <= tol)) fail("y", c, w.limit, i, y[i], want_y[i]);
                if (!(std::fabs(y_plus[i] - (want_y[i] + add[i])) <= tol + 1e-6))
                    fail("y + add", c, w.limit, i, y_plus[i], want_y[i] + add[i]);
                if (!(std::fabs(xhat[i] - want_xhat[i]) <= 1e-5 * (1.0 + std::fabs(want_xhat[i]))))
                    fail("xhat", c, w.limit, i, xhat[i], want_xhat[i]);
                if (ty[i] != y[i]) fail("training y vs inference y", c, w.limit, i, ty[i], y[i]);
                if (!first_y.empty() && y[i] != first_y[i]) fail("y vs the narrowest kernel's", c, w.limit, i, y[i], first_y[i]);
            }
            for (int r = 0; r < rows; ++r)
                if (!(std::fabs(rstd[r] - want_rstd[r]) <= 1e-5 * want_rstd[r])) fail("rstd", c, w.limit, r, rstd[r], want_rstd[r]);
            if (first_y.empty()) first_y = y;
        }
    }
    printf("layer_norm: %d failures\n", failures);
    return failures != 0;
}
