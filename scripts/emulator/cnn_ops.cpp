// Emulated checks of the CNN ops' kernels against float64 loops over their definitions:
// kernels/batch_norm.cu (the split reductions with their block sums through shared memory,
// finalize, the moments synchronised batch norm exchanges, the normalisation with and without the fused ReLU, the running update, the
// backward with and without the ReLU mask), kernels/avg_pool.cu (fixed windows counting their
// padding, adaptive ones, forward and gathered backward), kernels/dropout.cu (the mask of
// src/kernels/dropout/cpu.rs, recomputed here) and kernels/channel_copy.cu (the shuffle's
// transpose, accumulated; a filter bank to KRSC and back). f32 storage; the bf16 paths share the code through dtype.cuh.
// Batch norm's element-wise kernels run at every vector width that divides the channels (the
// launcher's `vec`, from 64-byte aligned buffers).
#include "emu.h"
#include <cmath>
#include <random>
#include <vector>
using std::fmax;
using std::fmaxf;
using std::sqrt;
#include "../../kernels/batch_norm.cu"
namespace pool {
#include "../../kernels/avg_pool.cu"
}
namespace drop {
#include "../../kernels/dropout.cu"
}
namespace copy2d {
#include "../../kernels/channel_copy.cu"
}
namespace ew {
#include "../../kernels/elementwise.cu"
}
static std::mt19937_64 rng(9);
static int failures = 0;

static float uniform() { return (float)((double)(rng() >> 11) / 9007199254740992.0) * 2.f - 1.f; }

static void expect_close(const char* what, const std::vector<float>& got,
                         const std::vector<double>& want, double tol) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    double e = den > 0 ? sqrt(num / den) : sqrt(num);
    if (!(e <= tol) && failures++ < 10) printf("FAIL %s: relative error %g\n", what, e);
}

// Splits as src/kernels/batch_norm.rs chooses them.
static void splits(int rows, int c, int* n, int* per) {
    int bx = (c + 31) / 32, most = std::max(1, (rows + 31) / 32);
    int want = std::min(std::max(1024 / bx, 1), most);
    *per = std::max(1, (rows + want - 1) / want);
    *n = (rows + *per - 1) / *per;
}

// The element-wise passes' blocks (NormShape::channel_grid): the channel groups times up to
// one row lane per row, for 2^18 threads.
static unsigned channel_blocks(int rows, int c, int vec) {
    long long groups = c / vec, lanes = std::min<long long>(std::max(1LL, (1LL << 18) / groups), rows);
    return (unsigned)std::min<long long>((groups * lanes + 255) / 256, 65535);
}

// 64-byte aligned storage, so every vector width's loads are aligned as on the GPU.
template <typename T>
struct Aligned {
    using value_type = T;
    Aligned() = default;
    template <typename U>
    Aligned(const Aligned<U>&) {}
    T* allocate(size_t n) { return static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64)); }
    void deallocate(T* p, size_t) { std::free(p); }
    bool operator==(const Aligned&) const { return true; }
    bool operator!=(const Aligned&) const { return false; }
};
using Floats = std::vector<float, Aligned<float>>;

static void expect_close(const char* what, const Floats& got, const std::vector<double>& want,
                         double tol) {
    expect_close(what, std::vector<float>(got.begin(), got.end()), want, tol);
}

// `eb` blocks of 256 run the element-wise passes: the launcher's grid, or one block (fewer
// threads than channel groups in the wide cases).
static void batch_norm_case(int rows, int c, int vec, unsigned eb) {
    Floats x(rows * c), gamma(c), beta(c), dy(rows * c);
    for (auto& v : x) v = 3.f + 2.f * uniform();
    for (auto& v : gamma) v = uniform();
    for (auto& v : beta) v = uniform();
    for (auto& v : dy) v = uniform();
    std::vector<double> mean(c, 0), var(c, 0);
    for (int r = 0; r < rows; ++r) for (int j = 0; j < c; ++j) mean[j] += x[r * c + j] / (double)rows;
    for (int r = 0; r < rows; ++r) for (int j = 0; j < c; ++j) {
        double d = x[r * c + j] - mean[j];
        var[j] += d * d / rows;
    }
    int ns, per;
    splits(rows, c, &ns, &per);
    Floats work(ns * c * 2 + c, NAN), m(c, NAN), is(c, NAN), contrib(2 * c, NAN);
    dim3 grid{(unsigned)((c + 31) / 32), (unsigned)ns, 1};
    emu::launch(grid, dim3{32, 8, 1}, nullptr, 0,
                [&] { batch_norm_stats_f32(x.data(), work.data(), rows, c, per); });
    unsigned cb = (unsigned)((c + 255) / 256);
    unsigned fb = (unsigned)((c + 7) / 8);  // the finalize kernels: a warp a channel
    emu::launch({fb, 1, 1}, 256, nullptr, 0, [&] {
        batch_norm_finalize_f32(work.data(), ns, rows, c, m.data(), is.data(), contrib.data(), 0.5f);
    });
    std::vector<double> want_is(c), want_contrib(2 * c);
    for (int j = 0; j < c; ++j) {
        want_is[j] = 1.0 / sqrt(var[j] + 1e-5);
        want_contrib[j] = 0.5 * mean[j];
        want_contrib[c + j] = 0.5 * var[j] * rows / (rows - 1);
    }
    char what[128];
    snprintf(what, sizeof what, "batch_norm %dx%d vec %d blocks %u mean", rows, c, vec, eb);
    expect_close(what, m, mean, 1e-6);
    // Synchronised batch norm's path: the moments, read back as one split with shift 0.
    Floats moments(3 * c, NAN), m1(c, NAN), is1(c, NAN);
    emu::launch({fb, 1, 1}, 256, nullptr, 0,
                [&] { batch_norm_moments_f32(work.data(), ns, rows, c, moments.data()); });
    emu::launch({fb, 1, 1}, 256, nullptr, 0, [&] {
        batch_norm_finalize_f32(moments.data(), 1, rows, c, m1.data(), is1.data(), nullptr, 0.f);
    });
    snprintf(what, sizeof what, "batch_norm %dx%d vec %d blocks %u mean from moments", rows, c, vec, eb);
    expect_close(what, m1, mean, 1e-6);
    snprintf(what, sizeof what, "batch_norm %dx%d vec %d blocks %u invstd from moments", rows, c, vec, eb);
    expect_close(what, is1, want_is, 1e-5);
    snprintf(what, sizeof what, "batch_norm %dx%d vec %d blocks %u invstd", rows, c, vec, eb);
    expect_close(what, is, want_is, 1e-5);
    snprintf(what, sizeof what, "batch_norm %dx%d vec %d blocks %u contribution", rows, c, vec, eb);
    expect_close(what, contrib, want_contrib, 1e-5);
    long long n = (long long)rows * c;
    for (int relu = 0; relu < 2; ++relu) {
        Floats y(n, NAN), dx(n, NAN), dg(c, NAN), db(c, NAN);
        emu::launch({eb, 1, 1}, 256, nullptr, 0, [&] {
            batch_norm_apply_f32(x.data(), y.data(), m.data(), is.data(), gamma.data(), beta.data(), n, c, relu,
                                 vec);
        });
        std::vector<double> want_y(n), g(n);
        for (long long i = 0; i < n; ++i) {
            int j = (int)(i % c);
            double v = gamma[j] * (x[i] - mean[j]) * want_is[j] + beta[j];
            want_y[i] = relu ? fmax(v, 0.0) : v;
            g[i] = relu && !(y[i] > 0.f) ? 0.0 : dy[i];
        }
        snprintf(what, sizeof what, "batch_norm %dx%d vec %d blocks %u forward relu=%d", rows, c, vec, eb, relu);
        expect_close(what, y, want_y, 1e-5);
        const float* mask = relu ? y.data() : nullptr;
        emu::launch(grid, dim3{32, 8, 1}, nullptr, 0, [&] {
            batch_norm_backward_reduce_f32(x.data(), dy.data(), mask, m.data(), is.data(), work.data(), rows, c, per);
        });
        emu::launch({fb, 1, 1}, 256, nullptr, 0,
                    [&] { batch_norm_backward_finalize_f32(work.data(), ns, c, dg.data(), db.data()); });
        emu::launch({eb, 1, 1}, 256, nullptr, 0, [&] {
            batch_norm_backward_apply_f32(x.data(), dy.data(), mask, dx.data(), m.data(), is.data(),
                                          gamma.data(), dg.data(), db.data(), rows, c, rows, vec);
        });
        std::vector<double> wdb(c, 0), wdg(c, 0), wdx(n);
        for (long long i = 0; i < n; ++i) {
            int j = (int)(i % c);
            wdb[j] += g[i];
            wdg[j] += g[i] * (x[i] - mean[j]) * want_is[j];
        }
        for (long long i = 0; i < n; ++i) {
            int j = (int)(i % c);
            double xhat = (x[i] - mean[j]) * want_is[j];
            wdx[i] = gamma[j] * want_is[j] * (g[i] - wdb[j] / rows - xhat * wdg[j] / rows);
        }
        snprintf(what, sizeof what, "batch_norm %dx%d vec %d blocks %u dgamma relu=%d", rows, c, vec, eb, relu);
        expect_close(what, dg, wdg, 1e-5);
        snprintf(what, sizeof what, "batch_norm %dx%d vec %d blocks %u dbeta relu=%d", rows, c, vec, eb, relu);
        expect_close(what, db, wdb, 1e-5);
        snprintf(what, sizeof what, "batch_norm %dx%d vec %d blocks %u dx relu=%d", rows, c, vec, eb, relu);
        expect_close(what, dx, wdx, 1e-4);
    }
    Floats running(2 * c);
    std::vector<double> want_running(2 * c);
    for (int i = 0; i < 2 * c; ++i) {
        running[i] = uniform();
        want_running[i] = 0.9 * running[i] + 0.1 * contrib[i];
    }
    emu::launch({cb, 1, 1}, 256, nullptr, 0,
                [&] { batch_norm_running_f32(running.data(), contrib.data(), 2 * c, 0.1f); });
    snprintf(what, sizeof what, "batch_norm %dx%d vec %d blocks %u running", rows, c, vec, eb);
    expect_close(what, running, want_running, 1e-6);
}

// Per axis: the window [a, b) of output j and its divisor (the CPU reference's definitions).
static void axis(int j, int size, int out, int k, int s, int p, bool adaptive, int* a, int* b, int* div) {
    if (adaptive) {
        *a = j * size / out;
        *b = ((j + 1) * size + out - 1) / out;
        *div = *b - *a;
    } else {
        int st = j * s - p, en = std::min(st + k, size + p);
        *div = en - st;
        *a = std::max(st, 0);
        *b = std::min(en, size);
    }
}

static void avg_pool_case(int n, int h, int w, int c, int oh, int ow, int k, int s, int p, bool adaptive) {
    long long in = (long long)n * h * w * c, out = (long long)n * oh * ow * c;
    std::vector<float> x(in), y(out, NAN), dy(out), dx(in, NAN);
    for (auto& v : x) v = uniform();
    for (auto& v : dy) v = uniform();
    std::vector<double> wy(out, 0), wdx(in, 0);
    for (int b = 0; b < n; ++b) for (int oy = 0; oy < oh; ++oy) for (int ox = 0; ox < ow; ++ox) {
        int ya, yb, dvy, xa, xb, dvx;
        axis(oy, h, oh, k, s, p, adaptive, &ya, &yb, &dvy);
        axis(ox, w, ow, k, s, p, adaptive, &xa, &xb, &dvx);
        for (int ch = 0; ch < c; ++ch) {
            long long o = (((long long)b * oh + oy) * ow + ox) * c + ch;
            for (int iy = ya; iy < yb; ++iy) for (int ix = xa; ix < xb; ++ix) {
                long long i = (((long long)b * h + iy) * w + ix) * c + ch;
                wy[o] += x[i] / (double)(dvy * dvx);
                wdx[i] += dy[o] / (double)(dvy * dvx);
            }
        }
    }
    emu::launch({(unsigned)((out + 255) / 256), 1, 1}, 256, nullptr, 0,
                [&] { pool::avg_pool_f32(x.data(), y.data(), n, h, w, c, oh, ow, k, s, p, adaptive); });
    emu::launch({(unsigned)((in + 255) / 256), 1, 1}, 256, nullptr, 0, [&] {
        pool::avg_pool_backward_f32(dy.data(), dx.data(), n, h, w, c, oh, ow, k, s, p, adaptive);
    });
    char what[96];
    snprintf(what, sizeof what, "avg_pool %dx%dx%dx%d -> %dx%d adaptive=%d", n, h, w, c, oh, ow, adaptive);
    expect_close(what, y, wy, 1e-6);
    snprintf(what, sizeof what, "avg_pool backward %dx%dx%dx%d -> %dx%d adaptive=%d", n, h, w, c, oh, ow, adaptive);
    expect_close(what, dx, wdx, 1e-6);
}

// src/kernels/dropout/cpu.rs's keep().
static bool keep(unsigned long long seed, long long i, float p) {
    unsigned long long z = seed ^ ((unsigned long long)i * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) / (float)(1ull << 24) >= p;
}

int main() {
    int bn[][2] = {{2 * 17 * 19, 24}, {3 * 5 * 7, 116}, {9, 5}, {2000, 40}, {18, 70}, {300, 512}};
    for (auto& b : bn)
        for (int vec : {1, 2, 4, 8})
            if (b[1] % vec == 0) {
                batch_norm_case(b[0], b[1], vec, channel_blocks(b[0], b[1], vec));
                batch_norm_case(b[0], b[1], vec, 1);
            }
    avg_pool_case(2, 9, 7, 5, 4, 3, 2, 2, 0, false);
    avg_pool_case(1, 7, 6, 3, 4, 3, 3, 2, 1, false);
    avg_pool_case(2, 7, 7, 6, 1, 1, 0, 0, 0, true);
    avg_pool_case(1, 13, 13, 3, 6, 6, 0, 0, 0, true);
    avg_pool_case(1, 5, 1, 2, 3, 6, 0, 0, 0, true);

    long long n = 3001;
    std::vector<float> x(n), y(n);
    for (auto& v : x) v = uniform();
    float p = 0.3f, scale = 1.f / (1.f - p);
    unsigned long long seed = 0xfffffffffffffff1ull;
    emu::launch({(unsigned)((n + 255) / 256), 1, 1}, 256, nullptr, 0,
                [&] { drop::dropout_f32(x.data(), y.data(), n, p, scale, (long long)seed); });
    int kept = 0;
    for (long long i = 0; i < n; ++i) {
        float want = keep(seed, i, p) ? x[i] * scale : 0.f;
        kept += want != 0.f;
        if (y[i] != want && failures++ < 10) printf("FAIL dropout at %lld: %g want %g\n", i, y[i], want);
    }
    if ((kept < 1900 || kept > 2300) && failures++ < 10) printf("FAIL dropout kept %d of %lld\n", kept, n);

    // The shuffle of 2 x 5 channels over 7 rows, added to what is there.
    int rows = 7, g = 2, per = 5, cc = g * per;
    std::vector<float> a(rows * cc), out(rows * cc);
    for (auto& v : a) v = uniform();
    for (auto& v : out) v = uniform();
    std::vector<float> before = out;
    emu::launch({1, 1, 1}, 256, nullptr, 0,
                [&] { copy2d::channel_copy_f32(a.data(), out.data(), rows, cc, 0, cc, 0, g, per, 1); });
    for (int r = 0; r < rows; ++r) for (int o = 0; o < cc; ++o) {
        float want = before[r * cc + o] + a[r * cc + (o % g) * per + o / g];
        if (out[r * cc + o] != want && failures++ < 10)
            printf("FAIL channel_copy shuffle at %d,%d: %g want %g\n", r, o, out[r * cc + o], want);
    }
    // A filter bank (out 5, in 7, 3x3) to KRSC and back, as the CNN walker stages filters:
    // transpose(out, in, kh kw), then transpose(out, kh kw, in) restores every value.
    {
        const int k = 5, c = 7, rs = 9;
        Floats w(k * c * rs), krsc(k * c * rs, NAN), back(k * c * rs, NAN);
        for (auto& v : w) v = uniform();
        emu::launch({2, 1, 1}, 64, nullptr, 0,
                    [&] { copy2d::channel_copy_f32(w.data(), krsc.data(), k, c * rs, 0, c * rs, 0, c, rs, 0); });
        emu::launch({2, 1, 1}, 64, nullptr, 0,
                    [&] { copy2d::channel_copy_f32(krsc.data(), back.data(), k, c * rs, 0, c * rs, 0, rs, c, 0); });
        for (int o = 0; o < k; ++o) for (int i = 0; i < c; ++i) for (int p = 0; p < rs; ++p) {
            const float want = w[(o * c + i) * rs + p];
            if ((krsc[(o * rs + p) * c + i] != want || back[(o * c + i) * rs + p] != want) && failures++ < 10)
                printf("FAIL channel_copy filter %d,%d,%d\n", o, i, p);
        }
    }
    // The vectorised element-wise kernels at every width: add, add+ReLU, the ReLU's backward.
    for (int vec : {1, 2, 4, 8}) {
        long long len = 8 * 301;
        Floats a(len), b(len), y(len, NAN), acc(len), d(len);
        for (auto& v : a) v = uniform();
        for (auto& v : b) v = uniform();
        for (auto& v : d) v = uniform();
        acc = a;
        unsigned blocks = (unsigned)((len / vec + 255) / 256);
        emu::launch({blocks, 1, 1}, 256, nullptr, 0, [&] { ew::add_relu_f32(a.data(), b.data(), y.data(), len, vec); });
        emu::launch({blocks, 1, 1}, 256, nullptr, 0, [&] { ew::add_f32(acc.data(), b.data(), len, vec); });
        Floats dd = d;
        emu::launch({blocks, 1, 1}, 256, nullptr, 0, [&] { ew::relu_backward_f32(dd.data(), y.data(), len, vec); });
        for (long long i = 0; i < len; ++i) {
            const float sum = a[i] + b[i], relu = sum > 0.f ? sum : 0.f;
            if ((y[i] != relu || acc[i] != sum || dd[i] != (relu > 0.f ? d[i] : 0.f)) && failures++ < 10)
                printf("FAIL elementwise vec %d at %lld\n", vec, i);
        }
    }
    printf("cnn_ops: %d failures\n", failures);
    return failures != 0;
}
