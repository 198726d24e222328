#!/usr/bin/env python3
"""Where a training step's GPU time goes, kernel by kernel, for several runs side by side.

Input: Nsight Compute's raw page (`ncu --csv --page raw --print-units base --metrics
gpu__time_duration.sum`, collection bracketed by the profiler's start and stop) of STEPS
training steps per run: attnrt's `bench/cnn_step --steps N --profile` and PyTorch's
`torch_cnn_timing.py --modes eager --steps N --profile` (scripts/ncu-cnn.sh makes both).
Each launch's duration is summed into a category found from the kernel's name (cuDNN's,
cuBLAS's, PyTorch's and ours), then divided by STEPS: GPU milliseconds a step per category.
Kernel time only: gaps between launches (launch overhead, host waits) are not in it, so the
sum is a floor under the measured step time, and the difference is what the GPU spent idle.

  python3 scripts/ncu_step_breakdown.py --run LABEL STEPS CSV [--run ...] [--top 12]
      [--json OUT.json]

Prints a markdown table (category x run, ms a step and launches a step), then each run's
costliest kernels. Runs anywhere (no GPU, no PyTorch).
"""
import argparse
import json
import os
import re
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ncu_roofline import read_raw_csv  # noqa: E402

# First match wins: convolution passes before GEMMs (cuDNN's implicit-GEMM kernels say
# "gemm" too), casts before element-wise.
CATEGORIES = [
    ("element-wise", r"conv2d_epilogue"),  # ours: bias/ReLU/residual after a plain convolution
    ("reduction", r"bias_grad"),
    ("conv backward filter", r"wgrad|bwd_filter|backward_filter|BackwardFilter"),
    ("conv backward data", r"dgrad|bwd_data|backward_data|BackwardData"),
    ("conv forward", r"fprop|implicit_convolve|convolve|conv2d|winograd|fft|conv_kernel"),
    ("GEMM (cuBLAS: linear, 1x1 conv)", r"gemm|nvjet|cutlass|matmul|xmma|linear"),
    ("batch norm", r"batch_norm|batchnorm|bn_|welford"),
    ("pooling", r"pool"),
    ("loss", r"softmax|cross_entropy|nll_loss"),
    ("optimizer", r"sgd|optim|multi_tensor|foreach|momentum|adam"),
    ("cast, copy, layout", r"cast|copy|convert|nchwToNhwc|nhwcToNchw|transpose|concat|cat_"),
    ("element-wise", r"elementwise|relu|threshold|add|mul|epilogue|fill|dropout|bias"),
    ("reduction", r"reduce|sum"),
]
OTHER = "other"
ORDER = list(dict.fromkeys(name for name, _ in CATEGORIES)) + [OTHER]


def category(kernel):
    for name, pattern in CATEGORIES:
        if re.search(pattern, kernel, re.IGNORECASE):
            return name
    return OTHER


def short(kernel, width=90):
    """A kernel's name without template arguments and parameter lists, cut to `width`."""
    depth, out = 0, []
    for ch in kernel:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(ch)
    name = "".join(out).replace("void ", "").replace("::::", "::").strip() or kernel
    return name if len(name) <= width else name[: width - 3] + "..."


def breakdown(launches, steps):
    """{category: [ms a step, launches a step]} and {kernel: [ms a step, launches a step]}."""
    by_cat = defaultdict(lambda: [0.0, 0.0])
    by_kernel = defaultdict(lambda: [0.0, 0.0])
    for launch in launches:
        ns = launch["m"].get("gpu__time_duration.sum")
        if ns is None:
            raise ValueError(f"kernel {launch['name']!r}: no gpu__time_duration.sum in the CSV "
                             "(run ncu with --metrics gpu__time_duration.sum)")
        for table, key in ((by_cat, category(launch["name"])), (by_kernel, short(launch["name"]))):
            table[key][0] += ns / 1e6 / steps
            table[key][1] += 1 / steps
    return dict(by_cat), dict(by_kernel)


def count(n):
    """Launches a step: whole where they divide evenly over the steps."""
    return f"{n:.0f}" if abs(n - round(n)) < 1e-9 else f"{n:.1f}"


def tables(runs, top):
    labels = [label for label, _, _ in runs]
    lines = ["| category | " + " | ".join(f"{label} ms (launches)" for label in labels) + " |",
             "|---|" + "---:|" * len(labels)]
    totals = [0.0] * len(runs)
    for cat in ORDER:
        cells = []
        for i, (_, by_cat, _) in enumerate(runs):
            ms, n = by_cat.get(cat, (0.0, 0.0))
            totals[i] += ms
            cells.append(f"{ms:.3f} ({count(n)})" if n else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    lines.append("| **kernel time a step** | " + " | ".join(f"**{t:.3f}**" for t in totals) + " |")
    for label, _, by_kernel in runs:
        lines += ["", f"{label}: the {top} costliest kernels (ms a step, launches a step)", "",
                  "| kernel | category | ms | launches |", "|---|---|---:|---:|"]
        ranked = sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:top]
        for name, (ms, n) in ranked:
            lines.append(f"| `{name}` | {category(name)} | {ms:.3f} | {count(n)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", nargs=3, action="append", required=True,
                   metavar=("LABEL", "STEPS", "CSV"))
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--json")
    args = p.parse_args(argv)
    runs = []
    for label, steps, path in args.run:
        if not steps.isdigit() or int(steps) < 1:
            p.error(f"--run {label}: STEPS must be a whole number of at least 1, not {steps!r}")
        try:
            launches = read_raw_csv(path)
        except (OSError, ValueError) as e:
            print(f"ncu_step_breakdown: --run {label}: {e}", file=sys.stderr)
            return 1
        if not launches:
            print(f"ncu_step_breakdown: --run {label}: {path} has no kernel launches (did the "
                  "profiled program call the profiler's start?)", file=sys.stderr)
            return 1
        try:
            runs.append((label, *breakdown(launches, int(steps))))
        except ValueError as e:
            print(f"ncu_step_breakdown: --run {label}: {path}: {e}", file=sys.stderr)
            return 1
    print(tables(runs, args.top))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({label: {"categories": c, "kernels": k} for label, c, k in runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
