#!/usr/bin/env python3
"""PyTorch's side of the CNN speed table: samples/s of one training step (forward, loss,
backward, SGD step) of each torchvision CNN on one GPU, and its peak memory.

Rows: every model (resnet50, densenet121, alexnet, resnext50_32x4d, shufflenet_v2_x1_0) x
size (224 and 32; AlexNet's three unpadded poolings need 63 or more, so its "32" row trains
on the 32x32 images resized to 64x64 once, outside the step, as attnrt's CIFAR-10 AlexNet
jobs do) x precision (f32 with TF32 off; bf16 autocast) x mode (eager; torch.compile,
default mode; eager-upload). Batch 64 (--batch), 1000 classes, channels_last inputs and weights, SGD with
momentum 0.9. The eager and compile rows train on one batch that stays on the GPU; an
eager-upload row copies a page-locked, channel-major f32 batch (what a DataLoader with
pin_memory=True hands over) to the GPU inside every step (`non_blocking`) and makes it
channels_last there, as a PyTorch training loop does and as attnrt-train's rows must (it
uploads every step's images). A step is timed with CUDA events around it after --warmup
steps; samples/s is batch / p50. Peak memory is torch.cuda.max_memory_allocated() over the timed steps and the
warm-up, in MiB, and beside it max_memory_reserved(): what the caching allocator held from
the GPU at most, its cached free blocks included. A configuration's timed steps stop after
15 s (at least 3), so that every row fits in one device call.

Eager rows run one after another in this process. Compile rows run in child processes, at
most --jobs at a time (default 1): each compiles and warms up its configuration, then takes
a lock file so that only one of them times at a time, and a child still running --deadline-s
seconds after the start is stopped and its row reported as an error. More than one job
shortens the run (compiling is CPU work) but disturbs it: a child's first call is not only
the compile but also steps on the GPU, whose convolutions cuDNN benchmarks
(`cudnn.benchmark`), so the children still compiling share the GPU with the one being timed,
and each benchmarks under that contention and may keep algorithms that only won under it
(with --jobs 4, most compiled rows came out below PyTorch's own eager ones; H100,
2026-12-06, docs/PERF.md). Take the table's rows with --jobs 1.

attnrt's rows for the same table (`--attnrt-bin BIN`, no PyTorch needed): `attnrt-train`
on a synthetic job per model, size and precision (`synthetic:N,S`, the same batch, --steps
iterations plus one, `--gpus 0`; the precision `f32-transforms` is f32 with the job's
`f32_conv_transforms = true`: cuDNN's FFT and Winograd allowed, as PyTorch's f32 has them,
where attnrt's f32 otherwise asks for direct sums), samples/s after the first step from its `done:` line; the
`loader:` line says whether making the synthetic batches limited it (then the row says so:
the figure is the loader's, not the GPU's). Peak memory is attnrt-train's `gpu memory:` line:
the most memory allocated at once during the run from the CUDA memory pool every buffer
comes from. That count includes attnrt's own cache (the CNN walker's pool of free buffers,
kept for the next reader), as PyTorch's reserved figure includes its caching allocator's
free blocks: attnrt's peak is like for like with max_memory_reserved (what the GPU must
have free for the run), and an upper bound on the counterpart of max_memory_allocated. A
model whose GPU path is not built gets an error row saying so.

Usage:
  python3 scripts/torch_cnn_timing.py [--modes eager,compile,eager-upload] [--models all|M1,M2]
      [--sizes 224,32] [--precisions f32,bf16] [--batch 64] [--warmup 5] [--steps 20]
      [--jobs 1] [--deadline-s 540] [--json OUT.json]
  python3 scripts/torch_cnn_timing.py --attnrt-bin target/release/attnrt-train [--models ..]
      [--sizes ..] [--precisions f32,f32-transforms,bf16] [--batch 64] [--steps 20]
      [--json ATTNRT.json]
  python3 scripts/torch_cnn_timing.py --table TORCH.json [MORE.json ...] [--attnrt ATTNRT.json]
      (the markdown table of docs/PERF.md from saved rows; needs no PyTorch)

Rows are JSON objects {model, size, input, precision, mode, batch, samples_per_s, p50_ms,
peak_mib, reserved_mib (PyTorch's rows), host_ms (attnrt's: its `host:` line, ms a step
enqueueing and of that staging the shard, waiting for the previous shard's copy, the passes
and the rest; then the ms staging the next shard on another thread), loader (attnrt's
`loader:` line, where it flagged the run), error}; --json writes the list, the table goes to
standard output.

--profile (eager rows only): instead of timing, runs --steps steps after the warm-up between
the CUDA profiler's start and stop, for `ncu --profile-from-start off` (scripts/ncu-cnn.sh
compares where a step's time goes, kernel by kernel, with attnrt's `cnn_step --profile`).
"""
import argparse
import fcntl
import json
import os
import re
import subprocess
import tempfile
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MODELS = ("resnet50", "densenet121", "alexnet", "resnext50_32x4d", "shufflenet_v2_x1_0")
# AlexNet's smallest input is 63; its 32x32 rows are resized to this side.
ALEXNET_SMALL = 64


def input_side(model, size):
    """The side the step actually trains on for a row of `size`."""
    return ALEXNET_SMALL if model == "alexnet" and size < 63 else size


def configs(models, sizes, precisions, modes):
    return [(m, s, p, mode) for mode in modes for p in precisions for s in sizes for m in models]


def row(model, size, precision, mode, batch, timing=None, peak_mib=None, error=None,
        reserved_mib=None):
    r = {"model": model, "size": size, "input": input_side(model, size), "precision": precision,
         "mode": mode, "batch": batch, "samples_per_s": None, "p50_ms": None,
         "peak_mib": peak_mib, "reserved_mib": reserved_mib, "error": error}
    if timing:
        r["p50_ms"] = timing["p50_ms"]
        r["samples_per_s"] = batch / timing["p50_ms"] * 1e3
    return r


def fmt_rate(r):
    if r is None:
        return "-"
    if r.get("error"):
        return "error"
    return f"{r['samples_per_s']:,.0f}" if r.get("samples_per_s") else "-"


def fmt_mem(r):
    """Peak MiB; PyTorch's as allocated / reserved."""
    if not r or not r.get("peak_mib"):
        return "-"
    reserved = f" / {r['reserved_mib']:,.0f}" if r.get("reserved_mib") else ""
    return f"{r['peak_mib']:,.0f}{reserved}"


def table(rows, attnrt_rows=()):
    """Markdown: one line per model and size; samples/s (peak MiB: PyTorch's allocated /
    reserved, attnrt's pool high-water mark) per precision and mode, then attnrt's, and our
    f32 and bf16 against PyTorch eager's (the issue's bar) and against the faster of eager
    and compile (what a PyTorch user would run). With `f32-transforms` rows, attnrt's f32
    with FFT and Winograd allowed gets a column and is the f32 the ratios take (PyTorch's f32
    chooses among the same algorithms)."""
    key = lambda r: (r["model"], r["size"], r["precision"], r["mode"])  # noqa: E731
    by = {key(r): r for r in rows}
    ours = {(r["model"], r["size"], r["precision"]): r for r in attnrt_rows}
    transforms = any(r["precision"] == "f32-transforms" for r in attnrt_rows)
    ours_f32 = "f32-transforms" if transforms else "f32"
    cols = [("f32", "eager"), ("bf16", "eager"), ("f32", "compile"), ("bf16", "compile")]
    uploads = any(r["mode"] == "eager-upload" for r in rows)
    if uploads:
        cols += [("f32", "eager-upload"), ("bf16", "eager-upload")]
    # Ratio groups: against eager, the best of eager and compile, and (when timed) eager with
    # the batch uploaded each step, like for like with attnrt-train's rows.
    groups = [("eager",), ("eager", "compile")] + ([("eager-upload",)] if uploads else [])
    ours_cols = ["f32"] + (["f32-transforms"] if transforms else []) + ["bf16"]
    head = (["model", "size"] + [f"torch {m} {p}" for p, m in cols]
            + [f"attnrt {p}" for p in ours_cols]
            + [f"{p} vs {'best' if len(g) > 1 else g[0]}" for g in groups
               for p in (ours_f32, "bf16")])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sizes = sorted({r["size"] for r in list(rows) + list(attnrt_rows)}, reverse=True)
    for m in MODELS:
        for s in sizes:
            cells = [m, f"{s}" if input_side(m, s) == s else f"{s} (as {input_side(m, s)})"]
            if not any(k[0] == m and k[1] == s for k in by) and not any(
                    k[0] == m and k[1] == s for k in ours):
                continue
            for p, mode in cols:
                r = by.get((m, s, p, mode))
                cells.append(f"{fmt_rate(r)} ({fmt_mem(r)})" if r else "-")
            for p in ours_cols:
                r = ours.get((m, s, p))
                cells.append(f"{fmt_rate(r)} ({fmt_mem(r)})" if r else "-")
            for modes in groups:
                for p in ("f32", "bf16"):
                    a = (ours.get((m, s, ours_f32 if p == "f32" else p)) or {}).get("samples_per_s")
                    rates = [(by.get((m, s, p, mode)) or {}).get("samples_per_s") for mode in modes]
                    best = max((r for r in rates if r), default=None)
                    cells.append(f"{a / best:.2f}x" if a and best else "-")
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def attnrt_job(model, size, batch, steps, precision):
    """The synthetic job attnrt-train times for one row (`f32-transforms`: f32 with
    `f32_conv_transforms = true`)."""
    side = input_side(model, size)
    transforms = precision == "f32-transforms"
    return (f'[[job]]\nname = "{model}-{size}-{precision}"\nmodel = "{model}"\n'
            f'dataset = "synthetic:{batch * (steps + 1)},{side}"\nclasses = 1000\n'
            f'batch_size = {batch}\niterations = {steps + 1}\noptimizer = "sgd"\nlr = 0.01\n'
            f'precision = "{"f32" if transforms else precision}"\n'
            + ("f32_conv_transforms = true\n" if transforms else ""))


def parse_attnrt(text):
    """(steady samples/s, loader-limited, peak MiB) from attnrt-train's `done:`, `loader:` and
    `gpu memory:` lines (None for what is missing)."""
    rate, limited, peak = None, False, None
    for line in text.splitlines():
        m = re.search(r"samples/s \((\d+) after the first step\)", line)
        if line.startswith("done:") and m:
            rate = float(m[1])
        if line.startswith("loader:") and "limits this run" in line:
            limited = True
        m = re.search(r"([\d.]+) MiB on GPU 0", line)
        if line.startswith("gpu memory:") and m:
            peak = float(m[1])
    return rate, limited, peak


def parse_host(text):
    """attnrt-train's `host:` line: the ms a step of enqueueing the first GPU's work, then
    of it: staging the shard, waiting for the previous shard's copy, enqueueing forward and
    backward, the rest; then staging the next shard on another thread (older lines have the
    first two or five); or None."""
    for line in text.splitlines():
        if line.startswith("host: "):
            return tuple(float(x) for x in re.findall(r"(?<![\w.])(\d+\.\d+)(?![\w.])", line))
    return None


def save(rows, path):
    """Writes the rows so far (a run stopped by its time limit keeps what it measured)."""
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


def attnrt_rows(binary, models, sizes, precisions, batch, steps, workdir, json_path=None):
    rows = []
    for model in models:
        for size in sizes:
            for precision in precisions:
                job = os.path.join(workdir, f"{model}-{size}-{precision}.toml")
                with open(job, "w") as f:
                    f.write(attnrt_job(model, size, batch, steps, precision))
                p = subprocess.run([binary, "--jobs", job, "--gpus", "0"], capture_output=True, text=True)
                text = p.stdout + p.stderr
                r = row(model, size, precision, "attnrt", batch)
                rate, limited, peak = parse_attnrt(text)
                if p.returncode != 0 or rate is None:
                    r["error"] = (text.strip().splitlines() or ["no output"])[-1][:300]
                else:
                    r["samples_per_s"], r["p50_ms"] = rate, batch / rate * 1e3
                    r["peak_mib"] = peak
                    # Beside the step's time: whether the host kept ahead of the GPU.
                    r["host_ms"] = parse_host(text)
                    if limited:
                        r["error"] = "loader-limited: the synthetic batches, not the GPU, set this rate"
                        # Its rate and the steps' wait: which of the two made the flag.
                        r["loader"] = next(l for l in text.splitlines() if l.startswith("loader:"))
                rows.append(r)
                save(rows, json_path)
                print(json.dumps(r), flush=True)
    return rows


# ---- the parts that need PyTorch ----

def build(model_name, size, precision, mode, batch):
    """The step function of one configuration, and its device."""
    import torch
    import torchvision

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = "cuda"
    side = input_side(model_name, size)
    model = torchvision.models.get_model(model_name, weights=None, num_classes=1000)
    model = model.to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=dev)
    if side != size:
        x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    forward = torch.compile(model) if mode == "compile" else model
    # eager-upload: the batch as the host hands it over, page-locked and channel-major.
    host_x = x.contiguous().cpu().pin_memory() if mode == "eager-upload" else None

    def step():
        opt.zero_grad(set_to_none=True)
        xs = x
        if host_x is not None:
            xs = host_x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(forward(xs), y)
        loss.backward()
        opt.step()

    return step, dev


def measure(cfg, batch, warmup, steps, lock=None, profile=False):
    """One configuration's row; with `lock`, the timing waits for the lock file; with
    `profile`, the steps run under the CUDA profiler untimed."""
    import torch
    from torch_timing import time_fn

    model, size, precision, mode = cfg
    try:
        # The previous row's model and optimizer are gone once collected.
        import gc
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        step, dev = build(model, size, precision, mode, batch)
        for _ in range(max(warmup, 1)):  # the first call compiles
            step()
        torch.cuda.synchronize()
        if profile:
            torch.cuda.profiler.start()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            return row(model, size, precision, mode, batch)
        held = None
        if lock:
            held = open(lock, "a")
            fcntl.flock(held, fcntl.LOCK_EX)
        try:
            timing = time_fn(step, steps, 2, dev, max_seconds=15)
        finally:
            if held:
                fcntl.flock(held, fcntl.LOCK_UN)
                held.close()
        peak = torch.cuda.max_memory_allocated() / 2**20
        reserved = torch.cuda.max_memory_reserved() / 2**20
        return row(model, size, precision, mode, batch, timing, peak, reserved_mib=reserved)
    except Exception as e:  # an out-of-memory or compile failure is that row's result
        return row(model, size, precision, mode, batch, error=f"{type(e).__name__}: {e}"[:300])


def run_children(cfgs, args):
    """The compile rows: child processes, --jobs at a time, timing under one lock."""
    lock = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"torch_cnn_timing.{os.getpid()}.lock")
    start, pending, running, rows = time.time(), list(cfgs), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            cfg = pending.pop(0)
            cmd = [sys.executable, __file__, "--child", ",".join(map(str, cfg)), "--lock", lock,
                   "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps", str(args.steps)]
            running.append((cfg, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
        time.sleep(0.5)
        for cfg, proc in list(running):
            late = time.time() - start > args.deadline_s
            if proc.poll() is None and not late:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                rows.append(row(*cfg, args.batch, error=f"stopped at the {args.deadline_s} s deadline"))
            else:
                out = proc.stdout.read().strip().splitlines()
                rows.append(json.loads(out[-1]) if out and out[-1].startswith("{")
                            else row(*cfg, args.batch, error=f"child exited {proc.returncode}"))
            print(json.dumps(rows[-1]), flush=True)
            running.remove((cfg, proc))
        if time.time() - start > args.deadline_s:
            rows += [row(*c, args.batch, error="not started before the deadline") for c in pending]
            pending = []
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--models", default="all")
    p.add_argument("--sizes", default="224,32")
    p.add_argument("--precisions", default="f32,bf16")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--deadline-s", type=float, default=540)
    p.add_argument("--json")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--table", nargs="+")
    p.add_argument("--attnrt", nargs="+")
    p.add_argument("--attnrt-bin")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--lock", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.table:
        rows = [r for path in args.table for r in json.load(open(path))]
        print(table(rows, [r for path in args.attnrt or () for r in json.load(open(path))]))
        return 0
    if args.child:
        m, s, prec, mode = args.child.split(",")
        print(json.dumps(measure((m, int(s), prec, mode), args.batch, args.warmup, args.steps, args.lock)))
        return 0
    models = MODELS if args.models == "all" else tuple(args.models.split(","))
    if any(m not in MODELS for m in models):
        p.error(f"--models: one of {', '.join(MODELS)}")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes: comma-separated image sides such as 224,32, not '{args.sizes}'")
    precisions = args.precisions.split(",")
    modes = args.modes.split(",")
    ours = ("f32-transforms",) if args.attnrt_bin else ()
    if any(x not in ("f32", "bf16") + ours for x in precisions) or any(
            x not in ("eager", "compile", "eager-upload") for x in modes):
        p.error("--precisions f32,bf16 (and f32-transforms with --attnrt-bin) and --modes "
                "eager,compile,eager-upload")
    if args.profile and (args.attnrt_bin or "compile" in modes):
        p.error("--profile: PyTorch eager rows only (--modes eager; attnrt's is cnn_step --profile)")
    if args.attnrt_bin:
        with tempfile.TemporaryDirectory() as d:
            attnrt_rows(args.attnrt_bin, models, sizes, precisions, args.batch, args.steps, d, args.json)
        return 0
    try:
        import torch
        if not torch.cuda.is_available():
            print("torch_cnn_timing: no CUDA device", file=sys.stderr)
            return 2
    except ImportError as e:
        print(f"torch_cnn_timing: needs PyTorch and torchvision ({e})", file=sys.stderr)
        return 2
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    rows = []
    for cfg in configs(models, sizes, precisions, [m for m in modes if m != "compile"]):
        rows.append(measure(cfg, args.batch, args.warmup, args.steps, profile=args.profile))
        save(rows, args.json)
        print(json.dumps(rows[-1]), flush=True)
    compile_cfgs = configs(models, sizes, precisions, [m for m in modes if m == "compile"])
    if compile_cfgs:
        rows += run_children(compile_cfgs, args)
        save(rows, args.json)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
