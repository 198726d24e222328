// Emulated runs of kernels/crop.cu for the Rust test that compares them with the CPU
// reference (tests/kernels/crop.rs, crop_kernel_on_the_host_emulator_matches_the_cpu):
// reads cases from stdin and writes each case's outputs to stdout, little-endian.
//   in:  cases; per case: height, width, output, window[7] (int32), frame (height*width*3 u8)
//   out: per case: pixels (output^2*3 u8), mask (output^2 u8), crop_f32 (output^2*3 f32),
//        crop_bf16 (output^2*3 u16)
#include "emu.h"
#include "../../kernels/crop.cu"

static void read(void* p, size_t n) {
    if (fread(p, 1, n, stdin) != n) {
        fprintf(stderr, "crop emulator: short input\n");
        exit(2);
    }
}
static void write(const void* p, size_t n) { fwrite(p, 1, n, stdout); }

int main() {
    const float mean[3] = {0.485f, 0.456f, 0.406f}, sd[3] = {0.229f, 0.224f, 0.225f};
    int cases;
    read(&cases, 4);
    for (int k = 0; k < cases; ++k) {
        int dims[3], window[7];
        read(dims, sizeof dims);
        read(window, sizeof window);
        const int height = dims[0], width = dims[1], output = dims[2];
        std::vector<unsigned char> frame((size_t)height * width * 3);
        read(frame.data(), frame.size());
        const size_t n = (size_t)output * output;
        // Poisoned outputs: a pixel the kernel skips shows as a mismatch.
        std::vector<unsigned char> pixels(n * 3, 0xAB), mask(n, 0xAB);
        std::vector<float> out(n * 3, NAN);
        std::vector<unsigned short> outb(n * 3, 0xFFFF);
        const dim3 grid{(unsigned)((n + 255) / 256), 1, 1};
        emu::launch(grid, 256, nullptr, 0, [&] {
            crop_f32(frame.data(), height, width, window, output, mean[0], mean[1], mean[2], sd[0], sd[1],
                     sd[2], out.data(), pixels.data(), mask.data());
        });
        emu::launch(grid, 256, nullptr, 0, [&] {
            crop_bf16(frame.data(), height, width, window, output, mean[0], mean[1], mean[2], sd[0],
                      sd[1], sd[2], outb.data(), nullptr, nullptr);
        });
        write(pixels.data(), pixels.size());
        write(mask.data(), mask.size());
        write(out.data(), out.size() * 4);
        write(outb.data(), outb.size() * 2);
    }
    return 0;
}
