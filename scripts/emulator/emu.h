// Host emulation of the CUDA subset the attention kernel uses: every thread of a block is a
// fiber (ucontext), barriers and warp collectives yield until their participants arrive,
// cp.async copies are deferred until the wait that covers them, shared memory starts NaN.
#pragma once
#include <ucontext.h>
#include <strings.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <vector>

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#ifdef EMU_STATIC_SHARED
#define __shared__ static  // function-scope shared arrays: one per block, blocks run in turn
#else
#define __shared__
#endif
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x = 0, y = 0, z = 0;
};
struct float2 {
    float x, y;
};
inline float2 make_float2(float a, float b) { return {a, b}; }
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
struct alignas(8) uint2 {
    unsigned x, y;
};
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }

namespace emu {

struct Copy {
    float* dst;
    const float* src;
    int bytes, src_bytes, group;
};

struct Fiber {
    ucontext_t ctx;
    dim3 tid;
    int linear = 0;
    bool done = false;
    std::vector<char> stack;
    std::vector<Copy> copies;
    int committed = 0;  // groups committed so far; uncommitted copies have group == committed
    std::map<unsigned, unsigned> parity;
};

struct Barrier {
    int count = 0;
    unsigned gen = 0;
};

struct Group {
    Barrier bar;
    float f[2][32];
    unsigned u[2][32][6];
};

inline Fiber* cur = nullptr;
inline ucontext_t sched;
inline Barrier block_bar;
inline std::map<unsigned, Group> warp_groups[32];
inline long progress = 0;
inline dim3 block_idx, block_dim, grid_dim;
inline int nthreads = 0;

inline void yield() { swapcontext(&cur->ctx, &sched); }

inline void wait_at(Barrier& b, int n) {
    const unsigned g = b.gen;
    if (++b.count == n) {
        b.count = 0;
        ++b.gen;
        ++progress;
    } else {
        while (b.gen == g) yield();
    }
}

inline int lane() { return cur->linear % 32; }
inline int warp() { return cur->linear / 32; }

// Deposit this lane's values under `mask`, wait for the group, return the slot parity.
inline unsigned exchange(unsigned mask, const float* f, const unsigned* u, int nu) {
    if (!(mask >> lane() & 1)) {
        fprintf(stderr, "collective: lane %d not in its own mask %08x\n", lane(), mask);
        abort();
    }
    Group& gr = warp_groups[warp()][mask];
    const unsigned par = cur->parity[mask]++ & 1;
    if (f) gr.f[par][lane()] = *f;
    for (int i = 0; i < nu; ++i) gr.u[par][lane()][i] = u[i];
    wait_at(gr.bar, __builtin_popcount(mask));
    return par;
}

inline Group& group(unsigned mask) { return warp_groups[warp()][mask]; }

inline float bits_f(unsigned b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}
inline unsigned f_bits(float f) {
    unsigned b;
    memcpy(&b, &f, 4);
    return b;
}

inline void run_copies(int upto_group) {  // groups < upto_group
    auto& v = cur->copies;
    std::vector<Copy> keep;
    for (auto& c : v) {
        if (c.group < upto_group) {
            char tmp[16] = {0};
            if (c.src_bytes) memcpy(tmp, c.src, c.src_bytes);
            memcpy(c.dst, tmp, c.bytes);
        } else {
            keep.push_back(c);
        }
    }
    v.swap(keep);
}

inline std::function<void()> body;

inline void entry(int i) {
    (void)i;
    body();
    if (!cur->copies.empty()) {
        fprintf(stderr, "thread %d ended with %zu copies in flight\n", cur->linear, cur->copies.size());
        abort();
    }
    cur->done = true;
    ++progress;
    swapcontext(&cur->ctx, &sched);
}

// Runs `fn` (a kernel call) over the grid with `block` threads per block (x fastest, as CUDA
// numbers them), `smem` poisoned.
inline void launch(dim3 grid, dim3 block, float* smem, size_t smem_floats,
                   const std::function<void()>& fn) {
    static std::vector<Fiber> fibers(1024);
    const int threads = (int)(block.x * block.y * block.z);
    grid_dim = grid;
    block_dim = block;
    nthreads = threads;
    body = fn;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                block_idx = {bx, by, bz};
                for (size_t i = 0; i < smem_floats; ++i) smem[i] = NAN;
                block_bar = Barrier{};
                for (auto& w : warp_groups) w.clear();
                for (int i = 0; i < threads; ++i) {
                    Fiber& f = fibers[i];
                    f.linear = i;
                    f.tid = {i % block.x, i / block.x % block.y, i / (block.x * block.y)};
                    f.done = false;
                    f.copies.clear();
                    f.committed = 0;
                    f.parity.clear();
                    if (f.stack.empty()) f.stack.resize(256 * 1024);
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.data();
                    f.ctx.uc_stack.ss_size = f.stack.size();
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, (void (*)())entry, 1, i);
                }
                int alive = threads;
                long stalled = 0;
                while (alive) {
                    const long before = progress;
                    alive = 0;
                    for (int i = 0; i < threads; ++i) {
                        if (fibers[i].done) continue;
                        cur = &fibers[i];
                        swapcontext(&sched, &cur->ctx);
                        if (!fibers[i].done) ++alive;
                    }
                    stalled = progress == before ? stalled + 1 : 0;
                    if (stalled > 3) {
                        fprintf(stderr, "deadlock in block (%u,%u,%u)\n", bx, by, bz);
                        abort();
                    }
                }
            }
}

// One-dimensional blocks of `threads`.
inline void launch(dim3 grid, int threads, float* smem, size_t smem_floats,
                   const std::function<void()>& fn) {
    launch(grid, dim3{(unsigned)threads, 1, 1}, smem, smem_floats, fn);
}

}  // namespace emu

#define threadIdx (emu::cur->tid)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::wait_at(emu::block_bar, emu::nthreads); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::exchange(mask, nullptr, nullptr, 0); }
inline float __shfl_xor_sync(unsigned mask, float v, int o) {
    const unsigned par = emu::exchange(mask, &v, nullptr, 0);
    const int src = emu::lane() ^ o;
    if (!(mask >> src & 1)) {
        fprintf(stderr, "shfl from lane %d outside mask %08x\n", src, mask);
        abort();
    }
    return emu::group(mask).f[par][src];
}
inline double __shfl_xor_sync(unsigned mask, double v, int o) {
    unsigned mine[2];
    memcpy(mine, &v, 8);
    const unsigned par = emu::exchange(mask, nullptr, mine, 2);
    const int src = emu::lane() ^ o;
    if (!(mask >> src & 1)) {
        fprintf(stderr, "shfl from lane %d outside mask %08x\n", src, mask);
        abort();
    }
    double r;
    memcpy(&r, emu::group(mask).u[par][src], 8);
    return r;
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    const unsigned u = pred ? 1 : 0;
    const unsigned par = emu::exchange(mask, nullptr, &u, 1);
    unsigned r = 0;
    for (int l = 0; l < 32; ++l)
        if (mask >> l & 1) r |= emu::group(mask).u[par][l][0] << l;
    return r;
}
inline int __ffs(int x) { return ffs(x); }
inline float __int_as_float(int x) { return emu::bits_f((unsigned)x); }
inline float __uint_as_float(unsigned x) { return emu::bits_f(x); }
inline unsigned __float_as_uint(float x) { return emu::f_bits(x); }
// Round-to-nearest arithmetic: the host neither contracts nor reorders these (no -ffast-math).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    const unsigned old = *p;
    *p = old + v;
    return old;
}
inline void __threadfence() {}
inline float __ldcg(const float* p) { return *p; }
inline void __stcg(float* p, float v) { *p = v; }

// tensor_core.cuh's PTX functions.
#define ATTNRT_EMULATED_PTX
inline unsigned to_tf32(float v) {
    const unsigned b = emu::f_bits(v);
    return (b + 0x1000u) & 0xffffe000u;  // nearest, ties away (finite inputs)
}
inline unsigned to_bf16x2(float lo, float hi) {
    auto rn = [](float f) {
        const unsigned b = emu::f_bits(f);
        return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    };
    return rn(lo) | rn(hi) << 16;
}
inline float bf16_lo(unsigned r) { return emu::bits_f(r << 16); }
inline float bf16_hi(unsigned r) { return emu::bits_f(r & 0xffff0000u); }

inline void mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    const unsigned mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const unsigned par = emu::exchange(0xffffffffu, nullptr, mine, 6);
    auto& u = emu::group(0xffffffffu).u[par];
    auto A = [&](int r, int c) {
        return emu::bits_f(u[(r % 8) * 4 + c % 4][(r >= 8) + 2 * (c >= 4)]);
    };
    auto B = [&](int k, int n) { return emu::bits_f(u[n * 4 + k % 4][4 + (k >= 4)]); };
    const int g = emu::lane() / 4, t = emu::lane() % 4;
    for (int e = 0; e < 4; ++e) {
        const int r = g + (e >= 2 ? 8 : 0), c = 2 * t + (e & 1);
        float s = 0.0f;
        for (int k = 0; k < 8; ++k) s += A(r, k) * B(k, c);
        d[e] += s;
    }
}

inline void mma_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    const unsigned mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const unsigned par = emu::exchange(0xffffffffu, nullptr, mine, 6);
    auto& u = emu::group(0xffffffffu).u[par];
    auto half = [](unsigned r, int h) { return h ? bf16_hi(r) : bf16_lo(r); };
    auto A = [&](int r, int c) {
        return half(u[(r % 8) * 4 + (c % 8) / 2][(r >= 8) + 2 * (c >= 8)], c % 2);
    };
    auto B = [&](int k, int n) { return half(u[n * 4 + (k % 8) / 2][4 + (k >= 8)], k % 2); };
    const int g = emu::lane() / 4, t = emu::lane() % 4;
    for (int e = 0; e < 4; ++e) {
        const int r = g + (e >= 2 ? 8 : 0), c = 2 * t + (e & 1);
        float s = 0.0f;
        for (int k = 0; k < 16; ++k) s += A(r, k) * B(k, c);
        d[e] += s;
    }
}

inline void ldmatrix_x4(unsigned (&r)[4], const void* row) {
    const uintptr_t at = reinterpret_cast<uintptr_t>(row);
    if (at % 16) {
        fprintf(stderr, "ldmatrix row misaligned\n");
        abort();
    }
    const unsigned mine[2] = {(unsigned)at, (unsigned)(at >> 32)};
    const unsigned par = emu::exchange(0xffffffffu, nullptr, mine, 2);
    auto& u = emu::group(0xffffffffu).u[par];
    const int l = emu::lane();
    for (int j = 0; j < 4; ++j) {
        const int src = 8 * j + l / 4;
        const uintptr_t a = (uintptr_t)u[src][0] | (uintptr_t)u[src][1] << 32;
        memcpy(&r[j], reinterpret_cast<const char*>(a) + 4 * (l % 4), 4);
    }
}

inline void prefetch_l1(const void*) {}  // a cache hint: nothing to emulate

inline void cp_async16(float* dst, const float* src, int src_bytes) {
    if (reinterpret_cast<uintptr_t>(dst) % 16 || (src_bytes && reinterpret_cast<uintptr_t>(src) % 16)) {
        fprintf(stderr, "cp_async16 misaligned\n");
        abort();
    }
    emu::cur->copies.push_back({dst, src, 16, src_bytes, emu::cur->committed});
}
inline void cp_async4(float* dst, const float* src, int src_bytes) {
    emu::cur->copies.push_back({dst, src, 4, src_bytes, emu::cur->committed});
}
inline void cp_async_commit() { ++emu::cur->committed; }
inline void cp_async_wait(int pending) { emu::run_copies(emu::cur->committed - pending); }
