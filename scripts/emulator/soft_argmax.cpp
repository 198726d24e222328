// Emulated checks of kernels/soft_argmax.cu against a float64 loop (the CPU reference's
// formula): maps of the tracker's 24 x 24 cells, smaller than a block and larger than one
// pass of it, flat and peaked, f32 and bf16 scores; several maps per launch (one block each).
#include "emu.h"
#include "../../kernels/soft_argmax.cu"
#include <random>
#include <vector>

int main() {
    std::mt19937_64 rng(5);
    int failures = 0;
    struct Case { int maps, side; float scale; };
    for (Case c : {Case{2, 24, 3.0f}, Case{2, 24, 40.0f}, Case{3, 5, 1.0f}, Case{1, 40, 0.0f}}) {
        const int cells = c.side * c.side;
        std::vector<float> s(c.maps * cells);
        for (auto& v : s) v = std::uniform_real_distribution<float>(-1, 1)(rng) * c.scale;
        std::vector<unsigned short> b(s.size());
        for (size_t i = 0; i < s.size(); ++i) {  // bf16, nearest even; the f64 loop reads it back
            unsigned u;
            memcpy(&u, &s[i], 4);
            b[i] = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
        for (int bf = 0; bf < 2; ++bf) {
            std::vector<double> out(2 * c.maps, NAN);
            emu::launch({(unsigned)c.maps, 1, 1}, SOFT_ARGMAX_THREADS, nullptr, 0, [&] {
                if (bf) soft_argmax_bf16(b.data(), cells, c.side, 16.0f, out.data());
                else soft_argmax_f32(s.data(), cells, c.side, 16.0f, out.data());
            });
            for (int m = 0; m < c.maps; ++m) {
                auto score = [&](int i) {
                    if (!bf) return (double)s[m * cells + i];
                    unsigned u = (unsigned)b[m * cells + i] << 16;
                    float f;
                    memcpy(&f, &u, 4);
                    return (double)f;
                };
                double mx = -INFINITY, e = 0, x = 0, y = 0;
                for (int i = 0; i < cells; ++i) mx = std::max(mx, score(i));
                for (int i = 0; i < cells; ++i) {
                    const double p = std::exp(score(i) - mx);
                    e += p;
                    x += p * 16.0 * (i % c.side);
                    y += p * 16.0 * (i / c.side);
                }
                const double ex = x / e, ey = y / e;
                const double err = std::max(std::fabs(out[2 * m] - ex), std::fabs(out[2 * m + 1] - ey));
                const bool bad = !(err <= 1e-9 * 16 * c.side);
                failures += bad;
                printf("%s %dx%d map %d %s: (%.9f, %.9f), error %.2e%s\n", bf ? "bf16" : "f32", c.side,
                       c.side, m, c.scale == 40.0f ? "peaked" : "", out[2 * m], out[2 * m + 1], err,
                       bad ? "  FAIL" : "");
            }
        }
    }
    printf("soft_argmax: %d failures\n", failures);
    return failures != 0;
}
