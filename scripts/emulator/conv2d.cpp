// Emulated checks of kernels/conv2d.cu's bias gradient (f32 and bf16) against
// a float64 sum over the rows: channel counts below, at and above one 32-channel tile, row
// counts below one chunk and over several, overwriting and accumulating. Chunking follows
// the launcher (src/kernels/conv2d.rs, bias_grad_ours).
#include "emu.h"
#include "../../kernels/conv2d.cu"
#include <random>
#include <vector>

// One case of rows x c in storage type T (float or __nv_bfloat16), overwriting and
// accumulating; returns the failures.
template <typename T, typename Partial, typename Finish>
static int check(std::mt19937_64& rng, long long rows, int c, Partial partial_kernel,
                 Finish finish_kernel, double rounding) {
    int failures = 0;
    std::vector<T> dy(rows * c);
    for (auto& v : dy) store(dy.data(), &v - dy.data(), std::uniform_real_distribution<float>(-1, 1)(rng));
    long long chunks = std::min<long long>(std::max<long long>((rows + 1023) / 1024, 1), 512);
    long long chunk_rows = (rows + chunks - 1) / chunks;
    for (int acc = 0; acc < 2; ++acc) {
        std::vector<float> partial(chunks * c, NAN);
        std::vector<T> db(c);
        for (int j = 0; j < c; ++j) store(db.data(), j, acc ? 0.5f : NAN);
        emu::launch({(unsigned)((c + 31) / 32), (unsigned)chunks, 1}, 256, nullptr, 0,
                    [&] { partial_kernel(dy.data(), partial.data(), rows, c, chunk_rows); });
        emu::launch({(unsigned)((c + 255) / 256), 1, 1}, 256, nullptr, 0,
                    [&] { finish_kernel(partial.data(), db.data(), (int)chunks, c, acc); });
        for (int j = 0; j < c; ++j) {
            double want = acc ? 0.5 : 0.0;
            for (long long r = 0; r < rows; ++r) want += load(dy.data(), r * c + j);
            double got = load(db.data(), j);
            // One rounding to the storage type, plus f32 summation error.
            double tol = std::abs(want) * rounding + 1e-4 * rows;
            if (!(std::abs(got - want) <= tol) && failures++ < 5)
                printf("FAIL rows %lld c %d acc %d channel %d: %g want %g\n", rows, c, acc, j, got, want);
        }
    }
    return failures;
}

int main() {
    std::mt19937_64 rng(5);
    int failures = 0;
    struct Case { long long rows; int c; };
    for (Case k : {Case{7, 5}, Case{1, 32}, Case{3000, 33}, Case{2500, 64}, Case{600, 1}}) {
        failures += check<__nv_bfloat16>(rng, k.rows, k.c, conv2d_bias_grad_partial_bf16,
                                         conv2d_bias_grad_finish_bf16, 4e-3);
        failures += check<float>(rng, k.rows, k.c, conv2d_bias_grad_partial_f32,
                                 conv2d_bias_grad_finish_f32, 1e-6);
    }
    printf("conv2d bias grad: %d failures\n", failures);
    return failures != 0;
}
