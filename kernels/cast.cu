// Casts of GEMM operands: y = bf16(x), the trainer's bf16 GEMMs read these copies (cuBLASLt,
// f32 accumulation); and bf16 activations widened to f32. Layout: flat arrays of n values.
//
// Rounding: to nearest even, NaN kept (quiet): the rounding of half::bf16::from_f32, which
// the CPU engine's bf16 emulation (`Precision::operand`) uses, so both round GEMM operands
// bit for bit alike. Written out rather than __float2bfloat16_rn so the NaN case is the
// host's too.
//
// Variants:
//   cast_bf16_f32  f32 -> bf16. It runs at the memory's speed: four values per thread
//                  (16-byte loads, 8-byte stores) where both pointers allow, else one. The
//                  launcher sizes the grid for the four-wide form; both forms stride.
//   cast_f32_bf16  bf16 -> f32 (exact), one value per thread.
#include "common.cuh"

__device__ __forceinline__ unsigned short bf16_rn(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

ATTNRT_KERNEL void cast_bf16_f32(const float* __restrict__ x, unsigned short* __restrict__ y,
                                 long long n) {
    if (((unsigned long long)x % 16) == 0 && ((unsigned long long)y % 8) == 0) {
        long long n4 = n / 4;
        GRID_STRIDE(j, n4) {
            float4 v = reinterpret_cast<const float4*>(x)[j];
            reinterpret_cast<ushort4*>(y)[j] =
                make_ushort4(bf16_rn(v.x), bf16_rn(v.y), bf16_rn(v.z), bf16_rn(v.w));
        }
        GRID_STRIDE(j, n - 4 * n4) { y[4 * n4 + j] = bf16_rn(x[4 * n4 + j]); }
    } else {
        GRID_STRIDE(i, n) { y[i] = bf16_rn(x[i]); }
    }
}

// cast_f32_bf16: bf16 -> f32, exact (the bf16 backbone's features into the f32 transformer).
ATTNRT_KERNEL void cast_f32_bf16(const unsigned short* __restrict__ x, float* __restrict__ y, long long n) {
    GRID_STRIDE(i, n) { y[i] = __uint_as_float((unsigned)x[i] << 16); }
}
