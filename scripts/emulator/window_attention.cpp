// Emulated checks of kernels/window_attention.cuh against a float64 reference.
#include "emu.h"
namespace attention {
alignas(16) float smem[1 << 16];
}
#include "../../kernels/window_attention.cu"

#include <random>
#include <string>

using KernelFn = void (*)(AttentionArgs);
using FusedFn = void (*)(AttentionHeads);

struct Variant {
    int hdp;
    const char* prec;
    KernelFn one;
    FusedFn fused;
};
#define V(H, P) {H, #P, window_attention_hd##H##_##P, window_attention_heads_hd##H##_##P}
static const Variant VARIANTS[] = {V(16, f32),  V(16, tf32),  V(16, bf16),  V(32, f32),
                                   V(32, tf32), V(32, bf16),  V(64, f32),   V(64, tf32),
                                   V(64, bf16), V(128, f32),  V(128, tf32), V(128, bf16)};

static const Variant& variant(int hd, const std::string& prec) {
    int hdp = hd <= 16 ? 16 : hd <= 32 ? 32 : hd <= 64 ? 64 : 128;
    for (auto& v : VARIANTS)
        if (v.hdp == hdp && prec == v.prec) return v;
    abort();
}

static std::mt19937_64 rng(7);
static float uni() { return std::uniform_real_distribution<float>(-1, 1)(rng); }
static std::vector<float> rnd(size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = uni();
    return v;
}

struct Case {
    int w, hd, n_queries, n_keys, batch, heads;
    long long head_stride, q_batch, q_slot, kv_batch, kv_slot;
    std::vector<float> q, k, v, bias, sr;
    bool has_bias = false;
    std::vector<unsigned char> key_pad;
    std::vector<unsigned> slot_token;
    bool has_slot_token = false;
    int out_row, out_channel;
    int tokens() const { return has_slot_token ? n_keys : n_queries; }
};

// `windows` query windows against `key_windows` key windows (as many when negative).
static Case window_case(int w, int hd, int windows, int batch, int key_windows = -1) {
    Case c{};
    const int ww = w * w, n = windows * ww, nk = (key_windows < 0 ? windows : key_windows) * ww;
    c.w = w, c.hd = hd, c.n_queries = n, c.n_keys = nk, c.batch = batch, c.heads = 1;
    c.head_stride = 0, c.q_batch = (long long)n * hd, c.q_slot = hd;
    c.kv_batch = (long long)nk * hd, c.kv_slot = hd;
    c.q = rnd((size_t)batch * n * hd), c.k = rnd((size_t)batch * nk * hd);
    c.v = rnd((size_t)batch * nk * hd);
    c.has_bias = w <= 4;
    if (c.has_bias) c.bias = rnd((size_t)windows * nk);
    c.sr = rnd(ww);
    c.key_pad.assign((size_t)batch * nk, 0);
    for (int b = 0; b < batch; ++b)
        for (int l = 1; l < nk / ww; ++l) {
            const unsigned char pad = std::uniform_real_distribution<float>(0, 1)(rng) < 0.3;
            for (int i = 0; i < ww; ++i) c.key_pad[(size_t)b * nk + l * ww + i] = pad;
        }
    // Slots to distinct tokens (a shuffled subset of the key tokens), where there are enough.
    c.has_slot_token = n <= nk;
    if (c.has_slot_token) {
        c.slot_token.resize(nk);
        for (int i = 0; i < nk; ++i) c.slot_token[i] = i;
        std::shuffle(c.slot_token.begin(), c.slot_token.end(), rng);
        c.slot_token.resize(n);
    }
    c.out_row = hd + 3, c.out_channel = 2;
    return c;
}

// Keys [from, to) of every batch item masked: whole chunks, and splits, without a live key.
static Case masked_range(Case c, int from, int to) {
    for (int b = 0; b < c.batch; ++b)
        for (int i = from; i < to; ++i) c.key_pad[(size_t)b * c.n_keys + i] = 1;
    return c;
}

// The decoder's cross attention: one query, keys are (tokens, batch, row) rows, heads hd apart.
static Case one_query_case(int heads, int hd, int tokens, int batch) {
    Case c{};
    const int ch = heads * hd, row = 2 * ch + 4;
    c.w = 1, c.hd = hd, c.n_queries = 1, c.n_keys = tokens, c.batch = batch, c.heads = heads;
    c.head_stride = hd, c.q_batch = ch, c.q_slot = 0, c.kv_batch = row, c.kv_slot = (long long)batch * row;
    c.q = rnd((size_t)batch * ch);
    auto kv = rnd((size_t)tokens * batch * row);
    c.k = kv;
    c.v.assign(kv.begin() + ch, kv.end());
    c.sr = {0.0f};
    c.key_pad.resize((size_t)batch * tokens);
    for (auto& p : c.key_pad) p = std::uniform_real_distribution<float>(0, 1)(rng) < 0.4;
    for (int b = 0; b < batch; ++b) c.key_pad[(size_t)b * tokens] = 0;
    c.out_row = ch, c.out_channel = 0;
    return c;
}

// An operand as the precision's core reads it: tf32 and bf16 round q, k and v (and the
// probabilities, which the reference leaves exact) before their products.
static float operand(float x, const std::string& prec) {
    if (prec == "tf32") return emu::bits_f(to_tf32(x));
    if (prec == "bf16") return bf16_lo(to_bf16x2(x, 0.0f));
    return x;
}

// (out, head_out) as the kernel should write them, NaN where untouched, with the operands
// rounded as `prec` rounds them.
static void expected(const Case& c, const std::string& prec, std::vector<double>& out,
                     std::vector<double>& head_out) {
    const auto rd = [&](float x) { return (double)operand(x, prec); };
    const int w = c.w, ww = w * w, hd = c.hd;
    out.assign((size_t)c.tokens() * c.batch * c.out_row, NAN);
    head_out.assign((size_t)c.batch * c.n_queries * hd, NAN);
    auto at = [&](long long bs, long long ss, int b, int slot, int z) {
        return b * bs + slot * ss + z * c.head_stride;
    };
    std::vector<double> scores(c.n_keys);
    for (int z = 0; z < c.heads; ++z)
        for (int b = 0; b < c.batch; ++b)
            for (int i = 0; i < c.n_queries / ww; ++i) {
                for (int col = 0; col < c.n_keys; ++col) {
                    const int l = col / ww, a = (col % ww) / w, e = col % w;
                    double dot = 0;
                    for (int pos = 0; pos < ww; ++pos) {
                        const int r = pos / w, cc = pos % w;
                        const int src = ((r + w - a) % w) * w + (cc + w - e) % w;
                        const long long qo = at(c.q_batch, c.q_slot, b, i * ww + pos, z);
                        const long long ko = at(c.kv_batch, c.kv_slot, b, l * ww + src, z);
                        for (int ch = 0; ch < hd; ++ch) dot += rd(c.q[qo + ch]) * rd(c.k[ko + ch]);
                    }
                    if (w > 1) dot = (dot + c.sr[col % ww]) / ww;
                    if (c.key_pad[(size_t)b * c.n_keys + col]) dot = -INFINITY;
                    if (c.has_bias) dot += c.bias[(size_t)i * c.n_keys + col];
                    scores[col] = dot;
                }
                double mx = -INFINITY, sum = 0;
                for (double s : scores) mx = std::max(mx, s);
                for (double s : scores) sum += std::exp(s - mx);
                for (int pos = 0; pos < ww; ++pos) {
                    const int r = pos / w, cc = pos % w;
                    for (int ch = 0; ch < hd; ++ch) {
                        double o = 0;
                        for (int col = 0; col < c.n_keys; ++col) {
                            const int l = col / ww, a = (col % ww) / w, e = col % w;
                            const int src = ((r + w - a) % w) * w + (cc + w - e) % w;
                            const long long vo = at(c.kv_batch, c.kv_slot, b, l * ww + src, z);
                            o += std::exp(scores[col] - mx) / sum * rd(c.v[vo + ch]);
                        }
                        const int slot = i * ww + pos;
                        const int token = c.has_slot_token ? c.slot_token[slot] : slot;
                        out[((size_t)token * c.batch + b) * c.out_row + c.out_channel + z * hd + ch] = o;
                        if (c.heads == 1) head_out[((size_t)b * c.n_queries + slot) * hd + ch] = o;
                    }
                }
            }
}

struct Run {
    std::vector<float> out, head_out, partial;
    std::vector<unsigned> arrived;
    AttentionArgs args;
    int blocks;  // along x: tiles x heads x splits (fused) or tiles x splits
    int tiles, splits;
};

static void prepare(const Case& c, int splits_wanted, bool with_head_out, Run& r) {
    const int tiles = (c.n_queries + 63) / 64, n_chunks = (c.n_keys + 63) / 64;
    const int cps = (n_chunks + splits_wanted - 1) / splits_wanted;
    const int splits = (n_chunks + cps - 1) / cps;
    const long long units = (long long)c.batch * c.heads * tiles;
    r.out.assign((size_t)c.tokens() * c.batch * c.out_row, NAN);
    r.head_out.assign((size_t)c.batch * c.n_queries * c.hd, NAN);
    r.partial.assign(splits > 1 ? splits * units * 64 * (c.hd + 2) : 0, NAN);
    r.arrived.assign(splits > 1 ? units : 0, 0);
    AttentionArgs& a = r.args;
    a = AttentionArgs{};
    a.q = c.q.data(), a.k = c.k.data(), a.v = c.v.data();
    a.bias = c.has_bias ? c.bias.data() : nullptr;
    a.key_pad = c.key_pad.data(), a.sr = c.sr.data();
    a.slot_token = c.has_slot_token ? c.slot_token.data() : nullptr;
    a.out = r.out.data(), a.head_out = with_head_out ? r.head_out.data() : nullptr;
    a.partial = splits > 1 ? r.partial.data() : nullptr;
    a.arrived = splits > 1 ? r.arrived.data() : nullptr;
    a.q_batch_stride = c.q_batch, a.q_slot_stride = c.q_slot;
    a.kv_batch_stride = c.kv_batch, a.kv_slot_stride = c.kv_slot, a.head_stride = c.head_stride;
    a.w = c.w, a.hd = c.hd, a.n_queries = c.n_queries, a.n_keys = c.n_keys, a.batch = c.batch;
    a.heads = c.heads, a.out_row = c.out_row, a.out_channel = c.out_channel;
    a.splits = splits, a.chunks_per_split = cps;
    r.tiles = tiles, r.splits = splits;
    r.blocks = tiles * c.heads * splits;
}

static int failures = 0;

// Relative RMS error allowed: what the rounding of the probabilities leaves.
static double tolerance(const std::string& prec) {
    return prec == "f32" ? 1e-5 : prec == "tf32" ? 6e-4 : 6e-3;
}

static double check(const char* what, const Case& c, const Run& r, const std::string& prec,
                    bool head_out) {
    const double tol = tolerance(prec);
    std::vector<double> want, want_head;
    expected(c, prec, want, want_head);
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        if (std::isnan(want[i])) {
            if (!std::isnan(r.out[i])) {
                printf("FAIL %s: out[%zu] should be untouched, is %g\n", what, i, r.out[i]);
                ++failures;
                return 1;
            }
            continue;
        }
        if (!std::isfinite(r.out[i])) {
            printf("FAIL %s: out[%zu] = %g (want %g)\n", what, i, r.out[i], want[i]);
            ++failures;
            return 1;
        }
        num += (r.out[i] - want[i]) * (r.out[i] - want[i]);
        den += want[i] * want[i];
    }
    if (head_out)
        for (size_t i = 0; i < want_head.size(); ++i) {
            if (std::isnan(want_head[i])) continue;
            if (!(std::fabs(r.head_out[i] - want_head[i]) <= 1e-3 + tol * 100)) {
                printf("FAIL %s: head_out[%zu] = %g want %g\n", what, i, r.head_out[i], want_head[i]);
                ++failures;
                return 1;
            }
        }
    for (unsigned a : r.arrived)
        if (a != 0) {
            printf("FAIL %s: a counter was left at %u\n", what, a);
            ++failures;
            return 1;
        }
    const double err = std::sqrt(num / den);
    const bool ok = err <= tol;
    printf("%s %s: rel err %.3g (tol %g)\n", ok ? "ok  " : "FAIL", what, err, tol);
    if (!ok) ++failures;
    return err;
}


static void run_one(const Case& c, const std::string& prec, int splits, bool head_out, Run& r) {
    prepare(c, splits, head_out, r);
    const Variant& v = variant(c.hd, prec);
    AttentionArgs a = r.args;
    emu::launch({(unsigned)(r.tiles * r.splits), (unsigned)c.batch, (unsigned)c.heads}, 256,
                attention::smem, sizeof(attention::smem) / 4, [&] { v.one(a); });
}

static void single(const char* name, const Case& c, const std::string& prec, int splits) {
    Run r;
    run_one(c, prec, splits, c.heads == 1, r);
    char what[200];
    snprintf(what, sizeof what, "%s %s w=%d hd=%d q=%d k=%d b=%d heads=%d splits=%d", name,
             prec.c_str(), c.w, c.hd, c.n_queries, c.n_keys, c.batch, c.heads, r.splits);
    check(what, c, r, prec, c.heads == 1);
}

static void fused(const std::vector<Case>& cases, const std::string& prec, int splits) {
    std::vector<Run> runs(cases.size());
    AttentionHeads h{};
    h.count = cases.size();
    int blocks = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
        prepare(cases[i], splits, true, runs[i]);
        h.set[i] = runs[i].args;
        blocks += runs[i].blocks;
        h.block_start[i + 1] = blocks;
    }
    const Variant& v = variant(cases[0].hd, prec);
    emu::launch({(unsigned)blocks, (unsigned)cases[0].batch, 1}, 256, attention::smem,
                sizeof(attention::smem) / 4, [&] { v.fused(h); });
    for (size_t i = 0; i < cases.size(); ++i) {
        Run alone;
        run_one(cases[i], prec, splits, true, alone);
        char what[200];
        snprintf(what, sizeof what, "fused %s w=%d hd=%d splits=%d", prec.c_str(), cases[i].w,
                 cases[i].hd, runs[i].splits);
        check(what, cases[i], runs[i], prec, true);
        if (memcmp(alone.out.data(), runs[i].out.data(), alone.out.size() * 4) != 0) {
            printf("FAIL %s: fused differs from alone\n", what);
            ++failures;
        }
    }
}

int main(int argc, char** argv) {
    const std::string only = argc > 1 ? argv[1] : "";
    const char* precs[] = {"f32", "tf32", "bf16"};
    if (only.empty() || only == "basic") {
        for (auto p : precs) {
            single("window", window_case(1, 8, 37, 2), p, 1);
            single("window", window_case(2, 16, 13, 3), p, 1);
            single("window", window_case(4, 64, 5, 2), p, 1);
            single("window", window_case(8, 32, 3, 2), p, 1);
            single("window", window_case(8, 8, 13, 1), p, 1);
            single("window", window_case(1, 32, 150, 1), p, 1);
            single("window", window_case(2, 32, 40, 2), p, 1);
        }
    }
    if (only.empty() || only == "widths") {
        for (auto p : precs)
            for (int hd : {1, 4, 5, 12, 17, 24, 33, 48, 100, 128}) {
                single("width", window_case(2, hd, 20, 1), p, 1);
                single("width", window_case(1, hd, 77, 1, 93), p, 1);
            }
    }
    // Plain attention (w = 1) and w = 2 (bf16's rows body): lengths off the 16- and 64-slot
    // grids, more keys than queries and fewer, chunks and whole splits without a live key, key
    // halves past the last key.
    if (only.empty() || only == "tokens") {
        for (auto p : precs) {
            single("tokens", window_case(2, 32, 9, 2, 75), p, 1);
            single("tokens", window_case(2, 24, 9, 2, 75), p, 3);
            single("tokens", window_case(2, 64, 37, 1, 11), p, 1);
            single("tokens", masked_range(window_case(2, 16, 25, 2, 80), 32, 200), p, 5);
            single("tokens", window_case(1, 32, 37, 2, 301), p, 1);
            single("tokens", window_case(1, 32, 37, 2, 301), p, 2);
            single("tokens", window_case(1, 20, 130, 1, 45), p, 1);
            single("tokens", window_case(1, 64, 70, 2, 97), p, 2);
            single("tokens", masked_range(window_case(1, 16, 100, 2, 300), 32, 200), p, 1);
            single("tokens", masked_range(window_case(1, 16, 100, 2, 300), 32, 200), p, 5);
            single("tokens", masked_range(window_case(1, 8, 20, 1, 250), 100, 250), p, 4);
        }
    }
    if (only.empty() || only == "splits") {
        for (auto p : precs) {
            single("split", window_case(1, 16, 200, 2), p, 3);
            single("split", window_case(2, 32, 50, 1), p, 2);
            single("split", window_case(4, 8, 13, 2), p, 4);
            single("split", window_case(8, 5, 6, 1), p, 6);
            single("split", one_query_case(3, 8, 45, 2), p, 1);
            single("split", one_query_case(8, 32, 200, 2), p, 4);
            // Many splits for one merge (the decoder's 11).
            single("split", one_query_case(8, 32, 704, 1), p, 11);
            single("split", window_case(1, 8, 600, 1), p, 10);
        }
    }
    // Shapes drawn at random (seeded): every window and width, lengths and splits anywhere.
    if (only.empty() || only == "random") {
        std::mt19937_64 draw(11);
        auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(draw); };
        for (int i = 0; i < 24; ++i) {
            const int w = 1 << pick(0, 3), ww = w * w, hd = pick(1, 128);
            const int max_windows = std::max(1, 400 / ww);
            const Case c = window_case(w, hd, pick(1, max_windows), pick(1, 2), pick(1, max_windows));
            for (auto p : precs) single("random", c, p, pick(1, 6));
        }
    }
    if (only.empty() || only == "fused") {
        for (auto p : precs) {
            std::vector<Case> cs = {window_case(1, 16, 37, 2), window_case(2, 16, 13, 2),
                                    window_case(4, 16, 5, 2), window_case(8, 16, 3, 2),
                                    window_case(2, 16, 40, 2)};
            fused(cs, p, 1);
            fused(cs, p, 3);
            // A layer's shape, smaller: every window at one width, two plain heads.
            std::vector<Case> layer = {window_case(1, 32, 150, 1), window_case(2, 32, 40, 1),
                                       window_case(4, 32, 10, 1), window_case(8, 32, 3, 1),
                                       window_case(1, 32, 150, 1)};
            fused(layer, p, 1);
            fused(layer, p, 2);
        }
    }
    printf("%d failures\n", failures);
    return failures != 0;
}
