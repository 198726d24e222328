#!/usr/bin/env python3
"""Convert a CSWinTT checkpoint (.pth or .pth.tar) to safetensors for attnrt.

Reads the state dict (the released CSWinTT.pth is a bare state dict; training checkpoints
hold it under `net`), strips a DataParallel `module.` prefix, and writes EVERY tensor with
its dtype kept, plus the metadata attnrt reads: d_model, nhead, dim_feedforward,
enc_layers, dec_layers, search_size, template_size, window_sizes (inferred from the
tensor shapes; the options below override and are checked against the shapes). A whole
tracker (backbone, bottleneck, box_head, cls_head, query_embed) is written with format
`cswintt-tracker` and its crop sizes and factors; a transformer alone with format
`cswintt-transformer`.

Usage:
  python3 scripts/convert_checkpoint.py CSWinTT.pth [-o cswintt.safetensors]
      [--nhead 8] [--window-sizes 1,2,4,8,1,2,4,8] [--search-size 24] [--template-size 8]
      [--update-interval N] [--trust-pickle]

Needs PyTorch; writes safetensors itself (no extra package). The checkpoint is read with
`torch.load(weights_only=True)`, which unpickles tensors and plain containers only.
Training checkpoints also pickle objects of the original code base (settings,
constructors), which that refuses: the converter then stops and says so. `--trust-pickle`
unpickles such a file in full, with inert stand-ins for classes it cannot import; only use
it on files you trust (unpickling can run code).

Exit status: 0 written; 1 the checkpoint is not a CSWinTT checkpoint or is inconsistent;
2 bad usage, an unreadable file, or a file that needs --trust-pickle.
"""
import argparse
import json
import os
import pickle
import struct
import sys
import types

FORMAT = "cswintt-transformer"
TRACKER_FORMAT = "cswintt-tracker"
BIAS_WINDOWS = (1, 2, 4)
# Names of the tracker's parts: a checkpoint holding none of them is not CSWinTT's.
TRACKER_PREFIXES = ("transformer.", "backbone.", "bottleneck.", "box_head.", "cls_head.", "query_embed.")
# A whole tracker holds all of these (attnrt tells a tracker by the first).
TRACKER_MARKERS = ("backbone.0.body.conv1.weight", "bottleneck.weight", "box_head.", "cls_head.", "query_embed.weight")
FEATURE_STRIDE = 16

DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


class ConvertError(Exception):
    pass


class NeedsTrust(Exception):
    """The safe loader refused the file; it loads only with --trust-pickle."""


# ---- loading ----------------------------------------------------------------------


class _Stub:
    """Stands in for a class of the original code base that is not importable here."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Stub,), {"__module__": module})


_tolerant_pickle = types.ModuleType("_tolerant_pickle")
_tolerant_pickle.Unpickler = _TolerantUnpickler
_tolerant_pickle.load = pickle.load
_tolerant_pickle.loads = pickle.loads
_tolerant_pickle.__name__ = "pickle"


def load_state_dict(path, trust_pickle=False):
    """The checkpoint's state dict (bare, or under `net`), tensors only, `module.` stripped."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as safe_err:
        if not trust_pickle:
            # PyTorch's message is long; its "Unsupported global" line names the object.
            found = [ln.strip() for ln in str(safe_err).splitlines() if "Unsupported global" in ln]
            what = f" ({found[0]})" if found else ""
            raise NeedsTrust(
                "torch.load(weights_only=True) refuses it: it pickles objects other than tensors"
                f"{what}. If you trust the file, pass --trust-pickle to unpickle it in full"
            ) from safe_err
        print(
            "convert_checkpoint: note: --trust-pickle: unpickling in full, with stand-ins for "
            "classes that cannot be imported",
            file=sys.stderr,
        )
        ckpt = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle
        )
    if isinstance(ckpt, dict) and "net" in ckpt:
        state = ckpt["net"]
    else:
        state = ckpt
    if hasattr(state, "state_dict") and callable(state.state_dict):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise ConvertError(f"{path}: neither a 'net' state dict nor a state dict ({type(state).__name__})")
    out = {}
    skipped = []
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            skipped.append(k)
            continue
        name = k[len("module."):] if k.startswith("module.") else k
        if name in out:
            raise ConvertError(f"{path}: tensor '{name}' appears twice (with and without 'module.')")
        out[name] = v
    if skipped:
        print(f"convert_checkpoint: note: skipped {len(skipped)} non-tensor entries", file=sys.stderr)
    if not any(k.startswith(TRACKER_PREFIXES) for k in out):
        some = ", ".join(sorted(out)[:3]) or "no tensors at all"
        raise ConvertError(
            f"holds none of the tracker's tensors ({', '.join(p + '*' for p in TRACKER_PREFIXES)}); "
            f"found {some}: not a CSWinTT checkpoint"
        )
    return out


def is_whole_tracker(tensors):
    return all(any(k == m or (m.endswith(".") and k.startswith(m)) for k in tensors) for m in TRACKER_MARKERS)


def tracker_metadata(meta, update_interval=None):
    """The whole tracker's keys on top of the transformer's: crop sizes and factors."""
    out = dict(meta)
    out["format"] = TRACKER_FORMAT
    out["search_crop"] = str(FEATURE_STRIDE * int(meta["search_size"]))
    out["template_crop"] = str(FEATURE_STRIDE * int(meta["template_size"]))
    out["search_factor"] = "5.0"
    out["template_factor"] = "2.0"
    if update_interval is not None:
        out["update_interval"] = str(update_interval)
    return out


# ---- config -----------------------------------------------------------------------


def default_windows(nhead):
    return [[1, 2, 4, 8][h % 4] for h in range(nhead)]


def table_len(w, s, t):
    l_all = s * s + 2 * t * t
    l = l_all // (w * w)
    return (2 * w - 1) * (l_all // w + (l - 1) // w)


def infer_config(tensors, nhead=None, windows=None, search_size=None, template_size=None):
    """The metadata dict, from shapes; the given values override and must agree."""

    def shape(name):
        t = tensors.get(name)
        return None if t is None else list(t.shape)

    pn = shape("transformer.post_norm.weight")
    if pn is None or len(pn) != 1:
        raise ConvertError(
            "tensor 'transformer.post_norm.weight' missing or not 1-D: not a CSWinTT transformer checkpoint"
        )
    d_model = pn[0]
    enc = 0
    while f"transformer.transformer.{enc}.qkv_embedding.weight" in tensors:
        enc += 1
    dec = 0
    while f"transformer.transformer_post.{dec}.linear1.weight" in tensors:
        dec += 1
    ff_shape = shape("transformer.transformer.0.feedforward.0.weight") or shape(
        "transformer.transformer_post.0.linear1.weight"
    )
    if ff_shape is None:
        raise ConvertError("no encoder or decoder layer found (transformer.transformer.0.*, transformer.transformer_post.0.*)")
    ff = ff_shape[0]
    if nhead is None:
        nhead = len(windows) if windows else 8
    if windows is None:
        windows = default_windows(nhead)
    if len(windows) != nhead:
        raise ConvertError(f"--window-sizes has {len(windows)} entries for {nhead} heads")
    if d_model % nhead:
        raise ConvertError(f"nhead {nhead} does not divide d_model {d_model}")
    for i in range(enc):
        qkv = shape(f"transformer.transformer.{i}.qkv_embedding.weight")
        if qkv != [3 * d_model, d_model]:
            raise ConvertError(
                f"tensor 'transformer.transformer.{i}.qkv_embedding.weight': expected shape "
                f"[{3 * d_model}, {d_model}], found {qkv}"
            )
    wmax = max(windows)
    tables = {}
    for w in BIAS_WINDOWS:
        if w in windows:
            s = shape(f"transformer.rel_bias_table{w}")
            if s is None or len(s) != 1:
                raise ConvertError(f"tensor 'transformer.rel_bias_table{w}' missing or not 1-D")
            tables[w] = s[0]
    fits = []
    for s in range(wmax, 513, wmax):
        for t in range(wmax, 513, wmax):
            if search_size is not None and s != search_size:
                continue
            if template_size is not None and t != template_size:
                continue
            if all(table_len(w, s, t) == n for w, n in tables.items()):
                fits.append((s, t))
    if not tables and search_size is not None and template_size is not None:
        fits = [(search_size, template_size)]
    if len(fits) != 1:
        what = "no" if not fits else f"several ({fits})"
        raise ConvertError(
            f"{what} search/template sizes (multiples of {wmax}) fit the bias tables' lengths "
            f"{tables}; pass --search-size and --template-size"
        )
    s, t = fits[0]
    return {
        "format": FORMAT,
        "d_model": str(d_model),
        "nhead": str(nhead),
        "dim_feedforward": str(ff),
        "enc_layers": str(enc),
        "dec_layers": str(dec),
        "search_size": str(s),
        "template_size": str(t),
        "window_sizes": ",".join(str(w) for w in windows),
    }


# ---- writing ----------------------------------------------------------------------


def tensor_bytes(t):
    import torch

    t = t.detach().to("cpu").contiguous()
    if t.dim() == 0:
        t = t.reshape(1)
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def write_safetensors(path, tensors, metadata):
    """Writes the safetensors format directly: 8-byte little-endian header length, JSON
    header (names sorted; data offsets), then the raw little-endian data."""
    if sys.byteorder != "little":
        raise ConvertError("big-endian hosts are not supported")
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        dt = str(t.dtype).replace("torch.", "")
        if dt not in DTYPES:
            raise ConvertError(f"tensor '{name}': dtype {t.dtype} cannot be stored in safetensors")
        data = tensor_bytes(t)
        header[name] = {"dtype": DTYPES[dt], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def convert(src, dst, nhead=None, windows=None, search_size=None, template_size=None,
            update_interval=None, trust_pickle=False):
    tensors = load_state_dict(src, trust_pickle)
    meta = infer_config(tensors, nhead, windows, search_size, template_size)
    if is_whole_tracker(tensors):
        meta = tracker_metadata(meta, update_interval)
    elif update_interval is not None:
        raise ConvertError("--update-interval applies to a whole tracker; this checkpoint holds only a transformer")
    meta["source"] = os.path.basename(src)
    write_safetensors(dst, tensors, meta)
    return tensors, meta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="the checkpoint: a bare state dict (the released CSWinTT.pth) or one under 'net'")
    ap.add_argument("-o", "--output", default="cswintt.safetensors", help="output file (default: %(default)s)")
    ap.add_argument("--nhead", type=int, help="attention heads (default 8)")
    ap.add_argument("--window-sizes", help="window per head, comma-separated (default 1,2,4,8,1,2,4,8)")
    ap.add_argument("--search-size", type=int, help="search side in tokens (default: inferred, 24)")
    ap.add_argument("--template-size", type=int, help="template side in tokens (default: inferred, 8)")
    ap.add_argument("--update-interval", type=int, help="frames between template updates, stored for the tracker (default: none; attnrt then uses the dataset's)")
    ap.add_argument("--trust-pickle", action="store_true", help="unpickle a checkpoint that weights_only refuses (it holds pickled objects); only for files you trust")
    args = ap.parse_args(argv)
    if args.update_interval is not None and args.update_interval < 1:
        ap.error("--update-interval: must be at least 1")
    windows = None
    if args.window_sizes:
        try:
            windows = [int(x) for x in args.window_sizes.split(",")]
        except ValueError:
            ap.error(f"--window-sizes: expected comma-separated integers, found '{args.window_sizes}'")
    if not os.path.isfile(args.checkpoint):
        print(f"convert_checkpoint: error: {args.checkpoint}: no such file", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401
    except ImportError:
        print("convert_checkpoint: error: PyTorch is needed to read .pth.tar checkpoints", file=sys.stderr)
        return 2
    try:
        tensors, meta = convert(
            args.checkpoint, args.output, args.nhead, windows, args.search_size, args.template_size,
            args.update_interval, args.trust_pickle,
        )
    except NeedsTrust as e:
        print(f"convert_checkpoint: error: {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    except ConvertError as e:
        print(f"convert_checkpoint: error: {args.checkpoint}: {e}", file=sys.stderr)
        return 1
    except (OSError, pickle.UnpicklingError, RuntimeError) as e:
        print(f"convert_checkpoint: error: {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    n_tr = sum(1 for k in tensors if k.startswith("transformer."))
    what = "a whole tracker" if meta["format"] == TRACKER_FORMAT else "a transformer"
    print(
        f"wrote {args.output}: {what}, {len(tensors)} tensors ({n_tr} transformer), "
        + ", ".join(f"{k}={v}" for k, v in meta.items() if k not in ("format", "source"))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
