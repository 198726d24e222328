// Tensor-core and asynchronous-copy primitives (inline PTX), shared by the kernels that use
// them. Everything that is PTX sits here, behind plain functions, so that the rest of a kernel
// is ordinary CUDA C++.
//
// Fragment layouts of mma.sync (PTX ISA), with g = lane / 4 (groupID), t = lane % 4:
//   C/D of m16n8 (f32): c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1).
//   m16n8k8 .tf32:  A a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4);
//                   B b0 (k = t, n = g), b1 (k = t + 4, n = g).
//   m16n8k16 .bf16: A (two bf16 per register, the lower k in the lower half)
//                   a0 (g, 2t..2t+1), a1 (g + 8, 2t..2t+1), a2 (g, 2t+8..2t+9),
//                   a3 (g + 8, 2t+8..2t+9);
//                   B b0 (k = 2t..2t+1, n = g), b1 (k = 2t+8..2t+9, n = g).
#pragma once

// The PTX itself. A host-side test build (scripts/emulator) defines ATTNRT_EMULATED_PTX and
// supplies its own versions of these functions.
#ifndef ATTNRT_EMULATED_PTX

// f32 -> tf32 (round to nearest, ties away from zero), as the tensor cores read it.
__device__ __forceinline__ unsigned to_tf32(float v) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
    return r;
}

// Two bf16 (round to nearest even) in one register, `lo` in the lower 16 bits.
__device__ __forceinline__ unsigned to_bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// d += a b for one m16n8k8 tile, tf32 operands, f32 accumulators.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const unsigned (&a)[4],
                                         const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d += a b for one m16n8k16 tile, bf16 operands, f32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4],
                                         const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ldmatrix.x4: four 8x8 matrices of 16-bit values from shared memory, one register each.
// Lane l gives the address of one 16-byte row: row l % 8 of matrix l / 8. Register j of lane
// l receives matrix j's row l / 4, values 2 (l % 4) and 2 (l % 4) + 1 (the lower one in the
// lower half): for bf16 tiles stored row-major, exactly an mma A or B fragment register.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* row) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// Brings the 128-byte line holding `p` into this SM's L1 without waiting for it or holding a
// register: a later load of it then hits L1 instead of waiting on L2.
__device__ __forceinline__ void prefetch_l1(const void* p) {
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}

// Asynchronous global -> shared copies (cp.async): `src_bytes` of `bytes` are read, the rest
// of the destination is zero-filled (src_bytes = 0: zeros, `src` is not read). 16-byte copies
// bypass L1 (.cg); 4-byte ones must go through it (.ca is the only form of that size).
__device__ __forceinline__ void cp_async16(float* dst, const float* src, int src_bytes) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async4(float* dst, const float* src, int src_bytes) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(d), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}

// Closes the group of copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// Waits until at most `pending` of this thread's committed groups are still in flight (the
// newest ones). Other threads' copies become visible only after a barrier.
__device__ __forceinline__ void cp_async_wait(int pending) {
    if (pending == 0)
        asm volatile("cp.async.wait_group 0;" ::: "memory");
    else
        asm volatile("cp.async.wait_group 1;" ::: "memory");
}

#endif  // ATTNRT_EMULATED_PTX

// One k slice of a tensor-core product, per operand type: K columns of A and rows of B; the
// fragments gathered from f32 shared-memory tiles and rounded. Element (row r, column k) of A
// is r_rows[k * a_stride], r_rows pointing at row g (for a0, a2) or g + 8 (a1, a3); element
// (row k, column g) of B is col[k * b_stride].
struct Tf32Op {
    static constexpr int K = 8;
    static __device__ __forceinline__ void a(unsigned (&f)[4], const float* r0, const float* r1,
                                             int a_stride, int k, int t) {
        f[0] = to_tf32(r0[(k + t) * a_stride]);
        f[1] = to_tf32(r1[(k + t) * a_stride]);
        f[2] = to_tf32(r0[(k + t + 4) * a_stride]);
        f[3] = to_tf32(r1[(k + t + 4) * a_stride]);
    }
    static __device__ __forceinline__ void b(unsigned (&f)[2], const float* col, int b_stride,
                                             int k, int t) {
        f[0] = to_tf32(col[(k + t) * b_stride]);
        f[1] = to_tf32(col[(k + t + 4) * b_stride]);
    }
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
        mma_tf32(d, a, b);
    }
};

struct Bf16Op {
    static constexpr int K = 16;
    static __device__ __forceinline__ void a(unsigned (&f)[4], const float* r0, const float* r1,
                                             int a_stride, int k, int t) {
        const int c = k + 2 * t;
        f[0] = to_bf16x2(r0[c * a_stride], r0[(c + 1) * a_stride]);
        f[1] = to_bf16x2(r1[c * a_stride], r1[(c + 1) * a_stride]);
        f[2] = to_bf16x2(r0[(c + 8) * a_stride], r0[(c + 9) * a_stride]);
        f[3] = to_bf16x2(r1[(c + 8) * a_stride], r1[(c + 9) * a_stride]);
    }
    static __device__ __forceinline__ void b(unsigned (&f)[2], const float* col, int b_stride,
                                             int k, int t) {
        const int c = k + 2 * t;
        f[0] = to_bf16x2(col[c * b_stride], col[(c + 1) * b_stride]);
        f[1] = to_bf16x2(col[(c + 8) * b_stride], col[(c + 9) * b_stride]);
    }
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
        mma_bf16(d, a, b);
    }
};
