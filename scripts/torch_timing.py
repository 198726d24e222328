"""Timing PyTorch callables the way the PyTorch peers (scripts/torch_reference.py,
scripts/original_cswintt.py) report them: per call, CUDA events on a GPU, p50/p10/p90.
PyTorch is imported only by the functions that use it, so `summarize` runs without it."""
import math
import time


def nearest_rank(samples, p):
    """The p-th percentile as attnrt takes it (src/base/stats.rs): the sample of rank
    ceil(p/100 * n), so every figure is a measured time."""
    ranked = sorted(samples)
    return ranked[min(max(math.ceil(p / 100 * len(ranked)), 1), len(ranked)) - 1]


def summarize(times_ms):
    """p50, p10, p90 (ms, nearest rank) and the count of a list of per-call times."""
    return {"p50_ms": nearest_rank(times_ms, 50), "p10_ms": nearest_rank(times_ms, 10),
            "p90_ms": nearest_rank(times_ms, 90), "n": len(times_ms)}


def sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, iters, warmup, device, max_seconds=float("inf")):
    """Per-call times of `fn`: up to `warmup` calls, then up to `iters` timed calls, each phase
    stopped after `max_seconds` (at least 3 timed calls). CUDA events around each call, waited
    for, on a GPU; the wall clock on the CPU. Returns summarize()'s dict."""
    import torch
    cuda = device.startswith("cuda")
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
        if time.perf_counter() - start > max_seconds:
            break
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < iters and (len(times) < 3 or time.perf_counter() - start < max_seconds):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return summarize(times)


def cuda_graph(fn):
    """A CUDA graph of `fn` (warmed up on a side stream, as PyTorch asks); returns its replay."""
    import torch
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay
