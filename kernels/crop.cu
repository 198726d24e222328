// crop: the tracker's pre-processing of one frame in one launch. A square window of a uint8
// RGB frame (HWC, uploaded once) is zero-padded where it leaves the frame, resized to
// output x output exactly as OpenCV's cv2.resize (INTER_LINEAR) resizes uint8 images, and
// normalised; the padding mask is resized with it. The CPU reference is
// src/kernels/crop/cpu.rs (the tracker's own crop), matched bit for bit.
//
// Math, per output pixel (r, c) and channel ch, with n the window's side:
//   n == output      a copy (OpenCV copies);
//   n == 2 output    INTER_AREA's exact 2x reduction: (sum of 2 x 2 pixels + 2) >> 2;
//   otherwise        bilinear in fixed point: per axis s = (d + 0.5) * (n / output) - 0.5 in
//                    f64 rounded to f32, i = floor(s), a = s - i, weights rint((1 - a) 2048)
//                    and rint(a 2048); rows clip i and i + 1 to the window and keep the
//                    weights, columns move an index out of range to the edge with a = 0.
//                    Horizontal pass exact in integers; vertical pass OpenCV's SIMD one
//                    ((((h0 >> 4) w0) >> 16) + (((h1 >> 4) w1) >> 16) + 2) >> 2 for the
//                    first simd_end bytes of an output row (x = 3 c + ch), its scalar
//                    (h0 w0 + h1 w1 + 2^21) >> 22 after them.
// The f64 and f32 steps use explicit round-to-nearest intrinsics so that nvcc cannot
// contract them into FMAs the CPU does not do.
//   out  = (pixel / 255 - mean[ch]) / std[ch] in f32 (bf16 variant: rounded to nearest even);
//   mask = 1 where any window pixel with a nonzero weight is padding.
//
// The window lives in device memory (int[7]: size, x1, y1, x1_pad, x2_pad, y1_pad, y2_pad;
// crop pixel (r, c) is the frame's (y1 + r, x1 + c) unless padding), so that a captured CUDA
// graph replays the launch for a new window: the host writes the window, not the graph.
//
// Variants: crop_f32 and crop_bf16 (the output's storage). pixels (uint8, output^2 x 3) and
// mask (uint8, output^2) are optional (null: not written). One thread per output pixel.
#include "common.cuh"

#define CROP_COEF_SCALE 2048.0f

struct CropTap {
    int i0, i1, w0, w1;
    bool second;  // the second tap has a nonzero weight
};

__device__ __forceinline__ int crop_fixed(float f) { return (int)rintf(__fmul_rn(f, CROP_COEF_SCALE)); }

// Output coordinate d's taps along an axis of src window pixels resized to dst.
__device__ __forceinline__ CropTap crop_tap(int src, int dst, int d, bool rows) {
    const double scale = 1.0 / ((double)dst / (double)src);
    const float s = (float)__dsub_rn(__dmul_rn(__dadd_rn((double)d, 0.5), scale), 0.5);
    int i = (int)floorf(s);
    float a = __fsub_rn(s, (float)i);
    const int last = src - 1;
    CropTap t;
    if (rows) {
        t.i0 = min(max(i, 0), last);
        t.i1 = min(max(i + 1, 0), last);
    } else {
        if (i < 0) { i = 0; a = 0.0f; }
        if (i >= last) { i = last; a = 0.0f; }
        t.i0 = i;
        t.i1 = min(i + 1, last);
    }
    t.w0 = crop_fixed(__fsub_rn(1.0f, a));
    t.w1 = crop_fixed(a);
    t.second = a != 0.0f;
    return t;
}

struct CropWindow {
    int size, x1, y1, x1_pad, x2_pad, y1_pad, y2_pad;
    __device__ __forceinline__ bool padded(int r, int c) const {
        return r < y1_pad || r >= size - y2_pad || c < x1_pad || c >= size - x2_pad;
    }
};

__device__ __forceinline__ int crop_pixel(const unsigned char* __restrict__ frame, int width,
                                          const CropWindow& w, int r, int c, int ch) {
    if (w.padded(r, c)) return 0;
    return frame[((long long)(w.y1 + r) * width + (w.x1 + c)) * 3 + ch];
}

__device__ __forceinline__ void crop_store(float* out, long long i, float v) { out[i] = v; }
__device__ __forceinline__ void crop_store(unsigned short* out, long long i, float v) {
    // Nearest even, as half::bf16::from_f32 (the normalised values are finite).
    unsigned u = __float_as_uint(v);
    out[i] = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Where OpenCV's vertical pass leaves its SIMD loops in a row of width bytes (16-byte
// blocks, then 8-byte ones while more than 8 remain).
__device__ __forceinline__ int crop_simd_end(int width) {
    int x = width / 16 * 16;
    while (x + 8 < width) x += 8;
    return x;
}

template <typename T>
__device__ __forceinline__ void crop(const unsigned char* __restrict__ frame, int height, int width,
                                     const int* __restrict__ window, int output, const float* mean,
                                     const float* sd, T* __restrict__ out,
                                     unsigned char* __restrict__ pixels, unsigned char* __restrict__ mask) {
    (void)height;  // the launcher checks the window against it
    const CropWindow w = {window[0], window[1], window[2], window[3], window[4], window[5], window[6]};
    const int n = w.size;
    const int simd_end = crop_simd_end(output * 3);
    GRID_STRIDE(p, (long long)output * output) {
        const int r = (int)(p / output), c = (int)(p % output);
        int v[3];
        bool padded;
        if (n == output) {
            for (int ch = 0; ch < 3; ++ch) v[ch] = crop_pixel(frame, width, w, r, c, ch);
            padded = w.padded(r, c);
        } else if (n == 2 * output) {
            for (int ch = 0; ch < 3; ++ch) {
                const int sum = crop_pixel(frame, width, w, 2 * r, 2 * c, ch) +
                                crop_pixel(frame, width, w, 2 * r, 2 * c + 1, ch) +
                                crop_pixel(frame, width, w, 2 * r + 1, 2 * c, ch) +
                                crop_pixel(frame, width, w, 2 * r + 1, 2 * c + 1, ch);
                v[ch] = (sum + 2) >> 2;
            }
            padded = w.padded(2 * r, 2 * c) || w.padded(2 * r, 2 * c + 1) || w.padded(2 * r + 1, 2 * c) ||
                     w.padded(2 * r + 1, 2 * c + 1);
        } else {
            const CropTap ty = crop_tap(n, output, r, true), tx = crop_tap(n, output, c, false);
            for (int ch = 0; ch < 3; ++ch) {
                const int h0 = crop_pixel(frame, width, w, ty.i0, tx.i0, ch) * tx.w0 +
                               crop_pixel(frame, width, w, ty.i0, tx.i1, ch) * tx.w1;
                const int h1 = crop_pixel(frame, width, w, ty.i1, tx.i0, ch) * tx.w0 +
                               crop_pixel(frame, width, w, ty.i1, tx.i1, ch) * tx.w1;
                int s;
                if (c * 3 + ch < simd_end) {
                    const int p0 = (min(max(h0 >> 4, -32768), 32767) * ty.w0) >> 16;
                    const int p1 = (min(max(h1 >> 4, -32768), 32767) * ty.w1) >> 16;
                    s = (p0 + p1 + 2) >> 2;
                } else {
                    s = (h0 * ty.w0 + h1 * ty.w1 + (1 << 21)) >> 22;
                }
                v[ch] = min(max(s, 0), 255);
            }
            padded = w.padded(ty.i0, tx.i0) || (tx.second && w.padded(ty.i0, tx.i1)) ||
                     (ty.second && (w.padded(ty.i1, tx.i0) || (tx.second && w.padded(ty.i1, tx.i1))));
        }
        for (int ch = 0; ch < 3; ++ch) {
            const float x = __fdiv_rn(__fsub_rn(__fdiv_rn((float)v[ch], 255.0f), mean[ch]), sd[ch]);
            crop_store(out, p * 3 + ch, x);
            if (pixels) pixels[p * 3 + ch] = (unsigned char)v[ch];
        }
        if (mask) mask[p] = padded ? 1 : 0;
    }
}

// mean and std arrive as three floats each (the kernel's arguments, no device table).
#define CROP_KERNEL(name, T)                                                                         \
    ATTNRT_KERNEL void name(const unsigned char* __restrict__ frame, int height, int width,         \
                            const int* __restrict__ window, int output, float m0, float m1, float m2, \
                            float s0, float s1, float s2, T* __restrict__ out,                       \
                            unsigned char* __restrict__ pixels, unsigned char* __restrict__ mask) {  \
        const float mean[3] = {m0, m1, m2}, sd[3] = {s0, s1, s2};                                    \
        crop(frame, height, width, window, output, mean, sd, out, pixels, mask);                     \
    }

CROP_KERNEL(crop_f32, float)
CROP_KERNEL(crop_bf16, unsigned short)
