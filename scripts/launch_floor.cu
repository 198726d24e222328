// The launch floor of a chain of dependent kernels in a CUDA graph: what a batch-1 pass of
// K kernels costs when the kernels themselves do (almost) nothing. docs/PERF.md compares the
// transformer's graph time with it (issue 16: the encoder is 42 dependent kernels a pass).
//
// Each kernel has G blocks of 256 threads; thread 0 of each block adds one to a counter, so
// the kernel is not empty and every block runs. The chain is captured on one stream into a
// graph, replayed --warmup times, then timed replay by replay with CUDA events; the line per
// (K, G) gives the p50 of a replay and that divided by K. With `pdl`, each launch carries
// programmatic stream serialisation (Hopper): a kernel may start while the one before it
// drains and waits for it with griddepcontrol.wait, which is how a real chain would overlap
// its launches.
//
// Usage (device machine; nvcc 13.0):
//   nvcc -O3 -arch=sm_90 scripts/launch_floor.cu -o launch_floor && ./launch_floor [REPS]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(call)                                                                      \
    do {                                                                                 \
        cudaError_t e = (call);                                                          \
        if (e != cudaSuccess) {                                                          \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call,            \
                         cudaGetErrorString(e));                                         \
            std::exit(1);                                                                \
        }                                                                                \
    } while (0)

__global__ void touch(unsigned* counter) {
    // A no-op without programmatic serialisation; with it, waits for the kernel before.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (threadIdx.x == 0) atomicAdd(counter, 1u);
}

static float replay_p50_us(int kernels, int grid, bool pdl, int reps, unsigned* counter) {
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(256);
    cfg.stream = s;
    cfg.attrs = pdl ? &attr : nullptr;
    cfg.numAttrs = pdl ? 1 : 0;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < kernels; ++i) CHECK(cudaLaunchKernelEx(&cfg, touch, counter));
    CHECK(cudaStreamEndCapture(s, &graph));
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int i = 0; i < 20; ++i) CHECK(cudaGraphLaunch(exec, s));
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    std::vector<float> us;
    for (int r = 0; r < reps; ++r) {
        CHECK(cudaEventRecord(a, s));
        CHECK(cudaGraphLaunch(exec, s));
        CHECK(cudaEventRecord(b, s));
        CHECK(cudaEventSynchronize(b));
        float ms;
        CHECK(cudaEventElapsedTime(&ms, a, b));
        us.push_back(ms * 1e3f);
    }
    std::sort(us.begin(), us.end());
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    CHECK(cudaStreamDestroy(s));
    return us[us.size() / 2];
}

int main(int argc, char** argv) {
    const int reps = argc > 1 ? std::atoi(argv[1]) : 200;
    if (argc > 2 || reps < 1) {
        std::fprintf(stderr, "launch_floor: REPS must be a positive number of replays, not '%s'\n"
                     "usage: launch_floor [REPS]\n", argc > 1 ? argv[1] : "");
        return 2;
    }
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    unsigned* counter;
    CHECK(cudaMalloc(&counter, sizeof(unsigned)));
    std::printf("# %s, %d SMs, %d replays a line\n", prop.name, prop.multiProcessorCount, reps);
    std::printf("kernels grid pdl p50_us us_per_kernel\n");
    for (int pdl = 0; pdl < 2; ++pdl)
        for (int grid : {88, 132, 396})
            for (int kernels : {1, 7, 42, 86}) {
                const float p50 = replay_p50_us(kernels, grid, pdl, reps, counter);
                std::printf("%d %d %d %.2f %.3f\n", kernels, grid, pdl, p50, p50 / kernels);
            }
    CHECK(cudaFree(counter));
    return 0;
}
