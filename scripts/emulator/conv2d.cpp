// Emulated checks of kernels/conv2d.cu's bias gradient (bf16: cuDNN does not take it) against
// a float64 sum over the rows: channel counts below, at and above one 32-channel tile, row
// counts below one chunk and over several, overwriting and accumulating. Chunking follows
// the launcher (src/kernels/conv2d.rs, bias_grad_ours).
#include "emu.h"
#include "../../kernels/conv2d.cu"
#include <random>
#include <vector>

int main() {
    std::mt19937_64 rng(5);
    int failures = 0;
    struct Case { long long rows; int c; };
    for (Case k : {Case{7, 5}, Case{1, 32}, Case{3000, 33}, Case{2500, 64}, Case{600, 1}}) {
        std::vector<__nv_bfloat16> dy(k.rows * k.c);
        for (auto& v : dy) v = __float2bfloat16_rn(std::uniform_real_distribution<float>(-1, 1)(rng));
        long long chunks = std::min<long long>(std::max<long long>((k.rows + 1023) / 1024, 1), 512);
        long long chunk_rows = (k.rows + chunks - 1) / chunks;
        for (int acc = 0; acc < 2; ++acc) {
            std::vector<float> partial(chunks * k.c, NAN);
            std::vector<__nv_bfloat16> db(k.c, __float2bfloat16_rn(acc ? 0.5f : NAN));
            emu::launch({(unsigned)((k.c + 31) / 32), (unsigned)chunks, 1}, 256, nullptr, 0,
                        [&] { conv2d_bias_grad_partial_bf16(dy.data(), partial.data(), k.rows, k.c, chunk_rows); });
            emu::launch({(unsigned)((k.c + 255) / 256), 1, 1}, 256, nullptr, 0,
                        [&] { conv2d_bias_grad_finish_bf16(partial.data(), db.data(), (int)chunks, k.c, acc); });
            for (int c = 0; c < k.c; ++c) {
                double want = acc ? 0.5 : 0.0;
                for (long long r = 0; r < k.rows; ++r) want += __bfloat162float(dy[r * k.c + c]);
                double got = __bfloat162float(db[c]);
                // One bf16 rounding of the f32 sum: 2^-8 relative, plus f32 summation error.
                double tol = std::abs(want) * 4e-3 + 1e-4 * k.rows;
                if (!(std::abs(got - want) <= tol) && failures++ < 5)
                    printf("FAIL rows %lld c %d acc %d channel %d: %g want %g\n", k.rows, k.c, acc, c, got, want);
            }
        }
    }
    printf("conv2d bias grad: %d failures\n", failures);
    return failures != 0;
}
