#!/usr/bin/env python3
"""Markdown tables for docs/PERF.md from scripts/perf-issue6.sh's outputs.

1. Ours against PyTorch, side by side: every engine row of `benches/engine.rs --json` (part x
   mode x precision x launch, p50 ms and GFLOP/s) with, for each PyTorch variant of
   `scripts/torch_reference.py --bench --json` (eager, CUDA graph, torch.compile default and
   reduce-overhead), the ratio PyTorch p50 / ours p50: above 1, ours is faster.
2. With --criterion DIR (criterion's output folder, CRITERION_HOME): every criterion bench
   (`benches/kernels.rs`, `benches/encoder.rs`) with its median time per iteration and the
   throughput it declared, as FLOP/s (elements) and GB/s (bytes).

Usage:
  python3 scripts/perf_table.py --engine engine.json --torch torch.json [--criterion DIR]
      [--out table.md]
"""
import argparse
import json
import pathlib
import sys

# torch_reference.py's keys, and their column names.
TORCH_VARIANTS = [
    ("eager", "eager"),
    ("cuda_graph", "CUDA graph"),
    ("compile_default", "compile"),
    ("compile_reduce-overhead", "compile (reduce-overhead)"),
]
PARTS = [("encoder", "encoder (6 layers)"), ("transformer", "transformer (6+6)")]


def p50(result):
    """A timing's p50 in ms, or None when it failed or is missing."""
    return result.get("p50_ms") if result else None


def side_by_side(engine, torch_res):
    """Table 1: one row per engine measurement, a PyTorch row heading each part."""
    names = " | ".join(f"vs {name}" for _, name in TORCH_VARIANTS)
    lines = [
        f"| part | ours: mode | precision | launch | ours p50, ms | GFLOP/s | {names} |",
        "| --- | --- | --- | --- | ---: | ---: |" + " ---: |" * len(TORCH_VARIANTS),
    ]
    notes = []
    for part, title in PARTS:
        theirs = torch_res.get(part, {})
        cells = []
        for key, name in TORCH_VARIANTS:
            t = p50(theirs.get(key))
            cells.append(f"{t:.3f} ms" if t is not None else "-")
            if t is None:
                why = theirs.get(key, {}).get("error", "not measured")
                notes.append(f"PyTorch {part} {name}: {why}")
        lines.append(f"| **{title}** | **PyTorch {torch_res.get('torch', '?')}** | fp32 | | | | "
                     + " | ".join(cells) + " |")
        for row in (r for r in engine["rows"] if r["part"] == part):
            ours = row["p50_ms"]
            ratios = []
            for key, _ in TORCH_VARIANTS:
                t = p50(theirs.get(key))
                ratios.append(f"{t / ours:.2f}x" if t is not None else "-")
            lines.append(
                f"| {title} | {row['mode']} | {row['precision']} | {row['launch']} | {ours:.3f} "
                f"| {row['gflops']:.0f} | " + " | ".join(ratios) + " |")
    return lines, notes


def best_lines(engine, torch_res):
    """One sentence per part: our fastest row against PyTorch's fastest variant."""
    out = []
    for part, title in PARTS:
        rows = [r for r in engine["rows"] if r["part"] == part]
        timed = [(p50(torch_res.get(part, {}).get(k)), name) for k, name in TORCH_VARIANTS]
        timed = [(t, name) for t, name in timed if t is not None]
        if not rows or not timed:
            continue
        ours = min(rows, key=lambda r: r["p50_ms"])
        t, name = min(timed)
        out.append(f"- {title}: ours {ours['p50_ms']:.3f} ms ({ours['mode']}, {ours['precision']}, "
                   f"{ours['launch']}) against PyTorch's best, {name}, {t:.3f} ms: "
                   f"{t / ours['p50_ms']:.2f}x.")
    return out


def compile_times(torch_res):
    """How long each torch.compile variant took to compile (the four ran at once)."""
    took = [f"{part} {name} {torch_res[part][key]['compile_s']:.0f} s"
            for part, _ in PARTS for key, name in TORCH_VARIANTS
            if "compile_s" in torch_res.get(part, {}).get(key, {})]
    return [f"- torch.compile took (compiling all four at once): {', '.join(took)}."] if took else []


def criterion_results(root):
    """Every bench under a criterion folder: (full id, median ns, declared throughput)."""
    found = []
    for bench in sorted(pathlib.Path(root).rglob("new/benchmark.json")):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        found.append((meta["full_id"], est["median"]["point_estimate"], meta.get("throughput")))
    return found


def rate(throughput, ns):
    """Criterion's declared throughput per second: elements as FLOP/s, bytes as GB/s."""
    if not throughput:
        return "-", "-"
    kind, value = next(iter(throughput.items()))
    if kind == "ElementsAndBytes":
        elements, nbytes = value["elements"], value["bytes"]
    elif kind == "Elements":
        elements, nbytes = value, None
    elif kind in ("Bytes", "BytesDecimal"):
        elements, nbytes = None, value
    else:
        return "-", "-"
    per_s = 1e9 / ns
    flops = f"{elements * per_s / 1e9:.1f}" if elements is not None else "-"
    gbs = f"{nbytes * per_s / 1e9:.1f}" if nbytes is not None else "-"
    return flops, gbs


def criterion_table(results):
    """Table 2: every criterion bench, median and throughput."""
    lines = ["| bench | median | GFLOP/s | GB/s |", "| --- | ---: | ---: | ---: |"]
    for full_id, ns, throughput in results:
        flops, gbs = rate(throughput, ns)
        shown = f"{ns / 1e3:.2f} us" if ns < 1e6 else f"{ns / 1e6:.3f} ms"
        lines.append(f"| `{full_id}` | {shown} | {flops} | {gbs} |")
    return lines


def render(engine, torch_res, criterion):
    table, notes = side_by_side(engine, torch_res)
    out = [
        f"Ours: {engine['device']}, `benches/engine.rs`, p50 over {engine['reps']} passes after "
        f"{engine['warmup']} warm-up, batch {engine['batch']}. PyTorch: {torch_res.get('device', '?')}"
        f", `scripts/torch_reference.py`, p50 over {torch_res.get('iters', '?')} calls, batch "
        f"{torch_res.get('batch', '?')}, {torch_res.get('precision', 'fp32')}. Both timed per "
        "pass with CUDA events. Columns `vs X`: PyTorch's p50 / ours (above 1: ours is faster); "
        "the bold rows give PyTorch's own times, fp32 in every column (our tf32 and bf16 rows "
        "run the linear layers on tensor cores). GFLOP/s counts the matrix products "
        "(`cswintt::flops`).",
        "",
        *table,
        "",
        *best_lines(engine, torch_res),
        *compile_times(torch_res),
    ]
    if notes:
        out += ["", "Not measured:", *(f"- {n}" for n in notes)]
    if criterion:
        out += [
            "",
            "Criterion benches (`benches/kernels.rs`, `benches/encoder.rs`): median time per "
            "iteration; GFLOP/s from the FLOPs each bench declares, GB/s from the bytes it must "
            "move at least.",
            "",
            *criterion_table(criterion),
        ]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True, help="benches/engine.rs --json output")
    ap.add_argument("--torch", required=True, help="torch_reference.py --bench --json output")
    ap.add_argument("--criterion", metavar="DIR", help="criterion's output folder")
    ap.add_argument("--out", help="write the markdown here (default: stdout)")
    a = ap.parse_args()
    engine = json.loads(pathlib.Path(a.engine).read_text())
    torch_path = pathlib.Path(a.torch)
    # A PyTorch run that never started still leaves our side worth a table.
    torch_res = json.loads(torch_path.read_text()) if torch_path.exists() else {}
    criterion = criterion_results(a.criterion) if a.criterion else []
    text = render(engine, torch_res, criterion)
    if a.out:
        pathlib.Path(a.out).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
