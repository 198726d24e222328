#!/usr/bin/env python3
"""The parts of scripts/compare_loss_curves.py that need no PyTorch: the attnrt job file (and
that attnrt-train accepts it, when a release build is there), reading attnrt-train's step
lines, the comparison and the tables, and the logs that plot_loss_curves.py reads back.

  python3 scripts/test_compare_loss_curves.py
"""
import os
import struct
import subprocess
import sys
import tempfile
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare_loss_curves as c  # noqa: E402
import plot_loss_curves  # noqa: E402

ATTNRT_OUTPUT = """job 'alexnet': alexnet on tensors:/x/data.safetensors (64 samples), batch 16, 4 iterations
step      1/4  loss 2.3026  acc 0.062  10 samples/s
step      2/4  loss 2.2512  acc 0.125  11 samples/s
step      3/4  loss 2.1001  acc 0.250  11 samples/s
step      4/4  loss 1.9500  acc 0.312  12 samples/s
done: 4 steps, loss 1.9500, accuracy 0.312, 12 samples/s, 5.30 s
"""


def test_job_text():
    text = c.job_text("alexnet", "/d/data.safetensors", "/d/w.safetensors", 10, 16, 40, "sgd", 0.01)
    job = tomllib.loads(text)["job"][0]
    assert job == {"name": "alexnet", "model": "alexnet", "dataset": "tensors:/d/data.safetensors",
                   "classes": 10, "init_weights": "/d/w.safetensors", "batch_size": 16,
                   "iterations": 40, "optimizer": "sgd", "lr": 0.01, "dropout": 0.0}, job
    # Only AlexNet has dropout layers: the key is an error elsewhere.
    job = tomllib.loads(c.job_text("resnet50", "d", "w", 10, 16, 40, "adamw", 1e-3))["job"][0]
    assert "dropout" not in job and job["lr"] == 1e-3


def test_parse_compare_and_tables():
    ours = c.parse_steps(ATTNRT_OUTPUT)
    assert ours == [(1, 2.3026, 0.062), (2, 2.2512, 0.125), (3, 2.1001, 0.25), (4, 1.95, 0.312)], ours
    theirs = [(1, 2.30258, 0.0625), (2, 2.2510, 0.125), (3, 2.1101, 0.25)]
    diffs = c.compare(ours, theirs)
    assert [d[0] for d in diffs] == [1, 2, 3]
    assert abs(diffs[2][3] - 0.01 / 2.1101) < 1e-12
    row = c.summary_row("alexnet", "cpu (fallback)", diffs)
    assert row["max_rel_step"] == 3 and row["steps"] == 3 and row["step1_rel"] < 1e-5, row
    table = c.summary_table([row, c.summary_row("resnet50", "0", [])])
    assert "alexnet" in table and "cpu (fallback)" in table and "resnet50" in table, table
    # A control run (PyTorch against itself) adds its largest difference and its step.
    twin = c.compare([(1, 2.30258, 0.0625), (2, 2.2520, 0.125)], theirs)
    row = c.summary_row("alexnet", "0", diffs, twin)
    assert row["control_max_rel_step"] == 2 and abs(row["control_max_rel"] - 0.001 / 2.251) < 1e-12
    table = c.summary_table([row, c.summary_row("resnet50", "0", [])]).splitlines()
    assert "torch/torch" in table[0] and table[1].split()[-2:] == ["4.44e-04", "2"], table
    side = c.side_by_side("alexnet", "0", diffs)
    assert side.splitlines()[2].split()[:3] == ["1", "2.3026", "2.3026"], side


def test_logs_read_back_and_plot():
    rows = [(1, 2.302585, 0.0625), (2, 2.1, 0.25)]
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "x.log")
        with open(log, "w") as f:
            f.write(c.log_lines(rows, 2))
        back = plot_loss_curves.read(log)
        assert back == [(1, 2.302585, 0.062), (2, 2.1, 0.25)], back
        svg = os.path.join(d, "x.svg")
        plot_loss_curves.write_svg(svg, [("pytorch", rows), ("attnrt", back)], 2, titles=("a", "b"))
        assert open(svg).read().count("<polyline") == 4


def safetensors_bytes(tensors, meta):
    """A safetensors file of (name, dtype, shape, format, values)."""
    header, data = {}, b""
    for name, dtype, shape, fmt, values in tensors:
        raw = struct.pack(f"<{len(values)}{fmt}", *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    header["__metadata__"] = meta
    import json
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_attnrt_reads_the_data_file_format():
    """attnrt-train trains an MLP on a data file laid out as make_data writes one (images
    (N, 3, S, S) f32, I64 labels, `classes` metadata), when a release build is there."""
    binary = os.path.join(HERE, "..", "target", "release", "attnrt-train")
    if not os.path.isfile(binary):
        print("skipped: no target/release/attnrt-train")
        return
    n, s = 8, 4
    images = [((i * 7) % 13) / 13.0 for i in range(n * 3 * s * s)]
    labels = [i % 3 for i in range(n)]
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "data.safetensors")
        with open(data, "wb") as f:
            f.write(safetensors_bytes([("images", "F32", [n, 3, s, s], "f", images),
                                       ("labels", "I64", [n], "q", labels)], {"classes": "3"}))
        job = os.path.join(d, "j.toml")
        with open(job, "w") as f:
            f.write(f'[[job]]\nname = "m"\nmodel = "mlp:8"\ndataset = "tensors:{data}"\n'
                    "batch_size = 4\niterations = 3\noptimizer = \"sgd\"\nlr = 0.01\n")
        p = subprocess.run([binary, "--jobs", job, "--gpus", "cpu", "--log-every", "1"],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        steps = c.parse_steps(p.stdout + p.stderr)
        assert [r[0] for r in steps] == [1, 2, 3], p.stderr


if __name__ == "__main__":
    for name, test in list(globals().items()):
        if name.startswith("test_"):
            test()
            print(f"{name}: ok")
