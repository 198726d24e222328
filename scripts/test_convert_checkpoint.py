#!/usr/bin/env python3
"""Test scripts/convert_checkpoint.py with checkpoints built here by PyTorch.

  python3 scripts/test_convert_checkpoint.py

Builds fake CSWinTT checkpoints (a training-style .pth.tar: {'net': state dict with a
'module.' prefix, backbone/head tensors, an int64 BatchNorm counter, a pickled object of
a class the converter cannot import}, which converts only with --trust-pickle; a plain
bf16 state dict; and a whole tracker, as a bare state dict like the released CSWinTT.pth
and under 'net'), converts them, and checks that every tensor survives with its name
(prefix stripped), dtype, shape and bytes, and that the metadata is right. The transformer
tensors come from the golden tiny_s1 weights when the golden files are found
($ATTNRT_GOLDEN_DIR, ../shared/golden, shared/golden), else are random; the whole tracker is
the golden tracker_s1's (its weights made by make_weights.py), else a small random one.

When $ATTNRT_INFER names a built attnrt-infer, the converted files are also run through
it on the CPU, and (with the golden files) `--check tiny_s1.golden.safetensors` and
`--check tracker_s1.golden.safetensors` (about a minute on two cores) must pass.

Exit status: 0 all checks passed; 1 a check failed; 2 cannot run (no PyTorch).
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONVERT = os.path.join(HERE, "convert_checkpoint.py")

try:
    import torch
except ImportError:
    print("test_convert_checkpoint: cannot run: PyTorch is not installed", file=sys.stderr)
    sys.exit(2)

FAILURES = []


def check(cond, what):
    if cond:
        print(f"ok    {what}")
    else:
        print(f"FAIL  {what}")
        FAILURES.append(what)


class Settings:
    """Stands for the training code's own pickled objects."""

    def __init__(self):
        self.lr = 1e-4
        self.note = "not importable by the converter"


ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file, read without the safetensors package."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        raw = bytearray(data[base + a : base + b])
        dt = ST_DTYPES[info["dtype"]]
        t = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        out[name] = t.view(dt).reshape(info["shape"])
    return out, meta


def golden_dir():
    env = os.environ.get("ATTNRT_GOLDEN_DIR")
    cands = [env] if env else []
    cands += [os.path.join(REPO, "..", "shared", "golden"), os.path.join(REPO, "shared", "golden")]
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "tiny_s1.weights.safetensors")):
            return c
    return None


def transformer_tensors(gdir):
    if gdir:
        t, _ = read_safetensors(os.path.join(gdir, "tiny_s1.weights.safetensors"))
        return {k: v.clone() for k, v in t.items()}
    # Random tiny transformer (c=64, ff=128, 2+2 layers, S=24, T=8).
    g = torch.Generator().manual_seed(0)
    c, ff = 64, 128
    r = lambda *s: torch.rand(*s, generator=g) - 0.5  # noqa: E731
    t = {}
    for w, n in ((1, 1407), (2, 1317), (4, 1302)):
        t[f"transformer.rel_bias_table{w}"] = r(n)
    for i in range(2):
        p = f"transformer.transformer.{i}."
        t[p + "qkv_embedding.weight"], t[p + "qkv_embedding.bias"] = r(3 * c, c), r(3 * c)
        t[p + "output_linear.weight"], t[p + "output_linear.bias"] = r(c, c), r(c)
        t[p + "feedforward.0.weight"], t[p + "feedforward.0.bias"] = r(ff, c), r(ff)
        t[p + "feedforward.3.weight"], t[p + "feedforward.3.bias"] = r(c, ff), r(c)
        for k in ("norm1", "norm2"):
            t[p + k + ".weight"], t[p + k + ".bias"] = 1 + r(c) / 10, r(c) / 10
        p = f"transformer.transformer_post.{i}."
        for a in ("self_attn", "multihead_attn"):
            t[p + a + ".in_proj_weight"], t[p + a + ".in_proj_bias"] = r(3 * c, c), r(3 * c)
            t[p + a + ".out_proj.weight"], t[p + a + ".out_proj.bias"] = r(c, c), r(c)
        t[p + "linear1.weight"], t[p + "linear1.bias"] = r(ff, c), r(ff)
        t[p + "linear2.weight"], t[p + "linear2.bias"] = r(c, ff), r(c)
        for k in ("norm1", "norm2", "norm3"):
            t[p + k + ".weight"], t[p + k + ".bias"] = 1 + r(c) / 10, r(c) / 10
    t["transformer.post_norm.weight"], t["transformer.post_norm.bias"] = 1 + r(c) / 10, r(c) / 10
    return t


def tracker_extras(c):
    g = torch.Generator().manual_seed(1)
    return {
        "backbone.body.conv1.weight": torch.randn(8, 3, 7, 7, generator=g),
        "backbone.body.bn1.weight": torch.ones(8),
        "backbone.body.bn1.running_mean": torch.zeros(8),
        "backbone.body.bn1.num_batches_tracked": torch.tensor(1234, dtype=torch.int64),
        "bottleneck.weight": torch.randn(c, 16, 1, 1, generator=g),
        "bottleneck.bias": torch.randn(c, generator=g),
        "query_embed.weight": torch.randn(1, c, generator=g),
        "box_head.conv1_tl.0.weight": torch.randn(4, c, 3, 3, generator=g),
        "cls_head.layers.0.weight": torch.randn(c, c, generator=g),
    }


def random_tracker(transformer, c=64):
    """A small whole tracker around `transformer`: a 2+1+1-block backbone 4 to 16 wide."""
    g = torch.Generator().manual_seed(2)
    t = dict(transformer)
    r = lambda *s: (torch.rand(*s, generator=g) - 0.5) / 4  # noqa: E731

    def conv_bn(conv, bn, o, i, k, bias=False):
        t[conv + ".weight"] = r(o, i, k, k)
        if bias:
            t[conv + ".bias"] = r(o)
        t[bn + ".weight"], t[bn + ".bias"] = 0.5 + torch.rand(o, generator=g) / 2, r(o)
        t[bn + ".running_mean"], t[bn + ".running_var"] = r(o), 0.5 + torch.rand(o, generator=g)
        t[bn + ".num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)

    b = "backbone.0.body."
    conv_bn(b + "conv1", b + "bn1", 8, 3, 7)
    ch = 8
    for layer, (width, blocks) in enumerate(zip((4, 8, 16), (2, 1, 1)), start=1):
        for i in range(blocks):
            p = f"{b}layer{layer}.{i}."
            inp = ch if i == 0 else 4 * width
            for n, (o, ci, k) in enumerate(((width, inp, 1), (width, width, 3), (4 * width, width, 1)), start=1):
                conv_bn(p + f"conv{n}", p + f"bn{n}", o, ci, k)
            if i == 0:
                conv_bn(p + "downsample.0", p + "downsample.1", 4 * width, ch, 1)
        ch = 4 * width
    t["bottleneck.weight"], t["bottleneck.bias"] = r(c, ch, 1, 1), r(c)
    for side in ("tl", "br"):
        inp = c
        for i, o in enumerate((16, 8), start=1):
            conv_bn(f"box_head.conv{i}_{side}.0", f"box_head.conv{i}_{side}.1", o, inp, 3, bias=True)
            inp = o
        t[f"box_head.conv3_{side}.weight"], t[f"box_head.conv3_{side}.bias"] = r(1, inp, 1, 1), r(1)
    for i, o in enumerate((c, c, 1)):
        t[f"cls_head.layers.{i}.weight"], t[f"cls_head.layers.{i}.bias"] = r(o, c), r(o)
    t["query_embed.weight"] = r(1, c)
    return t


def golden_tracker(gdir, tmp):
    """tracker_s1's weights (made by make_weights.py from the golden file's recipe), or None."""
    golden = os.path.join(gdir, "tracker_s1.golden.safetensors") if gdir else None
    maker = os.path.join(gdir, "make_weights.py") if gdir else None
    if not (golden and os.path.isfile(golden) and os.path.isfile(maker)):
        return None, None
    out = os.path.join(tmp, "tracker_s1.weights.safetensors")
    p = subprocess.run([sys.executable, maker, golden, out], capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stdout + p.stderr)
        return None, None
    tensors, _ = read_safetensors(out)
    return tensors, golden


def convert(src, dst, *extra):
    p = subprocess.run(
        [sys.executable, CONVERT, src, "-o", dst, *extra], capture_output=True, text=True
    )
    return p.returncode, p.stdout + p.stderr


def compare(original, path, label, tracker=False):
    got, meta = read_safetensors(path)
    check(set(got) == set(original), f"{label}: every tensor kept, names without 'module.' ({len(got)})")
    same = all(
        k in got
        and got[k].dtype == v.dtype
        and list(got[k].shape) == list(v.shape)
        and torch.equal(got[k], v.contiguous())
        for k, v in original.items()
    )
    check(same, f"{label}: dtypes, shapes and values identical")
    want = {
        "format": "cswintt-tracker" if tracker else "cswintt-transformer",
        "d_model": "64",
        "nhead": "8",
        "dim_feedforward": "128",
        "enc_layers": "2",
        "dec_layers": "2",
        "search_size": "24",
        "template_size": "8",
        "window_sizes": "1,2,4,8,1,2,4,8",
    }
    if tracker:
        want.update(search_crop="384", template_crop="128", search_factor="5.0", template_factor="2.0")
    check(all(meta.get(k) == v for k, v in want.items()), f"{label}: metadata {meta}")
    try:
        from safetensors.torch import load_file
    except ImportError:
        print(f"skip  {label}: safetensors package absent, no cross-check")
    else:
        lib = load_file(path)
        check(
            set(lib) == set(got) and all(torch.equal(lib[k], got[k]) for k in got),
            f"{label}: the safetensors package reads the same tensors",
        )


def run_infer(args, label):
    exe = os.environ.get("ATTNRT_INFER")
    if not exe:
        print(f"skip  {label}: set ATTNRT_INFER to a built attnrt-infer to run it")
        return
    p = subprocess.run([exe, *args], capture_output=True, text=True)
    check(p.returncode == 0, f"{label}: attnrt-infer {' '.join(args)} -> exit {p.returncode}")
    if p.returncode != 0:
        print(p.stdout + p.stderr)


def main():
    gdir = golden_dir()
    print(f"golden files: {gdir or 'not found, random transformer tensors'}")
    tr = transformer_tensors(gdir)
    extras = tracker_extras(64)
    with tempfile.TemporaryDirectory() as d:
        # 1. A training-style checkpoint: 'net' with 'module.' prefixes, other entries
        #    including an object of a class the converter cannot import.
        net = {"module." + k: v for k, v in {**tr, **extras}.items()}
        ckpt = {"epoch": 500, "net_type": "CSWinTT", "net": net, "settings": Settings(), "stats": None}
        src = os.path.join(d, "CSWinTT_ep0500.pth.tar")
        torch.save(ckpt, src)
        dst = os.path.join(d, "cswintt.safetensors")
        code, log = convert(src, dst)
        check(
            code == 2 and "--trust-pickle" in log and not os.path.exists(dst),
            f"a checkpoint with pickled objects needs --trust-pickle -> exit {code}",
        )
        code, log = convert(src, dst, "--trust-pickle")
        check(code == 0, f"convert training checkpoint with --trust-pickle -> exit {code}")
        if code != 0:
            print(log)
        else:
            compare({**tr, **extras}, dst, "f32 checkpoint")
            run_infer(["--model", dst, "--device", "cpu", "--iters", "1", "--warmup", "0"], "f32 model runs")
            if gdir:
                golden = os.path.join(gdir, "tiny_s1.golden.safetensors")
                run_infer(["--model", dst, "--device", "cpu", "--check", golden], "f32 model passes --check")

        # 2. A plain bf16 state dict, no prefix, no 'net'.
        plain = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in {**tr, **extras}.items()}
        src = os.path.join(d, "plain_bf16.pth")
        torch.save(plain, src)
        dst = os.path.join(d, "bf16.safetensors")
        code, log = convert(src, dst)
        check(code == 0, f"convert plain bf16 state dict -> exit {code}")
        if code != 0:
            print(log)
        else:
            compare(plain, dst, "bf16 state dict")
            run_infer(["--model", dst, "--device", "cpu", "--iters", "1", "--warmup", "0"], "bf16 model runs")

        # 3. Sizes given on the command line must agree with the shapes.
        code, log = convert(src, os.path.join(d, "x.safetensors"), "--search-size", "16")
        check(code == 1 and "search" in log, f"a wrong --search-size is refused -> exit {code}")

        # 4. Not a CSWinTT checkpoint: none of the tracker's names.
        src = os.path.join(d, "other.pth")
        torch.save({"net": {"fc.weight": torch.zeros(2, 2)}}, src)
        code, log = convert(src, os.path.join(d, "y.safetensors"))
        check(code == 1 and "none of the tracker's" in log, f"a non-CSWinTT checkpoint is refused -> exit {code}")
        torch.save({}, src)
        code, log = convert(src, os.path.join(d, "y.safetensors"))
        check(code == 1 and "none of the tracker's" in log, f"an empty state dict is refused -> exit {code}")

        # 5. A missing file.
        code, log = convert(os.path.join(d, "missing.pth.tar"), os.path.join(d, "z.safetensors"))
        check(code == 2, f"a missing checkpoint -> exit {code}")

        # 6. A whole tracker, as the released bare state dict and under 'net' with plain
        #    entries beside it (both load with weights_only).
        whole, golden = golden_tracker(gdir, d)
        if whole is None:
            print("note: no golden tracker_s1; a small random tracker instead")
            whole = random_tracker(tr)
        for label, obj in (("bare tracker state dict", whole), ("tracker under 'net'", {"net": whole, "epoch": 500})):
            src = os.path.join(d, "CSWinTT.pth")
            torch.save(obj, src)
            dst = os.path.join(d, "tracker.safetensors")
            code, log = convert(src, dst, "--update-interval", "25")
            check(code == 0 and "whole tracker" in log, f"convert {label} -> exit {code}")
            if code != 0:
                print(log)
                continue
            compare(whole, dst, label, tracker=True)
            _, meta = read_safetensors(dst)
            check(meta.get("update_interval") == "25", f"{label}: --update-interval stored")
        if golden:
            run_infer(["--model", dst, "--device", "cpu", "--check", golden], "the converted tracker passes --check")
        else:
            run_infer(["--model", dst, "--device", "cpu", "--iters", "1", "--warmup", "0"], "the converted tracker runs")

    if FAILURES:
        print(f"FAILED: {len(FAILURES)} check(s)")
        return 1
    print("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
