#!/usr/bin/env python3
"""Markdown tables for docs/PERF.md from scripts/perf-transformer.sh's outputs.

1. With --original FILE: ours against the original CSWinTT code (`scripts/original_cswintt.py
   --bench --json`), same precision against same precision: one row per part, batch and
   precision with our fastest engine row (`benches/engine.rs --json`), the original's time and
   peak memory in each variant (eager, CUDA graph, torch.compile default and reduce-overhead),
   frames/s, and the ratio of the original's best to ours (above 1, ours is faster). Its header
   names the card, the date and the versions; notes list what the original failed to run.
2. With --torch FILE: every engine row (part x mode x precision x launch, p50 ms and GFLOP/s)
   against our own PyTorch port of the spec (`scripts/torch_reference.py --bench --json`, f32
   only), the ratio PyTorch p50 / ours p50 for each of its variants.
3. With --criterion DIR (criterion's output folder, CRITERION_HOME): every criterion bench
   (`benches/kernels.rs`, `benches/encoder.rs`) with its median time per iteration and the
   throughput it declared, as FLOP/s (elements) and GB/s (bytes).
4. When the engine file holds the whole tracker's step (rows of part `frame`, made by
   scripts/perf-tracker.sh from `attnrt-infer --model TRACKER --json`): table 1 compares it
   with the original's frame, and a modes table gives every precision and launch in each mode
   with the frames/s of one stream per head against sequential heads (the thesis's figure);
   --jpeg FILE (`attnrt-infer --frames DIR --json`) adds the end-to-end run on JPEG frames.

Usage:
  python3 scripts/perf_table.py --engine engine.json [--original original.json]
      [--torch torch.json] [--criterion DIR] [--jpeg jpeg.json] [--out table.md]
A file named but missing (a run cut short) leaves its table out with a note.
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
# scripts/original_cswintt.py's parts, variants and precisions, in table order.
ORIGINAL_PARTS = [("encoder", "encoder"), ("transformer", "transformer"),
                  ("frame", "frame (backbone + transformer + heads)")]
ORIGINAL_VARIANTS = [("eager", "eager"), ("graph", "CUDA graph"), ("compile", "compile"),
                     ("reduce-overhead", "compile (reduce-overhead)")]
PRECISION_ORDER = ["f32", "tf32", "bf16"]


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


def rank(value, order):
    return order.index(value) if value in order else len(order)


def peer_table(engine, original):
    """Table 1: ours against the original code, one row per part, batch and precision."""
    engine_batch = engine.get("batch", 1)
    ours = {}
    for row in engine["rows"]:
        k = (row["part"], row.get("batch", engine_batch), row["precision"])
        if k not in ours or row["p50_ms"] < ours[k]["p50_ms"]:
            ours[k] = row
    theirs = {}
    for row in original.get("rows", []):
        theirs.setdefault((row["part"], row["batch"], row["precision"]), {})[row["variant"]] = row
    parts = [p for p, _ in ORIGINAL_PARTS]
    keys = sorted(set(ours) | set(theirs),
                  key=lambda k: (rank(k[0], parts), k[1], rank(k[2], PRECISION_ORDER)))
    titles = dict(ORIGINAL_PARTS)
    lines = [
        "| part | batch | precision | ours p50, ms (mode, launch) | ours frames/s | "
        + " | ".join(f"original {name}" for _, name in ORIGINAL_VARIANTS)
        + " | original best frames/s | original best / ours |",
        "| --- | ---: | --- | --- | ---: |" + " ---: |" * len(ORIGINAL_VARIANTS) + " ---: | ---: |",
    ]
    notes = []
    for part, batch, precision in keys:
        mine = ours.get((part, batch, precision))
        variants = theirs.get((part, batch, precision), {})
        if mine:
            mem = f", {mine['peak_mib']:.0f} MiB" if "peak_mib" in mine else ""
            mine_cell = f"{mine['p50_ms']:.3f} ({mine['mode']}, {mine['launch']}{mem})"
            mine_fps = f"{batch * 1e3 / mine['p50_ms']:.0f}"
        else:
            mine_cell = mine_fps = "-"
        cells, timed = [], []
        for v, name in ORIGINAL_VARIANTS:
            r = variants.get(v)
            if r is None:
                cells.append("-")
            elif "p50_ms" in r:
                mem = f", {r['peak_mib']:.0f} MiB" if "peak_mib" in r else ""
                cells.append(f"{r['p50_ms']:.3f} ms{mem}")
                timed.append((r["p50_ms"], name))
            else:
                cells.append("error")
                notes.append(f"original {part} batch {batch} {precision} {name}: "
                             f"{r.get('error', 'no time')}")
            if r is not None and r.get("host_tensors"):
                notes.append(f"original {part} batch {batch} {precision} {name}: host tensors fed "
                             f"to {', '.join(r['host_tensors'])}")
            if r is not None and r.get("cudagraph_skips"):
                notes.append(f"original {part} batch {batch} {precision} {name}: Inductor skipped "
                             f"CUDA graphs {r['cudagraph_skips']} time(s)")
        if timed:
            best, best_name = min(timed)
            best_fps = f"{batch * 1e3 / best:.0f} ({best_name})"
            ratio = f"{best / mine['p50_ms']:.2f}x" if mine else "-"
        else:
            best_fps = ratio = "-"
        lines.append(f"| {titles.get(part, part)} | {batch} | {precision} | {mine_cell} | {mine_fps} | "
                     + " | ".join(cells) + f" | {best_fps} | {ratio} |")
    return lines, notes


def peer_header(engine, original):
    """Who ran what where: card, date, versions, the original's commit and settings."""
    if not original:
        return [f"Card: {engine.get('device', '?')}. Ours: `benches/engine.rs`. The original: no "
                "results (its run wrote no JSON)."]
    card = original.get("device", "?")
    same = card != "?" and card.split(" (")[0] in engine.get("device", "")
    commit = (original.get("original") or {}).get("commit")
    commit = f"commit {commit[:12]}" if commit else "an unrecorded commit"
    source = engine.get("source", "`benches/engine.rs`")
    out = [
        f"Card: {engine.get('device', '?')}; {original.get('date', 'date unknown')}. Ours: "
        f"{source}, p50 over {engine.get('reps', '?')} passes after "
        f"{engine.get('warmup', '?')} warm-up, the fastest mode and launch of each precision "
        "(tf32 and bf16: the linear layers on tensor cores). The original: "
        f"`scripts/original_cswintt.py` on {card}, the authors' code at {commit} "
        f"(config {original.get('config', '?')}, weights {original.get('weights', '?')}), PyTorch "
        f"{original.get('torch', '?')}, torchvision {original.get('torchvision', '?')}, p50 over "
        f"up to {original.get('iters', '?')} calls, index tensors moved to the GPU; precision "
        + "; ".join(f"{k}: {v}" for k, v in (original.get("precisions") or {}).items())
        + ". Both timed per call with CUDA events, inputs on the device; MiB: peak device memory "
        "(torch.cuda.max_memory_allocated). frame: the tracker's network work for one frame "
        "(search backbone, transformer, heads).",
    ]
    if not same:
        out += ["", f"**Different cards:** ours ran on {engine.get('device', '?')}, the original "
                f"on {card}: the ratios do not compare like with like."]
    return out


def compile_times_original(original):
    took = [f"{r['part']} b{r['batch']} {r['precision']} {r['variant']} {r['compile_s']:.0f} s"
            for r in original.get("rows", []) if "compile_s" in r]
    return [f"- The original's torch.compile took (compiling in parallel): {', '.join(took)}."] if took else []


def modes_table(engine):
    """The tracker's step in every mode: p50 and frames/s per precision and launch, and the
    frames/s of streams (one stream per head) over sequential heads."""
    rows = [r for r in engine["rows"] if r["part"] == "frame"]
    by = {(r["precision"], r["launch"], r["mode"]): r for r in rows}
    modes = ["sequential", "streams", "fused"]
    lines = [
        "| precision | launch | " + " | ".join(f"{m} p50, ms (frames/s)" for m in modes)
        + " | streams / sequential frames/s | stages of the first mode (crop, backbone, "
        "transformer, heads), ms |",
        "| --- | --- |" + " ---: |" * len(modes) + " ---: | --- |",
    ]
    keys = sorted({(r["precision"], r["launch"]) for r in rows},
                  key=lambda k: (rank(k[0], PRECISION_ORDER), k[1]))
    for precision, launch in keys:
        cells = []
        for m in modes:
            r = by.get((precision, launch, m))
            cells.append(f"{r['p50_ms']:.3f} ({1e3 / r['p50_ms']:.0f})" if r else "-")
        seq, streams = by.get((precision, launch, "sequential")), by.get((precision, launch, "streams"))
        gain = f"{100 * (seq['p50_ms'] / streams['p50_ms'] - 1):+.1f}%" if seq and streams else "-"
        first = next((by[(precision, launch, m)] for m in modes if (precision, launch, m) in by), {})
        stages = first.get("stages_ms")
        stage = ", ".join(f"{stages[k]:.3f}" for k in ("crop", "backbone", "transformer", "heads")) \
            if stages else "-"
        lines.append(f"| {precision} | {launch} | " + " | ".join(cells) + f" | {gain} | {stage} |")
    return lines


def jpeg_lines(engine, jpeg):
    """The end-to-end run on JPEG frames against the best step's frames/s."""
    seqs = (jpeg or {}).get("sequences") or []
    if not seqs:
        return ["The JPEG run: no results (its run wrote no JSON)."]
    s = seqs[0]
    best = min((r for r in engine["rows"] if r["part"] == "frame"), key=lambda r: r["p50_ms"],
               default=None)
    step_fps = 1e3 / best["p50_ms"] if best else None
    share = f", {100 * s['fps_end_to_end'] / step_fps:.0f}% of the step's {step_fps:.0f} frames/s " \
        f"({best['precision']}, {best['mode']}, {best['launch']})" if step_fps else ""
    # Builds before the first frame's set-up was reported apart have no fps_after_first.
    after = f" ({s['fps_after_first']:.0f} after the first frame's {1e3 * s['first_frame_s']:.0f} ms " \
        "set-up)" if "fps_after_first" in s else ""
    return [f"A {s['frames']}-frame sequence of JPEG frames ({jpeg.get('engine', '?')}): "
            f"{s['fps']:.0f} frames/s tracking{after}, {s['fps_end_to_end']:.0f} frames/s end to end "
            f"(decoding on CPU threads included){share}."]


def render(engine, torch_res, criterion, original=None, jpeg=None):
    out = []
    if original is not None:
        table, notes = peer_table(engine, original)
        out += [*peer_header(engine, original), "", *table, "", *compile_times_original(original)]
        if notes:
            out += ["", "The original, not measured or flagged:", *(f"- {n}" for n in notes)]
    if any(r["part"] == "frame" for r in engine.get("rows", [])):
        out += ["", "The whole step in every mode (frames/s = 1000 / p50):", "", *modes_table(engine)]
    if jpeg is not None:
        out += ["", *jpeg_lines(engine, jpeg)]
    if torch_res is not None:
        if out:
            out += ["", "Our PyTorch port of the spec (`scripts/torch_reference.py`, f32):", ""]
        out += torch_section(engine, torch_res)
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


def torch_section(engine, torch_res):
    table, notes = side_by_side(engine, torch_res)
    out = [
        f"Ours: {engine['device']}, `benches/engine.rs`, p50 over {engine['reps']} passes after "
        f"{engine['warmup']} warm-up, batch {engine.get('batch', engine.get('batches'))}. PyTorch: {torch_res.get('device', '?')}"
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
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True, help="benches/engine.rs --json output")
    ap.add_argument("--original", help="original_cswintt.py --bench --json output")
    ap.add_argument("--torch", help="torch_reference.py --bench --json output")
    ap.add_argument("--criterion", metavar="DIR", help="criterion's output folder")
    ap.add_argument("--jpeg", help="attnrt-infer --frames DIR --json output (the tracker)")
    ap.add_argument("--out", help="write the markdown here (default: stdout)")
    a = ap.parse_args()
    engine = json.loads(pathlib.Path(a.engine).read_text())

    def optional(path):
        # A peer run that never started still leaves our side worth a table.
        if path is None:
            return None
        p = pathlib.Path(path)
        return json.loads(p.read_text()) if p.exists() else {}
    criterion = criterion_results(a.criterion) if a.criterion else []
    text = render(engine, optional(a.torch), criterion, optional(a.original), optional(a.jpeg))
    if a.out:
        pathlib.Path(a.out).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
