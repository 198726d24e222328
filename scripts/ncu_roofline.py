#!/usr/bin/env python3
"""Per-kernel roofline tables for docs/PERF.md from Nsight Compute's raw CSV
(scripts/ncu-transformer.sh), and the batch throughput table from `benches/engine.rs --json`.

Subcommands:
  metrics [--query FILE]
      Prints the comma-separated ncu metric list to collect. With FILE (the output of
      `ncu --query-metrics`), metrics whose base name the card does not list are left out (each
      named on stderr), so one unknown name cannot stop the whole run; launch__ metrics are
      launch attributes, not listed there, and always kept.
  table --device NAME --run PART PRECISION CSV [--run ...] [--passes N] [--engine JSON]
        [--trace PRECISION JSON ...] [--peak-bf16 T] [--peak-tf32 T] [--peak-fma T]
        [--peak-dram TB] [--out MD] [--json OUT]
      One table per run (`ncu --csv --page raw --print-units base` of PART's passes at PRECISION):
      each kernel (by name, grid and block) with its launches and time per pass, its FLOP/s and
      DRAM bytes/s, the fraction of its roofline it reaches, SM and memory throughput, occupancy
      and the limiter. --engine adds the model's FLOP count of the part to check the counted
      FLOPs against, and the engine's batch table (frames/s, fraction of peak) when it holds
      several batches. --trace adds the event-timed stages of one eager pass (no counters
      needed: the per-stage times stand when the card's counters cannot be read).
  batches --engine JSON [--out MD]
      Only the batch table.

The roofline of a kernel: the shortest time its work could take at the card's peaks,
  floor = max(tensor FLOPs / tensor peak + FMA FLOPs / FMA peak, DRAM bytes / DRAM bandwidth),
and the kernel reaches floor / duration of it, bound by whichever term is larger. (This equals
achieved / min(peak, intensity x bandwidth), the classic roofline, for one kind of arithmetic.)
Tensor FLOPs = tensor-pipe instructions x the FLOPs of one `mma.sync` of the run's precision
(m16n8k16 bf16: 4096, m16n8k8 tf32: 2048); FMA FLOPs = 2 FFMA + FADD + FMUL (thread
instructions, predicated on). DRAM bytes are cold-cache bytes (ncu flushes caches before each
kernel by default), so a memory floor is an upper bound on the real one.

The limiter (a reading of the counters, not ncu's own rule set): a unit at 60% of its peak or
more binds (the tensor or FMA pipe, or issue, for SM throughput; DRAM, L2 or L1/shared memory
for memory throughput); below that the kernel is latency-bound, by its grid when it fills less
than one wave of the SMs, by occupancy when under 25% of the warps are active, else by stalls.

Peaks (dense, boost clock; --peak-* override): H100 SXM and H200 989 TFLOP/s bf16, 495 tf32,
67 f32 FMA; DRAM 3.35 TB/s (H100 SXM), 4.8 TB/s (H200).
"""
import argparse
import csv
import json
import pathlib
import sys

METRICS = [
    "gpu__time_duration.sum",
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "lts__throughput.avg.pct_of_peak_sustained_elapsed",
    "l1tex__throughput.avg.pct_of_peak_sustained_active",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
    "sm__maximum_warps_per_active_cycle_pct",
    "smsp__sass_thread_inst_executed_op_ffma_pred_on.sum",
    "smsp__sass_thread_inst_executed_op_fadd_pred_on.sum",
    "smsp__sass_thread_inst_executed_op_fmul_pred_on.sum",
    "sm__inst_executed_pipe_tensor_op_hmma.sum",
    "sm__inst_executed_pipe_tensor.sum",
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
    "sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active",
    "launch__grid_size",
    "launch__block_size",
    "launch__registers_per_thread",
    "launch__waves_per_multiprocessor",
]
# What a run cannot do without: ncu-transformer.sh retries with these alone when ncu rejects
# the full list.
CORE_METRICS = METRICS[:9] + METRICS[-4:]

# FLOPs of one warp-wide tensor instruction of the run's precision (our kernels' mma.sync).
TENSOR_FLOPS_PER_INST = {"bf16": 4096.0, "tf32": 2048.0, "f32": 2048.0}

# (name contains, DRAM TB/s, bf16, tf32, FMA TFLOP/s), first match wins.
CARDS = [
    ("H200", 4.8, 989.4, 494.7, 66.9),
    ("H100 PCIe", 2.0, 756.0, 378.0, 51.2),
    ("H100", 3.35, 989.4, 494.7, 66.9),
]

UNIT_SCALE = {
    "": 1.0, "%": 1.0, "nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9,
    "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12,
    "KB": 1e3, "MB": 1e6, "GB": 1e9,
}
HIGH = 60.0  # % of a unit's peak at which it binds
LOW_OCCUPANCY = 25.0


def base_name(metric):
    return metric.split(".", 1)[0]


def available_metrics(query_text):
    """The base metric names `ncu --query-metrics` lists (its first column)."""
    names = set()
    for line in query_text.splitlines():
        first = line.split(None, 1)[0] if line.strip() else ""
        if "__" in first:
            names.add(first)
    return names


def select_metrics(query_text=None):
    """METRICS less those the card does not list, and the names left out."""
    if query_text is None:
        return list(METRICS), []
    known = available_metrics(query_text)
    if not known:  # an unreadable query: let ncu itself judge the list
        return list(METRICS), []
    keep = [m for m in METRICS if m.startswith("launch__") or base_name(m) in known]
    return keep, [m for m in METRICS if m not in keep]


def number(text, unit=""):
    """A raw-page value in base units (ns, bytes), or None for n/a and empty cells."""
    text = (text or "").strip().replace(",", "")
    if not text or text.lower() in ("n/a", "nan"):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value * UNIT_SCALE.get(unit.strip(), 1.0)


def read_raw_csv(path):
    """ncu's raw page: a header row starting with "ID", a units row (empty ID), then one row
    per kernel launch; lines before the header (==PROF== messages) are skipped."""
    header, units, launches = None, {}, []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if header is None:
                if row[0] == "ID":
                    header = row
                continue
            if not row[0].strip():
                units = dict(zip(header, row))
                continue
            if not row[0].strip().isdigit():
                continue
            cells = dict(zip(header, row))
            values = {k: number(v, units.get(k, "")) for k, v in cells.items()
                      if "__" in k}
            launches.append({
                "name": cells.get("Kernel Name", "?"),
                "grid": cells.get("Grid Size", ""),
                "block": cells.get("Block Size", ""),
                "m": values,
            })
    if header is None:
        raise ValueError(f"{path}: no header row (a line starting with \"ID\"): not ncu's "
                         "--csv --page raw output")
    return launches


def peaks(device, args):
    """(tensor peak by precision in FLOP/s, FMA FLOP/s, DRAM bytes/s) for the card."""
    card = next((c for c in CARDS if c[0] in device), None)
    dram = args.peak_dram if args.peak_dram else (card[1] if card else None)
    bf16 = args.peak_bf16 if args.peak_bf16 else (card[2] if card else None)
    tf32 = args.peak_tf32 if args.peak_tf32 else (card[3] if card else None)
    fma = args.peak_fma if args.peak_fma else (card[4] if card else None)
    if None in (dram, bf16, tf32, fma):
        raise ValueError(f"no peaks known for card {device!r}: give --peak-bf16, --peak-tf32, "
                         "--peak-fma (TFLOP/s) and --peak-dram (TB/s)")
    return {"bf16": bf16 * 1e12, "tf32": tf32 * 1e12, "f32": tf32 * 1e12}, fma * 1e12, dram * 1e12


def get(m, name, default=0.0):
    v = m.get(name)
    return default if v is None else v


def tensor_instructions(m):
    v = m.get("sm__inst_executed_pipe_tensor_op_hmma.sum")
    return v if v is not None else get(m, "sm__inst_executed_pipe_tensor.sum")


def aggregate(launches, passes, precision, tensor_peak, fma_peak, dram_peak):
    """One entry per (kernel, grid, block): per-pass totals, time-weighted percentages."""
    groups = {}
    for launch in launches:
        key = (launch["name"], launch["grid"], launch["block"])
        groups.setdefault(key, []).append(launch["m"])
    rows = []
    for (name, grid, block), ms in groups.items():
        t = sum(get(m, "gpu__time_duration.sum") for m in ms)  # ns
        if t <= 0:
            continue

        def weighted(metric):
            have = [(get(m, "gpu__time_duration.sum"), m[metric]) for m in ms
                    if m.get(metric) is not None]
            w = sum(d for d, _ in have)
            return sum(d * v for d, v in have) / w if w > 0 else None

        tensor = sum(tensor_instructions(m) for m in ms) * TENSOR_FLOPS_PER_INST[precision]
        fma = sum(2 * get(m, "smsp__sass_thread_inst_executed_op_ffma_pred_on.sum")
                  + get(m, "smsp__sass_thread_inst_executed_op_fadd_pred_on.sum")
                  + get(m, "smsp__sass_thread_inst_executed_op_fmul_pred_on.sum") for m in ms)
        dram = sum(get(m, "dram__bytes_read.sum") + get(m, "dram__bytes_write.sum") for m in ms)
        compute_floor = (tensor / tensor_peak + fma / fma_peak) * 1e9  # ns
        memory_floor = dram / dram_peak * 1e9
        row = {
            "kernel": name, "grid": grid, "block": block,
            "calls": len(ms) / passes, "time_us": t / passes / 1e3,
            "tensor_flop": tensor / passes, "fma_flop": fma / passes, "dram_bytes": dram / passes,
            "tflops": (tensor + fma) / t / 1e3, "dram_gbs": dram / t,
            "floor_us": max(compute_floor, memory_floor) / passes / 1e3,
            "bound": "compute" if compute_floor >= memory_floor else "memory",
            "sm_pct": weighted("sm__throughput.avg.pct_of_peak_sustained_elapsed"),
            "mem_pct": weighted("gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"),
            "dram_pct": weighted("dram__throughput.avg.pct_of_peak_sustained_elapsed"),
            "l2_pct": weighted("lts__throughput.avg.pct_of_peak_sustained_elapsed"),
            "l1_pct": weighted("l1tex__throughput.avg.pct_of_peak_sustained_active"),
            "tensor_pipe_pct": weighted(
                "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"),
            "fma_pipe_pct": weighted("sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active"),
            "occupancy_pct": weighted("sm__warps_active.avg.pct_of_peak_sustained_active"),
            "theoretical_occupancy_pct": weighted("sm__maximum_warps_per_active_cycle_pct"),
            "waves": max(get(m, "launch__waves_per_multiprocessor", 0.0) for m in ms),
            "grid_size": max(get(m, "launch__grid_size", 0.0) for m in ms),
            "registers": max(get(m, "launch__registers_per_thread", 0.0) for m in ms),
        }
        row["roofline_pct"] = 100.0 * row["floor_us"] / row["time_us"]
        row["limiter"] = limiter(row)
        rows.append(row)
    rows.sort(key=lambda r: -r["time_us"])
    return rows


def limiter(r):
    sm, mem = r["sm_pct"] or 0.0, r["mem_pct"] or 0.0
    if max(sm, mem) >= HIGH:
        if sm >= mem:
            pipes = [("tensor pipe", r["tensor_pipe_pct"]), ("FMA pipe", r["fma_pipe_pct"])]
            pipe, pct = max(((p, v) for p, v in pipes if v is not None),
                            key=lambda pv: pv[1], default=(None, None))
            if pct is not None and pct >= HIGH:
                return f"compute: {pipe} {pct:.0f}%"
            return f"compute: issue/other pipes (SM {sm:.0f}%)"
        units = [("DRAM", r["dram_pct"]), ("L2", r["l2_pct"]), ("L1/shared", r["l1_pct"])]
        unit, pct = max(((u, v) for u, v in units if v is not None),
                        key=lambda uv: uv[1], default=("memory", mem))
        return f"memory: {unit} {pct:.0f}%"
    if r["waves"] and r["waves"] < 1.0:
        return f"latency: grid {r['grid_size']:.0f} blocks, {r['waves']:.2f} waves"
    occ = r["occupancy_pct"]
    if occ is not None and occ < LOW_OCCUPANCY:
        return f"latency: occupancy {occ:.0f}%"
    return f"latency: stalls (SM {sm:.0f}%, memory {mem:.0f}%)"


def pct(v):
    return "-" if v is None else f"{v:.0f}"


def kernel_label(r):
    grid = r["grid"].replace(" ", "")
    return f"`{r['kernel']}` {grid}" if grid else f"`{r['kernel']}`"


def run_table(part, precision, rows, expected_flop=None):
    total = sum(r["time_us"] for r in rows)
    floor = sum(r["floor_us"] for r in rows)
    launches = sum(r["calls"] for r in rows)
    counted = sum(r["tensor_flop"] + r["fma_flop"] for r in rows)
    out = [f"**{part}, {precision}**: {launches:.0f} launches a pass, {total:.1f} us of kernel "
           f"time (ncu, one kernel at a time), floor {floor:.1f} us: {100 * floor / total:.0f}% "
           "of the roofline overall." if total else f"**{part}, {precision}**: no kernels."]
    if expected_flop:
        out[0] += (f" Counted {counted / 1e9:.2f} GFLOP a pass against the model's "
                   f"{expected_flop / 1e9:.2f} GFLOP of matrix products.")
    out += ["", "| kernel (grid) | calls | time, us (share) | TFLOP/s | DRAM GB/s | "
            "% of roofline (bound) | SM % | memory % | occupancy % (theoretical) | limiter |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(
            f"| {kernel_label(r)} | {r['calls']:g} | {r['time_us']:.1f} "
            f"({100 * r['time_us'] / total:.0f}%) | {r['tflops']:.1f} | {r['dram_gbs']:.0f} | "
            f"{r['roofline_pct']:.0f} ({r['bound']}) | {pct(r['sm_pct'])} | {pct(r['mem_pct'])} | "
            f"{pct(r['occupancy_pct'])} ({pct(r['theoretical_occupancy_pct'])}) | "
            f"{r['limiter']} |")
    return out


def engine_rows(engine):
    return engine.get("rows", []) if engine else []


def expected_flop(engine, part, precision):
    """The model's FLOPs of one batch-1 pass of `part`, from the engine bench's GFLOP/s."""
    for r in engine_rows(engine):
        if (r["part"], r["precision"], r.get("batch", engine.get("batch", 1))) == (part, precision, 1):
            return r["gflops"] * r["p50_ms"] * 1e6
    return None


def batch_table(engine):
    """Best mode and launch per part, precision and batch: p50, frames/s, fraction of peak."""
    best = {}
    for r in engine_rows(engine):
        key = (r["part"], r["precision"], r.get("batch", engine.get("batch", 1)))
        if key not in best or r["p50_ms"] < best[key]["p50_ms"]:
            best[key] = r
    if not best:
        return []
    order = {"f32": 0, "tf32": 1, "bf16": 2}
    out = [f"Card: {engine.get('device', '?')}; `benches/engine.rs`, p50 over "
           f"{engine.get('reps', '?')} passes, the fastest mode and launch of each row; the "
           "fraction of peak is the matrix products' FLOP/s over the dense tensor-core peak of "
           "the precision (f32: the FMA peak).", "",
           "| part | precision | batch | p50, ms (mode, launch) | frames/s | TFLOP/s | "
           "% of peak (peak TFLOP/s) |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for (part, precision, batch), r in sorted(
            best.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), kv[0][2])):
        fps = r.get("frames_per_s", batch * 1e3 / r["p50_ms"])
        frac = r.get("peak_fraction")
        peak = r.get("peak_tflops")
        frac_cell = "-" if frac is None else f"{100 * frac:.1f} ({peak:g})"
        out.append(f"| {part} | {precision} | {batch} | {r['p50_ms']:.3f} ({r['mode']}, "
                   f"{r['launch']}) | {fps:.0f} | {r['gflops'] / 1e3:.1f} | {frac_cell} |")
    return out


def stage_table(precision, trace):
    """Event-timed stages of one eager pass (`benches/engine.rs --trace-dir`), summed over the
    layers: `encoder 3/qkv` counts as `encoder */qkv`. Needs no profiler counters."""
    groups = {}
    for e in trace.get("traceEvents", []):
        name = e["name"]
        head, sep, rest = name.partition("/")
        parts = head.split(" ")
        if sep and len(parts) == 2 and parts[1].isdigit():
            name = f"{parts[0]} */{rest}"
        g = groups.setdefault(name, [0, 0.0])
        g[0] += 1
        g[1] += e["dur"]
    lanes = {e.get("tid", 0) for e in trace.get("traceEvents", [])}
    total = sum(e["dur"] for e in trace.get("traceEvents", []) if e.get("tid", 0) == 0)
    out = [f"**stages, {precision}** (CUDA events around each stage of one eager pass, fused; "
           f"{total:.1f} us on the main stream{'' if lanes <= {0} else ', head lanes apart'}):",
           "", "| stage | calls | time, us | share |", "|---|---:|---:|---:|"]
    for name, (calls, dur) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        share = f"{100 * dur / total:.0f}%" if total else "-"
        out.append(f"| {name} | {calls} | {dur:.1f} | {share} |")
    return out


def cmd_metrics(args):
    text = pathlib.Path(args.query).read_text() if args.query else None
    keep, dropped = select_metrics(text)
    for m in dropped:
        print(f"not on this card, left out: {m}", file=sys.stderr)
    print(",".join(CORE_METRICS if args.core else keep))


def cmd_table(args):
    tensor_peaks, fma_peak, dram_peak = peaks(args.device, args)
    out = [f"Card: {args.device}. Peaks: bf16 {tensor_peaks['bf16'] / 1e12:g}, tf32 "
           f"{tensor_peaks['tf32'] / 1e12:g}, FMA {fma_peak / 1e12:g} TFLOP/s; DRAM "
           f"{dram_peak / 1e12:g} TB/s. Times per pass over {args.passes} profiled pass(es).", ""]
    engine = None
    if args.engine and pathlib.Path(args.engine).exists():
        engine = json.loads(pathlib.Path(args.engine).read_text())
    elif args.engine:
        out += [f"No engine file ({args.engine} missing): no FLOP check, no batch table.", ""]
    summary = []
    for part, precision, path in args.run:
        if precision not in TENSOR_FLOPS_PER_INST:
            raise ValueError(f"--run {part} {precision} {path}: precision must be f32, tf32 or bf16")
        if not pathlib.Path(path).exists():
            out += [f"**{part}, {precision}**: no ncu output ({path} missing: the run failed "
                    "or was cut short).", ""]
            continue
        try:
            launches = read_raw_csv(path)
        except ValueError as e:  # ncu stopped before its table (its log says why)
            out += [f"**{part}, {precision}**: no ncu table: {e}.", ""]
            continue
        rows = aggregate(launches, args.passes, precision, tensor_peaks[precision], fma_peak,
                         dram_peak)
        out += run_table(part, precision, rows, expected_flop(engine, part, precision)) + [""]
        summary.append({"part": part, "precision": precision, "kernels": rows})
    for precision, path in args.trace:
        if pathlib.Path(path).exists():
            out += stage_table(precision, json.loads(pathlib.Path(path).read_text())) + [""]
        else:
            out += [f"**stages, {precision}**: no trace ({path} missing).", ""]
    if engine and len({r.get("batch", 1) for r in engine_rows(engine)}) > 1:
        out += batch_table(engine) + [""]
    emit(args, out)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"device": args.device, "passes": args.passes, "runs": summary}, indent=1) + "\n")


def cmd_batches(args):
    emit(args, batch_table(json.loads(pathlib.Path(args.engine).read_text())))


def emit(args, lines):
    text = "\n".join(lines).rstrip() + "\n"
    if args.out:
        pathlib.Path(args.out).write_text(text)
    sys.stdout.write(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("metrics")
    m.add_argument("--query", help="output of `ncu --query-metrics`")
    m.add_argument("--core", action="store_true", help="only the metrics a table needs")
    t = sub.add_parser("table")
    t.add_argument("--device", required=True, help="the card's name (nvidia-smi's)")
    t.add_argument("--run", nargs=3, action="append", default=[],
                   metavar=("PART", "PRECISION", "CSV"))
    t.add_argument("--passes", type=int, default=1, help="profiled passes in each CSV")
    t.add_argument("--trace", nargs=2, action="append", default=[], metavar=("PRECISION", "JSON"),
                   help="benches/engine.rs --trace-dir's transformer_fused*.json")
    t.add_argument("--engine", help="benches/engine.rs --json output")
    for name in ("bf16", "tf32", "fma"):
        t.add_argument(f"--peak-{name}", type=float, help="TFLOP/s")
    t.add_argument("--peak-dram", type=float, help="TB/s")
    t.add_argument("--out")
    t.add_argument("--json")
    b = sub.add_parser("batches")
    b.add_argument("--engine", required=True)
    b.add_argument("--out")
    args = p.parse_args(argv)
    try:
        {"metrics": cmd_metrics, "table": cmd_table, "batches": cmd_batches}[args.cmd](args)
    except (ValueError, OSError, json.JSONDecodeError, KeyError) as e:
        print(f"ncu_roofline.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
