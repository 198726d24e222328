#!/usr/bin/env python3
"""Test scripts/perf_table.py on made-up outputs in the formats scripts/perf-transformer.sh
collects (`benches/engine.rs --json`, `original_cswintt.py --bench --json`, criterion's folder)
and `torch_reference.py --bench --json`.

  python3 scripts/test_perf_table.py

The numbers are invented for the test only. Exit status 0 when every check passes.
"""
import json
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
MODES, PRECISIONS, LAUNCHES = ("sequential", "streams", "fused"), ("f32", "tf32", "bf16"), ("eager", "graph")


def engine_json():
    rows = []
    for part, base in (("encoder", 2.0), ("transformer", 4.0)):
        for i, (mode, precision, launch) in enumerate(
                (m, p, la) for m in MODES for p in PRECISIONS for la in LAUNCHES):
            ms = base + i / 100
            rows.append({"part": part, "mode": mode, "precision": precision, "launch": launch,
                         "p50_ms": ms, "p10_ms": ms - 0.01, "p90_ms": ms + 0.01, "gflops": 10.0 / ms})
    return {"device": "Test GPU (sm_90)", "batch": 1, "reps": 100, "warmup": 10, "rows": rows}


def torch_json():
    timing = lambda ms: {"p50_ms": ms, "p90_ms": ms * 1.1}
    return {
        "device": "Test GPU", "torch": "2.11.0", "size": "released", "batch": 1, "iters": 200,
        "warmup": 20, "precision": "fp32, TF32 off",
        "encoder": {"eager": timing(20.0), "cuda_graph": timing(4.0),
                    "compile_default": {"compile_s": 90.0, **timing(5.0)},
                    "compile_reduce-overhead": {"compile_s": 95.0, **timing(2.5)}},
        "transformer": {"eager": timing(30.0), "cuda_graph": timing(5.0),
                        "compile_default": {"compile_s": 120.0, **timing(6.0)},
                        "compile_reduce-overhead": {"error": "no result within 220 s of compiling"}},
    }


def original_json():
    """original_cswintt.py's output: encoder at batches 1 and 8, the frame at batch 1."""
    def row(part, batch, precision, variant, ms=None, **extra):
        timing = {"p50_ms": ms, "p10_ms": ms * 0.9, "p90_ms": ms * 1.1, "n": 200, "peak_mib": 100.0 * batch} if ms else {}
        return {"part": part, "batch": batch, "precision": precision, "variant": variant, **timing, **extra}
    return {
        "device": "Test GPU", "date": "2026-12-05", "torch": "2.11.0", "torchvision": "0.26.0",
        "original": {"path": "/x/orig", "commit": "27b78f9abcdef0123"}, "config": "cswintt_cls",
        "weights": "random", "iters": 200, "precisions": {"f32": "TF32 off", "bf16": "autocast"},
        "rows": [
            row("encoder", 1, "f32", "eager", 20.0, host_tensors=[]),
            row("encoder", 1, "f32", "graph", 4.0),
            row("encoder", 1, "f32", "compile", 3.0, compile_s=100.0),
            row("encoder", 1, "f32", "reduce-overhead", 1.8, compile_s=110.0, cudagraph_skips=0),
            row("encoder", 1, "bf16", "reduce-overhead", 1.0, compile_s=120.0),
            row("encoder", 1, "bf16", "compile", error="preparation (compile) stopped after 270 s"),
            row("encoder", 8, "f32", "reduce-overhead", 8.0),
            row("frame", 1, "f32", "eager", 80.0, host_tensors=["index"]),
        ],
    }


def criterion_bench(root, group, function, value, throughput, median_ns, version="new"):
    """One bench's files as criterion 0.8 writes them (only what perf_table.py reads, plus
    the fields around it)."""
    full = "/".join(x for x in (group, function, value) if x)
    d = root / group / function.replace("/", "_") / (value or "") / version
    d.mkdir(parents=True)
    meta = {"group_id": group, "function_id": function, "value_str": value, "throughput": throughput,
            "full_id": full, "directory_name": full, "title": full}
    (d / "benchmark.json").write_text(json.dumps(meta))
    est = lambda x: {"confidence_interval": {"confidence_level": 0.95, "lower_bound": x * 0.99,
                                             "upper_bound": x * 1.01},
                     "point_estimate": x, "standard_error": x / 100}
    (d / "estimates.json").write_text(json.dumps(
        {"mean": est(median_ns), "median": est(median_ns), "median_abs_dev": est(1.0),
         "slope": est(median_ns), "std_dev": est(2.0)}))


def main():
    failures = []

    def check(what, ok):
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "engine.json").write_text(json.dumps(engine_json()))
        (tmp / "torch.json").write_text(json.dumps(torch_json()))
        crit = tmp / "criterion"
        # 2 GFLOP and 1 GB in 1 ms: 2000 GFLOP/s and 1000 GB/s.
        criterion_bench(crit, "ffn", "ffn1_bias_relu/f32", None,
                        {"ElementsAndBytes": {"elements": 2_000_000_000, "bytes": 1_000_000_000}}, 1e6)
        criterion_bench(crit, "layer_norm", "layer_norm", None, {"Bytes": 2_000_000}, 2e3)
        criterion_bench(crit, "encoder", "fused/bf16", "graph", {"Elements": 14_118_027_264}, 1.5e6)
        # A previous run's copy: must not be listed twice.
        criterion_bench(crit, "layer_norm", "layer_norm", None, {"Bytes": 2_000_000}, 9e3, "base")
        out = tmp / "table.md"
        run = subprocess.run([sys.executable, str(HERE / "perf_table.py"), "--engine", str(tmp / "engine.json"),
                              "--torch", str(tmp / "torch.json"), "--criterion", str(crit), "--out", str(out)],
                             capture_output=True, text=True)
        check("perf_table.py exits 0", run.returncode == 0)
        if run.returncode != 0:
            print(run.stderr)
            return 1
        text = out.read_text()
        lines = text.splitlines()
        rows = [line for line in lines if line.startswith("| encoder (6 layers) |")
                or line.startswith("| transformer (6+6) |")]
        check("one row per engine measurement (36)", len(rows) == 36)
        check("one PyTorch row per part", sum("**PyTorch 2.11.0**" in line for line in lines) == 2)
        # encoder sequential f32 eager is 2.00 ms: eager 20 ms gives 10.00x, reduce-overhead 1.25x.
        first = next(line for line in rows if "| sequential | f32 | eager |" in line)
        check("ratios are PyTorch / ours", "| 2.000 | 5 | 10.00x | 2.00x | 2.50x | 1.25x |" in first)
        check("a failed PyTorch variant shows '-'",
              all(line.endswith("| - |") for line in rows if line.startswith("| transformer")))
        check("the failure is named", "compile (reduce-overhead): no result within 220 s" in text)
        check("best line per part", "- encoder (6 layers): ours 2.000 ms (sequential, f32, eager) against "
              "PyTorch's best, compile (reduce-overhead), 2.500 ms: 1.25x." in text)
        check("compile times", "took (compiling all four at once): encoder compile 90 s, encoder "
              "compile (reduce-overhead) 95 s, transformer compile 120 s." in text)
        check("criterion FLOP/s and GB/s", "| `ffn/ffn1_bias_relu/f32` | 1.000 ms | 2000.0 | 1000.0 |" in text)
        check("criterion bytes only", "| `layer_norm/layer_norm` | 2.00 us | - | 1000.0 |" in text)
        check("criterion ids with a value", "| `encoder/fused/bf16/graph` | 1.500 ms | 9412.0 | - |" in text)
        check("base copies ignored", text.count("`layer_norm/layer_norm`") == 1)
        # Against the original: same precision against same precision.
        (tmp / "original.json").write_text(json.dumps(original_json()))
        run = subprocess.run([sys.executable, str(HERE / "perf_table.py"), "--engine", str(tmp / "engine.json"),
                              "--original", str(tmp / "original.json")], capture_output=True, text=True)
        text = run.stdout
        check("--original alone: exits 0", run.returncode == 0)
        check("header: card, date, commit", "Card: Test GPU (sm_90); 2026-12-05." in text and "code at commit 27b78f9abcde (" in text
              and "Different cards" not in text)
        # Ours: encoder f32 fastest is sequential eager 2.00 ms; the original's best f32 is 1.8 ms.
        check("f32 row: ours best, each variant, best frames/s, ratio",
              "| encoder | 1 | f32 | 2.000 (sequential, eager) | 500 | 20.000 ms, 100 MiB | 4.000 ms, 100 MiB | "
              "3.000 ms, 100 MiB | 1.800 ms, 100 MiB | 556 (compile (reduce-overhead)) | 0.90x |" in text)
        # Ours bf16 fastest: sequential bf16 eager, 2.00 + 4/100 ms; against the original's bf16 only.
        check("bf16 against bf16", "| encoder | 1 | bf16 | 2.040 (sequential, eager) | 490 | - | - | error | "
              "1.000 ms, 100 MiB | 1000 (compile (reduce-overhead)) | 0.49x |" in text)
        check("tf32: ours only", "| encoder | 1 | tf32 | 2.020 (sequential, eager) | 495 | - | - | - | - | - | - |" in text)
        check("batch 8: the original only", "| encoder | 8 | f32 | - | - | - | - | - | 8.000 ms, 800 MiB | 1000 "
              "(compile (reduce-overhead)) | - |" in text)
        check("frame row", "| frame (backbone + transformer + heads) | 1 | f32 | - | - | 80.000 ms, 100 MiB |" in text)
        check("parts in order: encoder, transformer, frame",
              text.index("| encoder | 8 |") < text.index("| transformer | 1 |") < text.index("| frame "))
        check("errors and host tensors noted", "original encoder batch 1 bf16 compile: preparation (compile) "
              "stopped after 270 s" in text and "frame batch 1 f32 eager: host tensors fed to index" in text)
        check("compile times", "encoder b1 f32 compile 100 s" in text)
        check("no --torch: no port table", "Our PyTorch port" not in text and "vs eager" not in text)
        other = original_json()
        other["device"] = "Other GPU"
        (tmp / "other.json").write_text(json.dumps(other))
        run = subprocess.run([sys.executable, str(HERE / "perf_table.py"), "--engine", str(tmp / "engine.json"),
                              "--original", str(tmp / "other.json")], capture_output=True, text=True)
        check("different cards said", "**Different cards:**" in run.stdout)
        run = subprocess.run([sys.executable, str(HERE / "perf_table.py"), "--engine", str(tmp / "engine.json"),
                              "--original", str(tmp / "missing.json")], capture_output=True, text=True)
        check("no original.json: our rows, said plainly", run.returncode == 0
              and "The original: no results" in run.stdout and "Different cards" not in run.stdout
              and "| encoder | 1 | f32 | 2.000 (sequential, eager) | 500 | - |" in run.stdout)
        # A PyTorch run that never wrote its JSON still gives our side.
        (tmp / "torch.json").unlink()
        run = subprocess.run([sys.executable, str(HERE / "perf_table.py"), "--engine", str(tmp / "engine.json"),
                              "--torch", str(tmp / "torch.json")], capture_output=True, text=True)
        check("no torch.json: still a table", run.returncode == 0 and "| 2.000 | 5 | - | - | - | - |" in run.stdout)
        # The tracker's step (scripts/perf-tracker.sh's tracker.json) against the original's frame.
        rows = []
        for i, (mode, precision, launch) in enumerate(
                (m, p, la) for m in MODES for p in PRECISIONS for la in LAUNCHES):
            ms = 2.0 - i / 100
            rows.append({"part": "frame", "batch": 1, "mode": mode, "precision": precision,
                         "launch": launch, "p50_ms": ms, "peak_mib": 500.0,
                         "stages_ms": {"crop": 0.01, "backbone": 1.0, "transformer": 0.5, "heads": 0.1}})
        tracker = {"device": "Test GPU (sm_90)", "batch": 1, "reps": 300, "warmup": 30, "rows": rows,
                   "source": "`attnrt-infer --model TRACKER`"}
        (tmp / "tracker.json").write_text(json.dumps(tracker))
        (tmp / "jpeg.json").write_text(json.dumps({"engine": "GPU tracker", "sequences": [
            {"frames": 1000, "fps": 900.0, "fps_end_to_end": 800.0, "first_frame_s": 0.25,
             "fps_after_first": 1100.0}]}))
        run = subprocess.run([sys.executable, str(HERE / "perf_table.py"), "--engine", str(tmp / "tracker.json"),
                              "--original", str(tmp / "original.json"), "--jpeg", str(tmp / "jpeg.json")],
                             capture_output=True, text=True)
        text = run.stdout
        check("tracker: exits 0", run.returncode == 0)
        check("tracker: the source named", "`attnrt-infer --model TRACKER`" in text)
        check("tracker: the frame row against the original's",
              "| frame (backbone + transformer + heads) | 1 | f32 | 1.870 (fused, graph, 500 MiB) |" in text)
        check("tracker: streams against sequential",
              "| f32 | eager | 2.000 (500) | 1.940 (515) | 1.880 (532) | +3.1% | 0.010, 1.000, 0.500, 0.100 |" in text)
        check("tracker: the JPEG run", "800 frames/s end to end" in text and "% of the step's" in text)
        check("tracker: the JPEG run's first frame apart",
              "900 frames/s tracking (1100 after the first frame's 250 ms set-up)" in text)
    print(f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
