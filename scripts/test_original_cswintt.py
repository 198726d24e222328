#!/usr/bin/env python3
"""Tests scripts/original_cswintt.py's parts that need no PyTorch: the plan of configurations,
the statistics, the stand-ins for easydict and PyYAML, the safetensors header, the config from
metadata, the tolerances and the printed table.

  python3 scripts/test_original_cswintt.py

With ATTNRT_ORIGINAL=DIR (a checkout of the original CSWinTT repository) and PyTorch importable,
it also checks, on PyTorch's `meta` device standing in for a GPU, that the original fed host
index tensors to device operations before move_host_tensors and none after, and runs
`original_cswintt.py --validate` on the golden files on the CPU (a few minutes). Exit status 0
when every check passes.
"""
import json
import os
import pathlib
import struct
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import original_cswintt as oc  # noqa: E402
import torch_timing  # noqa: E402

# The forms the original's experiments/cswintt_cls/baseline_cs.yaml uses.
YAML = """\
DATA:
  MAX_SAMPLE_INTERVAL:
  - 200
  MEAN:
  - 0.485
  - 0.456
  SEARCH:
    FACTOR: 5.0
    SIZE: 384
  SAMPLER_MODE: trident_pro
MODEL:
  BACKBONE:
    DILATION: false
    OUTPUT_LAYERS:
    - layer3
  HIDDEN_DIM: 256   # a comment
TEST:
  UPDATE_INTERVALS:
    UAV: [ 200 ]
    VOT: [ 25, 50 ]
  WEIGHT_DECAY: 0.00001
"""


# Runs in a child with PyTorch: the tiny network on the meta device, each part once under
# host_tensor_ops, without and with move_host_tensors. Prints {"before": {part: ops}, "after": ...}.
HOST_TENSORS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import original_cswintt as oc
orig = oc.import_original(sys.argv[2])
move = oc.move_host_tensors
found = {}
for when in ("before", "after"):
    oc.move_host_tensors = (lambda net, device: []) if when == "before" else move
    net, _ = oc.build_net(orig, oc.SIZES["tiny"], "meta")
    found[when] = {p: oc.host_tensor_ops(oc.part_callable(orig, net, p, 1, "meta"), "meta") for p in oc.PARTS}
print(json.dumps(found))
"""


def main():
    failures = []

    def check(what, ok):
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    def raises(fn, text):
        try:
            fn()
        except oc.SetupError as e:
            return text in str(e)
        return False

    configs = oc.plan(["encoder", "transformer", "frame"], [8, 1], ["f32", "bf16"],
                      list(oc.VARIANTS), cuda=True)
    check("plan: 2 parts x 2 batches + frame at batch 1, x 2 precisions x 4 variants",
          len(configs) == (2 * 2 + 1) * 2 * 4)
    check("plan: batch 1 first, then by part", [c["batch"] for c in configs[:24]] == [1] * 24
          and configs[0]["part"] == "encoder" and configs[16]["part"] == "frame")
    check("plan: the frame only at batch 1", all(c["batch"] == 1 for c in configs if c["part"] == "frame"))
    cpu = oc.plan(["encoder"], [1], ["f32"], list(oc.VARIANTS), cuda=False)
    check("plan: no CUDA graph without a GPU", [c["variant"] for c in cpu] == ["eager", "compile", "reduce-overhead"])
    check("plan: an unknown variant is named",
          raises(lambda: oc.plan(["encoder"], [1], ["f32"], ["fast"], True), "unknown variant fast"))
    check("plan: a bad batch is named", raises(lambda: oc.plan(["encoder"], [0], ["f32"], ["eager"], True), "--batches"))

    s = torch_timing.summarize([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0])
    check("summarize: p50, p10, p90, n", s == {"p50_ms": 6.0, "p10_ms": 2.0, "p90_ms": 10.0, "n": 11})

    y = oc.parse_simple_yaml(YAML)
    check("yaml: nested mappings and scalars", y["DATA"]["SEARCH"] == {"FACTOR": 5.0, "SIZE": 384}
          and y["MODEL"]["BACKBONE"]["DILATION"] is False and y["DATA"]["SAMPLER_MODE"] == "trident_pro")
    check("yaml: lists at the key's indent", y["DATA"]["MAX_SAMPLE_INTERVAL"] == [200]
          and y["DATA"]["MEAN"] == [0.485, 0.456] and y["MODEL"]["BACKBONE"]["OUTPUT_LAYERS"] == ["layer3"])
    check("yaml: flow lists, comments, exponents", y["TEST"]["UPDATE_INTERVALS"] == {"UAV": [200], "VOT": [25, 50]}
          and y["MODEL"]["HIDDEN_DIM"] == 256 and y["TEST"]["WEIGHT_DECAY"] == 1e-5)
    try:
        oc.parse_simple_yaml("A:\n  B: 1\n C: 2\n")
        check("yaml: bad indentation is an error", False)
    except ValueError as e:
        check("yaml: bad indentation is an error", "C: 2" in str(e))

    d = oc.EasyDict({"MODEL": {"BACKBONE": {"TYPE": "resnet50"}}})
    d.TRAIN = {"LR": 1e-4}
    check("EasyDict: attributes, nested dicts converted", d.MODEL.BACKBONE.TYPE == "resnet50"
          and isinstance(d.TRAIN, oc.EasyDict) and d["TRAIN"].LR == 1e-4)
    check("EasyDict: a missing key is an AttributeError (hasattr works)", not hasattr(d.MODEL, "VOT"))

    header = {"__metadata__": {"d_model": "64"}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    h = json.dumps(header).encode()
    data = struct.pack("<Q", len(h)) + h + b"\0" * 8
    tensors, md, base = oc.safetensors_header(data, "x.safetensors")
    check("safetensors header", list(tensors) == ["a"] and md == {"d_model": "64"} and base == 8 + len(h))
    check("safetensors: garbage is named", raises(lambda: oc.safetensors_header(b"\x05\0\0\0\0\0\0\0{{{{{", "bad.st"),
                                                  "bad.st: not a safetensors file"))

    md = {"d_model": "64", "nhead": "8", "dim_feedforward": "128", "enc_layers": "2", "dec_layers": "2",
          "search_size": "24", "template_size": "8", "window_sizes": "1,2,4,8,1,2,4,8"}
    check("metadata -> size", oc.overrides_from_metadata(md, "w") == {"d_model": 64, "dim_feedforward": 128, "layers": 2})
    check("metadata: unequal layer counts refused",
          raises(lambda: oc.overrides_from_metadata({**md, "dec_layers": "3"}, "w"), "enc_layers 2 != dec_layers 3"))
    check("metadata: sizes the original cannot build refused",
          raises(lambda: oc.overrides_from_metadata({**md, "search_size": "20"}, "w"), "search_size is 20"))
    check("metadata: missing fields named",
          raises(lambda: oc.overrides_from_metadata({"d_model": "64"}, "w.st"), "w.st: metadata lacks dim_feedforward"))

    check("tracker tolerance: 4x the recorded error", oc.tracker_tolerance({"feat": 6e-6}, "feat") == 2.4e-5)
    check("tracker tolerance: at least 1e-5", oc.tracker_tolerance({"pos": 0.0}, "pos") == 1e-5
          and oc.tracker_tolerance({}, "mask") == 1e-5)

    rows = [{"part": "encoder", "batch": 1, "precision": "f32", "variant": "eager", "p50_ms": 20.0, "peak_mib": 300.0},
            {"part": "encoder", "batch": 1, "precision": "f32", "variant": "reduce-overhead", "error": "stopped"}]
    text = oc.table({"rows": rows})
    check("printed table: a column per variant, errors shown",
          "reduce-overhead" in text.splitlines()[0] and "20.000 ms 300MiB" in text and "error" in text)

    original = os.environ.get("ATTNRT_ORIGINAL")
    golden = HERE.parent.parent / "shared" / "golden"
    if original:
        run = subprocess.run([sys.executable, "-c", HOST_TENSORS, str(HERE), original], capture_output=True, text=True)
        found = json.loads(run.stdout.splitlines()[-1]) if run.returncode == 0 else None
        check("host index tensors: fed to device ops before the move, in every part",
              found is not None and all("index" in found["before"][p] for p in oc.PARTS))
        check("host index tensors: none after the move", found is not None
              and all(found["after"][p] == [] for p in oc.PARTS))
        if found is None:
            print(run.stderr[-3000:])
        run = subprocess.run([sys.executable, str(HERE / "original_cswintt.py"), "--original", original,
                              "--validate", str(golden), "--device", "cpu"], capture_output=True, text=True)
        check("--validate on the golden files (CPU)", run.returncode == 0 and "validation ok" in run.stdout)
        if run.returncode != 0:
            print(run.stdout[-3000:], run.stderr[-3000:])
    else:
        print("skipped: --validate on the golden files (set ATTNRT_ORIGINAL to a checkout of the original)")
    print(f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
