// Emulated checks of kernels/decoder.cu against a float64 loop: every precision; aligned
// widths (float4 loads) and odd ones (scalar loads, a head width of 5); one split and several
// of every product and of the attention's keys; batch 1, an odd batch and one over ROWS (two
// row groups); padded keys; two launches in a row (the counters reset themselves).
#include "emu.h"
#include "../../kernels/decoder.cu"
#include <random>
#include <vector>

static std::mt19937_64 rng(11);
static float uni(float a = 1.0f) { return std::uniform_real_distribution<float>(-a, a)(rng); }

struct Case {
    int c, heads, ff, layers, l_all, batch;
    int proj_chunk, ffn1_chunk, ffn2_chunk, keys_per_split;
    int proj_columns, ffn1_columns, ffn2_columns;
};

using D = std::vector<double>;

static D linear(const D& x, const float* w, const float* b, int out) {
    const int k = (int)x.size();
    D y(out);
    for (int n = 0; n < out; ++n) {
        double s = b[n];
        for (int i = 0; i < k; ++i) s += x[i] * w[(long)n * k + i];
        y[n] = s;
    }
    return y;
}

static D norm(const D& v, const float* g, const float* b, double eps) {
    const int c = (int)v.size();
    double mean = 0, var = 0;
    for (double x : v) mean += x;
    mean /= c;
    for (double x : v) var += (x - mean) * (x - mean);
    const double rstd = 1.0 / std::sqrt(var / c + eps);
    D y(c);
    for (int j = 0; j < c; ++j) y[j] = (v[j] - mean) * rstd * g[j] + b[j];
    return y;
}

static D add(const D& a, const D& b) {
    D y(a.size());
    for (size_t i = 0; i < a.size(); ++i) y[i] = a[i] + b[i];
    return y;
}

int main() {
    int failures = 0;
    const Case cases[] = {
        // one split of everything, 8 columns a block
        {32, 4, 64, 2, 70, 3, 32, 32, 64, 70, 8, 8, 8},
        // several splits, the last ones short; several columns a warp, the last block short
        {32, 4, 64, 2, 70, 3, 8, 12, 20, 16, 24, 16, 32},
        // hd 5, ff not a multiple of 4: scalar loads
        {20, 4, 30, 2, 37, 1, 8, 20, 7, 10, 8, 16, 24},
        // batch 9: two row groups
        {16, 2, 24, 1, 19, 9, 16, 8, 12, 8, 16, 8, 8},
    };
    const char* names[] = {"f32", "tf32", "bf16"};
    const double tols[] = {1e-5, 2e-3, 2e-2};
    for (const Case& k : cases) {
        const int c = k.c, ff = k.ff, b = k.batch, hd = c / k.heads, kv_row = 2 * k.layers * c;
        // Packed as DecoderWeights::upload packs: fields in decoder::Field order, each on 16 bytes.
        const long sizes[decoder::FIELDS] = {(long)c * c, c, (long)c * c, c, (long)c * c, c,
                                             (long)c * c, c, (long)ff * c, ff, (long)c * ff, c,
                                             c, c, c, c, c, c};
        long field[decoder::FIELDS], at = 0;
        for (int f = 0; f < decoder::FIELDS; ++f) {
            field[f] = at;
            at = (at + sizes[f] + 3) / 4 * 4;
        }
        const long stride = at;
        std::vector<float> wts(stride * k.layers + 2 * c);
        for (auto& v : wts) v = uni(0.3f);
        for (int j = 0; j < k.layers; ++j)  // LayerNorm gains near 1
            for (int f : {decoder::G_1, decoder::G_2, decoder::G_3})
                for (int i = 0; i < c; ++i) wts[j * stride + field[f] + i] += 1.0f;
        for (int i = 0; i < c; ++i) wts[stride * k.layers + i] += 1.0f;
        std::vector<float> mem((long)k.l_all * b * kv_row), qpos(b * c);
        for (auto& v : mem) v = uni();
        for (auto& v : qpos) v = uni();
        std::vector<unsigned char> pad(b * k.l_all, 0);
        for (int r = 0; r < b; ++r)
            for (int t = 0; t < k.l_all; ++t) pad[r * k.l_all + t] = (t * 7 + r) % 5 == 0;
        const float scale = 1.0f / std::sqrt((float)hd), eps = 1e-5f;

        // float64 reference.
        std::vector<double> want_out((long)k.layers * b * c), want_hs(b * c);
        auto W = [&](int j, int f) { return wts.data() + j * stride + field[f]; };
        for (int r = 0; r < b; ++r) {
            D t(c, 0.0), qp(qpos.begin() + r * c, qpos.begin() + (r + 1) * c);
            for (int j = 0; j < k.layers; ++j) {
                using namespace decoder;
                const D v = linear(t, W(j, W_V), W(j, B_V), c);
                const D t1 = norm(add(t, linear(v, W(j, W_SO), W(j, B_SO), c)), W(j, G_1), W(j, BETA_1), eps);
                D q = linear(add(t1, qp), W(j, W_Q), W(j, B_Q), c);
                for (double& x : q) x *= scale;
                D a(c);
                auto kv = [&](int t, int ch) { return (double)mem[((long)t * b + r) * kv_row + j * 2 * c + ch]; };
                for (int z = 0; z < k.heads; ++z) {
                    D s(k.l_all);
                    double m = -INFINITY;
                    for (int t = 0; t < k.l_all; ++t) {
                        double d = 0;
                        for (int i = 0; i < hd; ++i) d += q[z * hd + i] * kv(t, z * hd + i);
                        s[t] = pad[r * k.l_all + t] ? -INFINITY : d;
                        m = std::max(m, s[t]);
                    }
                    double l = 0;
                    for (double& x : s) l += (x = std::exp(x - m));
                    for (int i = 0; i < hd; ++i) {
                        double o = 0;
                        for (int t = 0; t < k.l_all; ++t) o += s[t] * kv(t, c + z * hd + i);
                        a[z * hd + i] = o / l;
                    }
                }
                const D t2 = norm(add(t1, linear(a, W(j, W_CO), W(j, B_CO), c)), W(j, G_2), W(j, BETA_2), eps);
                D h = linear(t2, W(j, W_1), W(j, B_1), ff);
                for (double& x : h) x = std::max(x, 0.0);
                t = norm(add(t2, linear(h, W(j, W_2), W(j, B_2), c)), W(j, G_3), W(j, BETA_3), eps);
                for (int i = 0; i < c; ++i) want_out[((long)j * b + r) * c + i] = t[i];
            }
            const float* g = wts.data() + stride * k.layers;
            const D y = norm(t, g, g + c, eps);
            for (int i = 0; i < c; ++i) want_hs[r * c + i] = y[i];
        }

        // The launch's plan, as DecoderPlan computes it from the chunks.
        auto cd = [](long a, long d) { return (a + d - 1) / d; };
        const long proj = cd(c, k.proj_columns) * cd(c, k.proj_chunk);
        const long attn = (long)b * k.heads * cd(k.l_all, k.keys_per_split);
        const long per_layer = 4 * proj + attn + cd(ff, k.ffn1_columns) * cd(c, k.ffn1_chunk) +
                               cd(c, k.ffn2_columns) * cd(ff, k.ffn2_chunk);
        const long blocks = k.layers * per_layer + 1;
        const long half = std::max({cd(c, k.proj_chunk) * b * c, cd(c, k.ffn1_chunk) * b * ff,
                                    cd(ff, k.ffn2_chunk) * b * c, attn * (hd + 2)});
        for (int prec = 0; prec < 3; ++prec) {
            std::vector<float> out((long)k.layers * b * c, NAN), hs(b * c, NAN);
            std::vector<float> residual(2 * b * c, NAN), work(2 * half, NAN);
            std::vector<unsigned> control(2, 0);
            DecoderArgs p{};
            p.weights = wts.data(); p.mem_kv = mem.data(); p.key_pad = pad.data(); p.qpos = qpos.data();
            p.layers_out = out.data(); p.hs = hs.data(); p.residual = residual.data();
            p.work = work.data(); p.control = control.data();
            p.layer_stride = stride; p.post_norm = stride * k.layers; p.work_half = half;
            for (int f = 0; f < decoder::FIELDS; ++f) p.field[f] = field[f];
            p.batch = b; p.c = c; p.ff = ff; p.heads = k.heads; p.layers = k.layers; p.l_all = k.l_all;
            p.proj_chunk = k.proj_chunk; p.ffn1_chunk = k.ffn1_chunk; p.ffn2_chunk = k.ffn2_chunk;
            p.keys_per_split = k.keys_per_split; p.scale = scale; p.eps = eps;
            p.proj_columns = k.proj_columns; p.ffn1_columns = k.ffn1_columns;
            p.ffn2_columns = k.ffn2_columns;
            std::vector<float> first;
            for (int launch = 0; launch < 2; ++launch) {
                emu::launch({(unsigned)blocks, 1, 1}, decoder::THREADS, nullptr, 0, [&] {
                    if (prec == 0) decoder_f32(p);
                    else if (prec == 1) decoder_tf32(p);
                    else decoder_bf16(p);
                });
                if (control[0] || control[1]) {
                    printf("FAIL counters %u %u after the launch\n", control[0], control[1]);
                    ++failures;
                }
                if (launch == 0) first = hs;
            }
            auto err = [](const std::vector<float>& got, const std::vector<double>& want) -> double {
                double num = 0, den = 0;
                for (size_t i = 0; i < got.size(); ++i) {
                    if (!std::isfinite(got[i])) return INFINITY;
                    num += (got[i] - want[i]) * (got[i] - want[i]);
                    den += want[i] * want[i];
                }
                return std::sqrt(num / den);
            };
            const double e_out = err(out, want_out), e_hs = err(hs, want_hs);
            const bool same = memcmp(first.data(), hs.data(), hs.size() * 4) == 0;
            const bool bad = !(e_out <= tols[prec] && e_hs <= tols[prec]) || !same;
            failures += bad;
            printf("%s c=%d heads=%d ff=%d layers=%d keys=%d batch=%d chunks %d/%d/%d/%d columns %d/%d/%d (%ld blocks): "
                   "layers %.2e, hs %.2e%s%s\n",
                   names[prec], c, k.heads, ff, k.layers, k.l_all, b, k.proj_chunk, k.ffn1_chunk,
                   k.ffn2_chunk, k.keys_per_split, k.proj_columns, k.ffn1_columns, k.ffn2_columns,
                   blocks, e_out, e_hs,
                   same ? "" : ", second launch differs", bad ? "  FAIL" : "");
        }
    }
    printf("decoder: %d failures\n", failures);
    return failures != 0;
}
