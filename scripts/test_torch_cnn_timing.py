#!/usr/bin/env python3
"""The parts of scripts/torch_cnn_timing.py that need no PyTorch: the configurations,
AlexNet's resized small rows, attnrt's job and output parsing, and the table.

  python3 scripts/test_torch_cnn_timing.py
"""
import os
import sys
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_cnn_timing as t  # noqa: E402


def test_configs_and_sizes():
    cfgs = t.configs(t.MODELS, [224, 32], ["f32", "bf16"], ["eager", "compile"])
    assert len(cfgs) == 40 and len(set(cfgs)) == 40
    assert t.input_side("alexnet", 32) == 64 and t.input_side("alexnet", 224) == 224
    assert t.input_side("resnet50", 32) == 32
    r = t.row("alexnet", 32, "f32", "eager", 64, {"p50_ms": 32.0, "p10_ms": 31, "p90_ms": 33, "n": 20}, 1234.5)
    assert r["input"] == 64 and abs(r["samples_per_s"] - 2000.0) < 1e-9 and r["peak_mib"] == 1234.5


def test_attnrt_job_and_output():
    job = tomllib.loads(t.attnrt_job("alexnet", 32, 64, 20, "bf16"))["job"][0]
    assert job["dataset"] == "synthetic:1344,64" and job["iterations"] == 21, job
    assert job["precision"] == "bf16" and job["classes"] == 1000 and job["batch_size"] == 64
    out = ("done: 21 steps, loss 6.9, accuracy 0.000, 1800 samples/s (2047 after the first step), 0.75 s\n"
           "loader: 9000 samples/s; the steps after the first waited 0.01 s for batches (1.3% of their time; both in steady state, once batches come in reused buffers)\n")
    assert t.parse_attnrt(out) == (2047.0, False, None)
    limited = out.replace("buffers)\n", "buffers): the loader, not the step, limits this run (x)\n")
    assert t.parse_attnrt(limited) == (2047.0, True, None)
    memory = out + "gpu memory: peak in use during the steps 1536 MiB on GPU 0 (the allocator's high-water mark)\n"
    assert t.parse_attnrt(memory) == (2047.0, False, 1536.0)
    assert t.parse_attnrt("attnrt-train: error") == (None, False, None)
    host = ("host: 4.21 ms a step enqueueing GPU 0's work after the first step, 2.95 ms of it "
            "copying the shard into page-locked memory\n")
    assert t.parse_host(out + host) == (4.21, 2.95) and t.parse_host(out) is None
    host = ("host: 4.21 ms a step enqueueing GPU 0's work after the first step, 1.50 ms of it "
            "copying the shard into page-locked memory, 0.02 waiting for the previous shard's "
            "copy, 2.40 enqueueing forward and backward, 0.29 the rest (exchange, optimizer, stats)\n")
    assert t.parse_host(out + host) == (4.21, 1.50, 0.02, 2.40, 0.29), t.parse_host(out + host)
    host = host.replace(" stats)\n", " stats); beside it, 1.48 ms staging the next step's shard "
                        "on another thread (100% of the shards were staged so)\n")
    assert t.parse_host(out + host) == (4.21, 1.50, 0.02, 2.40, 0.29, 1.48), t.parse_host(out + host)
    job = tomllib.loads(t.attnrt_job("alexnet", 224, 64, 20, "f32-transforms"))["job"][0]
    assert job["precision"] == "f32" and job["f32_conv_transforms"] is True, job
    assert "f32_conv_transforms" not in tomllib.loads(t.attnrt_job("alexnet", 224, 64, 20, "f32"))["job"][0]


def test_table():
    timing = {"p50_ms": 50.0}
    rows = [t.row("resnet50", 224, p, m, 64, timing, 9000.0) for p in ("f32", "bf16") for m in ("eager", "compile")]
    rows.append(t.row("alexnet", 32, "f32", "eager", 64, error="OutOfMemoryError"))
    ours = [t.row("resnet50", 224, "f32", "attnrt", 64, {"p50_ms": 40.0}),
            t.row("alexnet", 32, "bf16", "attnrt", 64, error="the CNN GPU path is not built yet")]
    text = t.table(rows, ours)
    lines = text.splitlines()
    assert lines[0].startswith("| model | size | torch eager f32") and len(lines) == 4, text
    r50 = [l for l in lines if l.startswith("| resnet50")][0]
    assert "1,280 (9,000)" in r50 and "1,600 (-)" in r50 and "1.25x" in r50, r50
    # Against the faster of eager and compile: a compiled row twice as fast halves the ratio.
    faster = [dict(r, samples_per_s=2 * r["samples_per_s"]) if r["mode"] == "compile" else r for r in rows]
    cells = [c.strip() for c in [l for l in t.table(faster, ours).splitlines() if l.startswith("| resnet50")][0].split("|")]
    assert cells[-5:-1] == ["1.25x", "-", "0.62x", "-"], cells
    reserved = t.row("resnet50", 224, "bf16", "eager", 64, timing, 3069.4, reserved_mib=3712.0)
    assert t.fmt_mem(reserved) == "3,069 / 3,712", t.fmt_mem(reserved)
    alex = [l for l in lines if l.startswith("| alexnet")][0]
    assert "32 (as 64)" in alex and "error" in alex, alex
    # f32 with FFT and Winograd allowed: its own column, and the f32 the ratios take.
    fast = ours + [t.row("resnet50", 224, "f32-transforms", "attnrt", 64, {"p50_ms": 25.0})]
    lines = t.table(rows, fast).splitlines()
    assert "attnrt f32-transforms" in lines[0] and "f32-transforms vs eager" in lines[0], lines[0]
    cells = [c.strip() for c in [l for l in lines if l.startswith("| resnet50")][0].split("|")]
    assert cells[7:10] == ["1,600 (-)", "2,560 (-)", "-"] and cells[10] == "2.00x", cells
    # Eager with the batch uploaded each step: two columns and a ratio pair of their own.
    uploaded = [t.row("resnet50", 224, p, "eager-upload", 64, {"p50_ms": 80.0}) for p in ("f32", "bf16")]
    lines = t.table(rows + uploaded, ours).splitlines()
    assert "torch eager-upload f32" in lines[0] and lines[0].endswith("f32 vs eager-upload | bf16 vs eager-upload |"), lines[0]
    cells = [c.strip() for c in [l for l in lines if l.startswith("| resnet50")][0].split("|")]
    assert cells[7:9] == ["800 (-)", "800 (-)"] and cells[-3:-1] == ["2.00x", "-"], cells


def test_attnrt_rows_report_a_failed_run():
    """A run that fails (here: no GPU, or no CNN GPU path) is an error row with its reason."""
    import tempfile
    binary = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "attnrt-train")
    if not os.path.isfile(binary):
        print("skipped: no target/release/attnrt-train")
        return
    with tempfile.TemporaryDirectory() as d:
        rows = t.attnrt_rows(binary, ["shufflenet_v2_x1_0"], [32], ["f32"], 2, 1, d)
    if rows[0]["samples_per_s"] is None:
        assert rows[0]["error"], rows
    else:
        assert rows[0]["samples_per_s"] > 0, rows


if __name__ == "__main__":
    for name, test in list(globals().items()):
        if name.startswith("test_"):
            test()
            print(f"{name}: ok")
