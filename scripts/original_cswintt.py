#!/usr/bin/env python3
"""The original CSWinTT code (SkyeSong38/CSWinTT on GitHub), validated and timed as attnrt's
peer: what a PyTorch user gets from the authors' own model, eager, as a CUDA graph and under
torch.compile, on the same card and in the same run as our engine.

Usage:
  python3 scripts/original_cswintt.py --original DIR --validate GOLDEN_DIR [--device cuda]
  python3 scripts/original_cswintt.py --original DIR --save-state-dict OUT.pth [--size released]
  python3 scripts/original_cswintt.py --original DIR --bench [--json OUT] [--weights FILE]
      [--parts encoder,transformer,frame] [--batches 1,8,32] [--precisions f32,bf16]
      [--variants eager,graph,compile,reduce-overhead] [--iters 200] [--warmup 20]
      [--max-seconds 2] [--jobs N] [--compile-timeout S] [--prepare-by S] [--no-compile]
      [--size released|tiny]

DIR is a checkout of the original repository; nothing in it is edited. What does not import on
current PyTorch/torchvision is patched here at run time (see import_original): the torchvision
version test in lib/utils/misc.py, the removed `torchvision.models.utils`, `pretrained=` (off:
nothing can be downloaded), and stand-ins for the packages it imports but the timed code never
calls (easydict, PyYAML, timm's trunc_normal_, cv2, loguru, matplotlib) when they are missing.

The network is the tracker's (config `cswintt_cls` with experiments/cswintt_cls/baseline_cs.yaml,
as lib/test/tracker/cswintt.py builds it), eval mode, at the released size; random weights (the
model's own initialisation, seed 0: time does not depend on the values) unless --weights names
a safetensors file with the checkpoint's names (f32, f16 or bf16; config from its metadata).

Before anything runs, every index tensor the original keeps on the CPU is moved to the device
(move_host_tensors), since indexing a GPU tensor with a CPU index copies it to the GPU on every
call, which a CUDA graph cannot capture: the relative-position index Transformer_CS rebuilds on
every forward, the cyclic-shift index meshes of each Attention, and the corner head's coordinate
grids on CPU builds. Each timed configuration first runs once under a check that lists any
operation still fed a host tensor (`host_tensors` in its result; empty when the fix holds).

Parts (the callables timed are the ones validated):
- encoder: Transformer_CS's encoder (relative-position gather and 6 layers), inputs on the device;
- transformer: Transformer_CS.forward, encoder and decoder;
- frame: the tracker's network work for one frame (lib/test/tracker/cswintt.py, `track`): the
  search crop's backbone, the transformer with the two templates' cached features, the corner
  and score heads; batch 1.
Precisions: f32 (TF32 off for matmuls and cuDNN, matmul precision 'highest'), tf32 (both on),
bf16 (autocast to bfloat16; TF32 off). Variants: eager; graph (a CUDA graph of eager, captured
once); compile (torch.compile default); reduce-overhead (torch.compile mode="reduce-overhead").

Times: CUDA events around each call (the wall clock on the CPU), p50/p10/p90 in ms over up to
--iters calls after up to --warmup calls, each phase cut at --max-seconds; peak device memory
(torch.cuda.max_memory_allocated, reset just before the warm-up, so weights, inputs and graph
pools count) beside each. The compiles take minutes each: every compiled configuration runs in
its own process, --jobs at a time (default: all at once as far as memory allows, larger batches
at a lower CPU priority), and one whose preparation (build, compile, warm-up) passes
--compile-timeout seconds, or is still running --prepare-by seconds after the start, is stopped
and reported as an error. Nothing is timed until every compile has finished; then the
configurations are timed one at a time, eager and graph ones in one process, batch 1 first.
--json is rewritten after each result, so a run cut short keeps what it measured.

--validate runs the same callables on the golden files made from this code (../shared/golden):
the transformer golden files (every `expected.*`, f32 tolerance 1e-5) and the tracker golden
(the frame path from the golden's own crops and states; tolerance max(1e-5, 4x the original's
own f32 error recorded in its metadata)). Exit status 1 when a check fails.
"""
import argparse
import copy
import datetime
import hashlib
import importlib
import importlib.util
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time
import types
import warnings

from torch_timing import cuda_graph, sync, time_fn

PARTS = ("encoder", "transformer", "frame")
PRECISIONS = ("f32", "tf32", "bf16")
VARIANTS = ("eager", "graph", "compile", "reduce-overhead")
COMPILED = ("compile", "reduce-overhead")
F32_TOL = 1e-5
# The experiment whose yaml the released tracker was trained and tested with.
EXPERIMENT = "experiments/cswintt_cls/baseline_cs.yaml"
# Model sizes to time: the released one, and the golden files' tiny one (to smoke-test the
# machinery on a CPU). The original fixes the window sizes, the head count (8) and, in its
# Attention, 704 tokens: search 24 and template 8 at stride 16.
SIZES = {
    "released": {"d_model": 256, "dim_feedforward": 2048, "layers": 6},
    "tiny": {"d_model": 64, "dim_feedforward": 128, "layers": 2},
}


class SetupError(Exception):
    """A bad argument or input file, said in words (exit status 2)."""


# ---------------------------------------------------------------------------------------------
# Pure parts (no PyTorch): the plan, statistics, the small stand-ins. Tested by
# scripts/test_original_cswintt.py on machines without PyTorch.


def plan(parts, batches, precisions, variants, cuda):
    """The configurations to time, in the order they are timed (batch 1 first, then by part):
    dicts with part, batch, precision, variant. The frame is timed at batch 1 only (the
    tracker follows one target); graph needs a GPU."""
    for name, given, known in (("part", parts, PARTS), ("precision", precisions, PRECISIONS),
                               ("variant", variants, VARIANTS)):
        bad = [g for g in given if g not in known]
        if bad:
            raise SetupError(f"unknown {name} {', '.join(bad)}: expected one of {', '.join(known)}")
    if any(b < 1 for b in batches):
        raise SetupError(f"--batches must be positive, got {batches}")
    out = []
    for batch in sorted(set(batches)):
        for part in (p for p in PARTS if p in parts):
            if part == "frame" and batch != 1:
                continue
            for precision in (p for p in PRECISIONS if p in precisions):
                for variant in (v for v in VARIANTS if v in variants):
                    if variant == "graph" and not cuda:
                        continue
                    out.append({"part": part, "batch": batch, "precision": precision,
                                "variant": variant})
    return out


def key(config):
    return (config["part"], config["batch"], config["precision"], config["variant"])


def parse_simple_yaml(text):
    """The block-style YAML subset of the original's experiment files (nested mappings,
    `- item` lists at or below their key's indent, `[a, b]` lists, plain scalars); stands in
    for PyYAML's safe_load where PyYAML is missing."""
    lines = []
    for raw in text.splitlines():
        body = raw.split(" #")[0].rstrip()
        if body.strip() and not body.lstrip().startswith("#"):
            lines.append((len(body) - len(body.lstrip()), body.strip()))

    def scalar(s):
        if s.startswith("[") and s.endswith("]"):
            return [scalar(x.strip()) for x in s[1:-1].split(",") if x.strip()]
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
            return s[1:-1]
        low = s.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("null", "~"):
            return None
        for kind in (int, float):
            try:
                return kind(s)
            except ValueError:
                pass
        return s

    def block(i, indent):
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                items.append(scalar(lines[i][1][2:].strip()))
                i += 1
            return items, i
        mapping = {}
        while i < len(lines) and lines[i][0] == indent:
            name, sep, rest = lines[i][1].partition(":")
            if not sep:
                raise ValueError(f"line {lines[i][1]!r}: expected 'key: value'")
            i += 1
            rest = rest.strip()
            if rest:
                mapping[name.strip()] = scalar(rest)
            elif i < len(lines) and (lines[i][0] > indent or lines[i][1].startswith("- ")):
                mapping[name.strip()], i = block(i, lines[i][0])
            else:
                mapping[name.strip()] = None
        return mapping, i

    if not lines:
        return None
    value, end = block(0, lines[0][0])
    if end != len(lines):
        raise ValueError(f"line {lines[end][1]!r}: unexpected indentation")
    return value


class EasyDict(dict):
    """easydict's EasyDict as the original's config uses it: a dict whose keys are also
    attributes, nested dicts converted."""

    def __init__(self, d=None, **kw):
        super().__init__()
        for k, v in dict(d or {}, **kw).items():
            self[k] = v

    def __setitem__(self, k, v):
        if isinstance(v, dict) and not isinstance(v, EasyDict):
            v = EasyDict(v)
        super().__setitem__(k, v)

    __setattr__ = __setitem__

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


def safetensors_header(data, name):
    """(header without metadata, metadata, byte offset of the data) of a safetensors file's
    bytes; `name` is used in errors."""
    if len(data) < 8:
        raise SetupError(f"{name}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        raise SetupError(f"{name}: not a safetensors file (header: {e})") from None
    return {k: v for k, v in header.items() if k != "__metadata__"}, header.get("__metadata__") or {}, 8 + n


def overrides_from_metadata(md, name):
    """The original config's fields for a model described by our safetensors metadata
    (d_model, nhead, dim_feedforward, enc_layers, dec_layers, search_size, template_size,
    window_sizes), after checking that the original can build it."""
    need = ("d_model", "dim_feedforward", "enc_layers", "dec_layers")
    missing = [k for k in need if k not in md]
    if missing:
        raise SetupError(f"{name}: metadata lacks {', '.join(missing)}")
    enc, dec = int(md["enc_layers"]), int(md["dec_layers"])
    if enc != dec:
        raise SetupError(f"{name}: enc_layers {enc} != dec_layers {dec}; the original builds "
                         "as many decoder layers as encoder layers")
    fixed = {"nhead": "8", "search_size": "24", "template_size": "8",
             "window_sizes": "1,2,4,8,1,2,4,8"}
    for k, v in fixed.items():
        if k in md and md[k].replace(" ", "") != v:
            raise SetupError(f"{name}: {k} is {md[k]}; the original code only builds {v}")
    return {"d_model": int(md["d_model"]), "dim_feedforward": int(md["dim_feedforward"]),
            "layers": enc}


def tracker_tolerance(recorded, family):
    """The tracker golden's tolerance for a tensor family: max(1e-5, 4x the original's own f32
    error against its f64 run, as its metadata records it)."""
    return max(F32_TOL, 4 * float(recorded.get(family, 0.0)))


# ---------------------------------------------------------------------------------------------
# Importing and building the original (PyTorch from here on).


def _stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def install_stand_ins():
    """Stand-ins for the packages the original imports that are missing here; returns their
    names. Only easydict and the yaml loader do work; the others are imported by modules the
    timed code loads but never called by it."""
    import torch
    used = []

    def missing(name):
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            return True

    if missing("easydict"):
        _stub("easydict", EasyDict=EasyDict)
        used.append("easydict")
    if missing("yaml"):
        _stub("yaml", safe_load=lambda f: parse_simple_yaml(f.read() if hasattr(f, "read") else f))
        used.append("yaml")
    if missing("timm"):
        layers = _stub("timm.models.layers", trunc_normal_=torch.nn.init.trunc_normal_)
        _stub("timm.models", layers=layers)
        _stub("timm", models=sys.modules["timm.models"])
        used.append("timm")
    if missing("cv2"):
        _stub("cv2")
        used.append("cv2")
    if missing("loguru"):
        _stub("loguru", logger=None)
        used.append("loguru")
    if missing("matplotlib"):
        pyplot, patches = _stub("matplotlib.pyplot"), _stub("matplotlib.patches")
        _stub("matplotlib", pyplot=pyplot, patches=patches)
        used.append("matplotlib")
    return used


def import_original(original):
    """Imports the original's modules from the checkout `original` and patches, at run time,
    what does not import or run here. Returns a namespace: build_cswintt, cfg (the config
    module), NestedTensor, stand_ins, patches."""
    root = pathlib.Path(original).resolve()
    if not (root / "lib/models/cswintt/cswintt.py").is_file():
        raise SetupError(f"--original {original}: no lib/models/cswintt/cswintt.py there; "
                         "expected a checkout of the original CSWinTT repository")
    import torch
    import torchvision
    # The original calls torch.meshgrid without `indexing` (its default, "ij", is what it means).
    warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release")
    stand_ins = install_stand_ins()
    patches = []
    # `torchvision.models.utils` is gone; it only provided load_state_dict_from_url.
    if importlib.util.find_spec("torchvision.models.utils") is None:
        _stub("torchvision.models.utils", load_state_dict_from_url=torch.hub.load_state_dict_from_url)
        patches.append("torchvision.models.utils: stand-in module (load_state_dict_from_url)")
    sys.path.insert(0, str(root))
    # lib/utils/misc.py reads float(torchvision.__version__[:3]), which is 0.2 for 0.26, and then
    # imports helpers torchvision dropped long ago; show it a version past its test while it
    # imports.
    real = torchvision.__version__
    torchvision.__version__ = "0.99"
    try:
        misc = importlib.import_module("lib.utils.misc")
    finally:
        torchvision.__version__ = real
    patches.append("lib/utils/misc.py: imported with torchvision.__version__ shown as 0.99")
    backbone = importlib.import_module("lib.models.cswintt.backbone")
    # Backbone asks for ImageNet weights (pretrained=is_main_process()); nothing can be
    # downloaded, and timing needs no trained weights.
    backbone.is_main_process = lambda: False
    patches.append("backbone: pretrained=False (no ImageNet download)")
    cswintt = importlib.import_module("lib.models.cswintt.cswintt")
    cfg = importlib.import_module("lib.config.cswintt_cls.config")
    return types.SimpleNamespace(root=root, build_cswintt=cswintt.build_cswintt, cfg=cfg,
                                 NestedTensor=misc.NestedTensor, stand_ins=stand_ins,
                                 patches=patches)


def original_commit(root):
    """The checkout's commit, when it is a git checkout of its own (not a plain copy inside
    another repository, whose commit git would report); else None."""
    def git(*args):
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    try:
        top = git("rev-parse", "--show-toplevel")
        return git("rev-parse", "HEAD") or None if top and pathlib.Path(top).resolve() == root else None
    except (OSError, subprocess.SubprocessError):
        return None


def make_config(orig, size):
    """The tracker's config: config.py's defaults, the experiment yaml, then `size` (d_model,
    dim_feedforward, layers)."""
    orig.cfg.update_config_from_file(str(orig.root / EXPERIMENT))
    cfg = copy.deepcopy(orig.cfg.cfg)
    cfg.MODEL.HIDDEN_DIM = size["d_model"]
    cfg.MODEL.TRANSFORMER.DIM_FEEDFORWARD = size["dim_feedforward"]
    cfg.MODEL.TRANSFORMER.ENC_LAYERS = cfg.MODEL.TRANSFORMER.DEC_LAYERS = size["layers"]
    return cfg


class _CudaCallsTo:
    """The original calls `.cuda()` on a few tensors while it builds; on a machine without a
    GPU they go to `device` instead."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch
        if self.device.startswith("cuda"):
            return
        self.saved = torch.Tensor.__dict__.get("cuda")
        device = self.device
        torch.Tensor.cuda = lambda t, *a, **k: t.to(device)

    def __exit__(self, *exc):
        import torch
        if self.device.startswith("cuda"):
            return
        if self.saved is None:
            del torch.Tensor.cuda
        else:
            torch.Tensor.cuda = self.saved


def move_host_tensors(net, device):
    """Moves every tensor the original keeps outside parameters and buffers (plain attributes
    and dicts of tensors) to `device`, and makes Transformer_CS build its relative-position
    index once on the device instead of on the CPU every forward. Returns what was moved.

    Each such tensor is also marked as a static address: it is model state, like a buffer, so
    reduce-overhead's CUDA graphs read it in place instead of copying it into the graph's
    inputs at every replay."""
    import torch
    target = torch.device(device)
    moved, state = [], []

    def place(t, where):
        if t.device != target:
            t = t.to(device)
            moved.append(where)
        state.append(t)
        return t

    for mname, m in net.named_modules():
        for attr, value in list(vars(m).items()):
            where = f"{mname}.{attr}" if mname else attr
            if attr.startswith("_"):
                continue
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                setattr(m, attr, place(value, where))
            elif isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, torch.Tensor):
                        value[k] = place(v, f"{where}[{k}]")
    tr = net.transformer
    index = {w: place(tr.get_relative_position_index(w), f"transformer.relative_position_index[{w}]")
             for w in tr.window_list}
    tr.get_relative_position_index = lambda w: index[w]
    moved.append("transformer.get_relative_position_index: built once, on the device")
    for t in state:
        torch._dynamo.mark_static_address(t)
    return moved


def read_safetensors(path_or_bytes, name=None):
    """(tensors, metadata) of a safetensors file or its bytes."""
    import torch
    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8,
              "I8": torch.int8, "BOOL": torch.bool}
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, name = path_or_bytes, name or "safetensors bytes"
    else:
        name = name or str(path_or_bytes)
        try:
            data = pathlib.Path(path_or_bytes).read_bytes()
        except OSError as e:
            raise SetupError(f"{name}: {e.strerror}") from None
    header, md, base = safetensors_header(data, name)
    tensors = {}
    for k, h in header.items():
        if h["dtype"] not in dtypes:
            raise SetupError(f"{name}: tensor {k} has dtype {h['dtype']}, not one of {', '.join(dtypes)}")
        a, b = h["data_offsets"]
        dt = dtypes[h["dtype"]]
        if a == b:
            tensors[k] = torch.empty(h["shape"], dtype=dt)
        else:
            tensors[k] = torch.frombuffer(bytearray(data[base + a:base + b]), dtype=dt).reshape(h["shape"])
    return tensors, md


def load_weights(net, tensors, name):
    """Loads checkpoint-named tensors (any float dtype) into `net`; returns how many were
    loaded and the model's tensors the file lacks (left as initialised)."""
    state = net.state_dict()
    unknown = sorted(k for k in tensors if k not in state)
    if len(unknown) == len(tensors):
        raise SetupError(f"{name}: none of its {len(tensors)} tensors has a name of the tracker "
                         f"(e.g. {unknown[0] if unknown else '-'})")
    loaded = {}
    for k, t in tensors.items():
        if k not in state:
            continue
        if tuple(t.shape) != tuple(state[k].shape):
            raise SetupError(f"{name}: tensor {k} has shape {list(t.shape)}, the model expects "
                             f"{list(state[k].shape)}")
        loaded[k] = t.to(state[k].dtype)
    net.load_state_dict(loaded, strict=False)
    lacking = sorted(k for k in state if k not in loaded and not k.endswith("num_batches_tracked"))
    return len(loaded), lacking


def build_net(orig, size, device, weights=None, seed=0):
    """The tracker network (eval mode, on `device`, host tensors moved), with `weights`
    ((tensors, name)) loaded when given. Returns (net, info)."""
    import torch
    torch.manual_seed(seed)
    with _CudaCallsTo(device):
        net = orig.build_cswintt(make_config(orig, size))
    info = {}
    if weights is not None:
        tensors, name = weights
        info["loaded"], lacking = load_weights(net, tensors, name)
        if lacking:
            info["not_in_weights"] = len(lacking)
    net = net.to(device).eval()
    info["moved_to_device"] = move_host_tensors(net, device)
    return net, info


# ---------------------------------------------------------------------------------------------
# The timed callables.


def encoder(tr, feat, mask, pos):
    """Transformer_CS.forward's encoder half, as it runs it: the relative-position bias gathered
    once, then every layer."""
    rel_pos = tr.get_relative_position()
    for layer in tr.transformer:
        feat = layer(merge_feat=feat, merge_mask=mask, rel_pos=rel_pos, merge_pos=pos)
    return feat


def track_network(net, NestedTensor, templates, image, mask):
    """The network work of the tracker's `track` for one search crop: backbone, transformer
    with the templates' features, box and score heads. Returns (search features dict, heads'
    outputs dict, hs)."""
    x = net.forward_backbone(NestedTensor(image, mask))
    out, _, hs = net.forward_transformer(templates + [x], run_box_head=True, run_cls_head=True)
    return x, out, hs


def part_callable(orig, net, part, batch, device, seed=1):
    """A no-argument callable running `part` at `batch` on random inputs already on the device
    (masks all clear: no padding)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: (torch.rand(*shape, generator=gen) * 2 - 1).to(device)
    tr = net.transformer
    c = tr.d_model
    S, T = tr.h1, tr.h2
    if part == "encoder":
        feat, pos = rnd(tr.L_all, batch, c), rnd(tr.L_all, batch, c)
        mask = torch.zeros(batch, tr.L_all, dtype=torch.bool, device=device)
        return lambda: encoder(tr, feat, mask, pos)
    if part == "transformer":
        def region(side):
            return {"feat": rnd(side, side, batch, c), "pos": rnd(side, side, batch, c),
                    "mask": torch.zeros(batch, side, side, dtype=torch.bool, device=device)}
        t1, t2, s = region(T), region(T), region(S)
        query = net.query_embed.weight
        return lambda: tr(t1, t2, s, query)
    # frame: the templates' features come from the backbone once, as in `initialize`.
    stride = 16
    with torch.no_grad():
        z = net.forward_backbone(orig.NestedTensor(
            rnd(batch, 3, T * stride, T * stride),
            torch.zeros(batch, T * stride, T * stride, dtype=torch.bool, device=device)))
    templates = [z, copy.deepcopy(z)]
    image = rnd(batch, 3, S * stride, S * stride)
    mask = torch.zeros(batch, S * stride, S * stride, dtype=torch.bool, device=device)

    def frame():
        _, out, _ = track_network(net, orig.NestedTensor, templates, image, mask)
        return out["pred_boxes"], out["pred_logits"]
    return frame


def set_precision(precision):
    """The matmul and cuDNN arithmetic for a precision (see the module docstring)."""
    import torch
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def with_precision(fn, precision, device, cache=True):
    """`fn` under bf16 autocast for bf16 (the cast cache off for CUDA graph capture, as
    PyTorch requires), else `fn`."""
    import torch
    if precision != "bf16":
        return fn
    kind = "cuda" if device.startswith("cuda") else "cpu"

    def run():
        with torch.autocast(kind, dtype=torch.bfloat16, cache_enabled=cache):
            return fn()
    return run


def host_tensor_ops(fn, device):
    """Runs `fn` once and lists the operations (aten names) that mixed a host tensor of more
    than one element with tensors on `device` (its arguments or its result): each copies the
    host tensor to the device on every call, which CUDA graphs cannot capture. Empty on a CPU
    device."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    if torch.device(device).type == "cpu":
        fn()
        return []
    found = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            flat = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            host = any(t.device.type == "cpu" and t.numel() > 1 for t in flat)
            if host and any(t.device.type != "cpu" for t in flat):
                name = str(func.overloadpacket.__name__)
                if name not in found:
                    found.append(name)
            return out

    with Watch():
        fn()
    return found


def prepare(orig, net, config, opts):
    """The callable to time for `config` (compiling it for compile variants) and what its
    preparation found: host_tensors, compile_s, cudagraph_skips."""
    import torch
    set_precision(config["precision"])
    device, variant = opts.device, config["variant"]
    base = part_callable(orig, net, config["part"], config["batch"], device)
    info = {}
    with torch.no_grad():
        info["host_tensors"] = host_tensor_ops(with_precision(base, config["precision"], device), device)
        if variant == "eager":
            return with_precision(base, config["precision"], device), info
        if variant == "graph":
            return cuda_graph(with_precision(base, config["precision"], device, cache=False)), info
        from torch._dynamo.utils import counters
        skips_before = counters["inductor"]["cudagraph_skips"]
        fn = torch.compile(with_precision(base, config["precision"], device),
                           mode=None if variant == "compile" else variant)
        t = time.perf_counter()
        # The first call compiles; reduce-overhead records its CUDA graph on the next ones.
        for _ in range(3):
            fn()
        sync(device)
        info["compile_s"] = round(time.perf_counter() - t, 1)
        if variant == "reduce-overhead":
            info["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"] - skips_before
    return fn, info


def measure(fn, opts):
    """Times a prepared callable; adds its peak device memory."""
    import torch
    cuda = opts.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        r = time_fn(fn, opts.iters, opts.warmup, opts.device, opts.max_seconds)
    if cuda:
        r["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return r


def error_text(e):
    return f"{type(e).__name__}: {e}"[:400]


# ---------------------------------------------------------------------------------------------
# Jobs: one process per compiled configuration, one process for eager and graph ones.


def _worker_setup(opts):
    """A job process's start: the original imported, the weights read once."""
    orig = import_original(opts.original)
    weights = None
    if opts.weights:
        tensors, _ = read_safetensors(opts.weights)
        weights = (tensors, opts.weights)
    return orig, weights


def compiled_job(config, opts, niceness, conn):
    """Prepares (compiles) `config` at CPU priority `niceness`, says ("ready", info), waits for
    "go", times it and says ("result", result). Any failure is said as ("result", {"error":
    ...})."""
    try:
        os.nice(niceness)
        orig, weights = _worker_setup(opts)
        net, _ = build_net(orig, opts.model_size, opts.device, weights)
        fn, info = prepare(orig, net, config, opts)
    except Exception as e:  # a compiler that fails is a result too
        conn.send(("result", {"error": error_text(e)}))
        return
    conn.send(("ready", info))
    if conn.recv() != "go":
        return
    try:
        info.update(measure(fn, opts))
    except Exception as e:
        info["error"] = error_text(e)
    conn.send(("result", info))


def light_worker(opts, conn):
    """Eager and graph configurations, one per ("go", config) message, on one network built
    once; says ("result", result) for each. None ends it."""
    try:
        orig, weights = _worker_setup(opts)
        net, _ = build_net(orig, opts.model_size, opts.device, weights)
    except Exception as e:
        setup_error = error_text(e)
    else:
        setup_error = None
    while True:
        msg = conn.recv()
        if msg is None:
            return
        _, config = msg
        if setup_error:
            conn.send(("result", {"error": setup_error}))
            continue
        try:
            fn, info = prepare(orig, net, config, opts)
            info.update(measure(fn, opts))
            del fn
        except Exception as e:
            info = {"error": error_text(e)}
        conn.send(("result", info))


def default_jobs(n):
    """Compiles to run at once: all `n`, as far as memory allows (a compiling process holds
    up to about 3 GiB). All at once rather than in waves, since nothing is timed before the
    last one ends; the lower CPU priority of the larger batches lets batch 1 finish first."""
    try:
        with open("/proc/meminfo") as f:
            avail_kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return max(1, min(n, avail_kib // (3 << 20)))
    except (OSError, StopIteration, ValueError):
        return max(1, min(n, os.cpu_count() or 1))


def run_bench(opts, configs, record):
    """Compiles every compiled configuration in parallel processes (--jobs at a time), then
    times everything one configuration at a time in `configs`' order; `record(config, result)`
    gets each result. Every process it started is ended when it returns, or on SIGTERM (as
    `timeout` sends)."""
    ctx = mp.get_context("spawn")  # CUDA does not survive fork
    compiled = [c for c in configs if c["variant"] in COMPILED]
    jobs = opts.jobs or default_jobs(len(compiled))
    # Inductor's compile workers, shared out among the jobs (children inherit the setting).
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS",
                          str(max(1, (os.cpu_count() or 1) // max(1, min(jobs, len(compiled))))))
    batches = sorted({c["batch"] for c in configs})
    procs = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ready = _compile_all(ctx, opts, compiled, jobs, batches, procs, record)
        _time_all(ctx, opts, configs, ready, procs, record)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


def _compile_all(ctx, opts, compiled, jobs, batches, procs, record):
    """The preparation phase: returns {key: (conn, process, info)} of the compiled jobs that
    are ready to be timed; records the others' errors."""
    start = time.time()
    queue, running, ready = list(compiled), {}, {}
    while queue or running:
        if opts.prepare_by is not None and time.time() - start > opts.prepare_by:
            for c in queue:
                record(c, {"error": f"not started within --prepare-by {opts.prepare_by:.0f} s"})
            queue = []
        while queue and len(running) < jobs:
            c = queue.pop(0)
            parent, child = ctx.Pipe()
            niceness = min(19, 4 * batches.index(c["batch"]))
            proc = ctx.Process(target=compiled_job, args=(c, opts, niceness, child), daemon=True)
            proc.start()
            procs.append(proc)
            child.close()
            running[parent] = (c, proc, time.time())
        for conn in multiprocessing.connection.wait(list(running), timeout=1.0):
            c, proc, _ = running.pop(conn)
            try:
                kind, info = conn.recv()
            except (EOFError, OSError):
                proc.join(timeout=5)
                record(c, {"error": f"the job died (exit code {proc.exitcode})"})
                continue
            if kind == "ready":
                ready[key(c)] = (conn, proc, info)
            else:
                proc.join(timeout=5)
                record(c, info)
        now = time.time()
        for conn, (c, proc, began) in list(running.items()):
            over_job = now - began > opts.compile_timeout
            if over_job or (opts.prepare_by is not None and now - start > opts.prepare_by):
                proc.kill()
                proc.join(timeout=5)
                del running[conn]
                limit = (f"--compile-timeout {opts.compile_timeout:.0f} s" if over_job
                         else f"--prepare-by {opts.prepare_by:.0f} s")
                record(c, {"error": f"preparation (compile) stopped after {limit}"})
    return ready


def _time_all(ctx, opts, configs, ready, procs, record):
    """The timing phase: every configuration in order, one at a time; eager and graph ones in
    one light worker (a new one after one hangs or dies)."""
    light = None
    for c in configs:
        if c["variant"] in COMPILED:
            if key(c) not in ready:
                continue
            conn, proc, info = ready.pop(key(c))
            conn.send("go")
            result, _ = _await(conn, opts)
            proc.join(timeout=5)
            record(c, {**info, **result})
            continue
        if light is None:
            conn, child = ctx.Pipe()
            light = (conn, ctx.Process(target=light_worker, args=(opts, child), daemon=True))
            light[1].start()
            procs.append(light[1])
            child.close()
        light[0].send(("go", c))
        result, answered = _await(light[0], opts)
        record(c, result)
        if not answered:
            light[1].kill()
            light = None
    if light is not None:
        light[0].send(None)
        light[1].join(timeout=10)


def _await(conn, opts):
    """(a job's result, True), or (an error, False) when none comes in time or it died."""
    # Building the network (the light worker's first), warming up and timing.
    limit = 120 + 3 * opts.max_seconds
    try:
        if conn.poll(limit):
            return conn.recv()[1], True
    except (EOFError, OSError):
        return {"error": "the job died while timing"}, False
    return {"error": f"no result within {limit:.0f} s of timing"}, False


# ---------------------------------------------------------------------------------------------
# Validation on the golden files.


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    denom = b.norm().item()
    return (a - b).norm().item() / (denom if denom > 0 else 1.0)


def validate_transformer(orig, golden, weights_path, device):
    """Checks the encoder and transformer callables on one transformer golden file; returns
    (ok, lines)."""
    import torch
    tensors, md = read_safetensors(weights_path)
    g, _ = read_safetensors(golden)
    size = overrides_from_metadata(md, str(weights_path))
    net, _ = build_net(orig, size, device, (tensors, str(weights_path)))
    tr = net.transformer
    inp = {k: v.to(device) for k, v in g.items() if k.startswith("input.")}

    def region(r):
        return {"feat": inp[f"input.{r}.feat"], "pos": inp[f"input.{r}.pos"],
                "mask": inp[f"input.{r}.mask"] != 0}
    t1, t2, s = region("template1"), region("template2"), region("search")
    got, heads = {}, []
    hooks = [tr.transformer[0].attn.register_forward_hook(lambda m, a, out: heads.append(out[0])),
             tr.transformer[0].output_linear.register_forward_pre_hook(
                 lambda m, a: got.__setitem__("expected.encoder.0.heads_concat", a[0]))]
    for i, layer in enumerate(tr.transformer):
        hooks.append(layer.register_forward_hook(
            lambda m, a, out, i=i: got.__setitem__(f"expected.encoder.{i}", out)))
    for i, layer in enumerate(tr.transformer_post):
        hooks.append(layer.register_forward_hook(
            lambda m, a, out, i=i: got.__setitem__(f"expected.decoder.{i}", out)))
    set_precision("f32")
    with torch.no_grad():
        got["expected.search_feat"], got["expected.hs"] = tr(t1, t2, s, inp["input.query_embed"])
        for h in hooks:
            h.remove()
        for h, o in enumerate(heads):
            got[f"expected.encoder.0.head.{h}"] = o
        # The encoder callable timed, on the same inputs.
        merged = lambda k: torch.cat([t1[k].flatten(0, 1), t2[k].flatten(0, 1), s[k].flatten(0, 1)])
        mask = torch.cat([t1["mask"].flatten(1, 2), t2["mask"].flatten(1, 2), s["mask"].flatten(1, 2)], 1)
        last = f"expected.encoder.{len(tr.transformer) - 1}"
        enc = encoder(tr, merged("feat"), mask, merged("pos"))
    name = pathlib.Path(golden).name.replace(".golden.safetensors", "")
    ok, lines = True, []
    checks = [(k, got[k]) for k in sorted(g) if k.startswith("expected.")]
    checks.append((f"encoder() against {last}", enc))
    for k, ours in checks:
        want = g[k.split(" against ")[-1]]
        err = rel_err(ours, want)
        ok &= err <= F32_TOL
        lines.append(f"{name} {k}: rel err {err:.2e} {'ok' if err <= F32_TOL else 'FAIL'}")
    return ok, lines


def validate_tracker(orig, golden, device):
    """Checks the frame callable (backbone, transformer, heads) on the tracker golden, from
    the golden's own crops and template states; returns (ok, lines)."""
    import torch
    folder = pathlib.Path(golden).parent
    g, md = read_safetensors(golden)
    spec = importlib.util.spec_from_file_location("make_weights", folder / "make_weights.py")
    if spec is None or not (folder / "make_weights.py").is_file():
        raise SetupError(f"{folder}/make_weights.py is missing: it makes {golden}'s weights")
    make_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_weights)
    data = make_weights.build(json.loads(md["weights_recipe"]))
    if hashlib.sha256(data).hexdigest() != md.get("weights_sha256"):
        raise SetupError(f"{golden}: the weights made from its recipe do not match weights_sha256")
    tensors, wmd = read_safetensors(data, f"{golden} weights")
    net, info = build_net(orig, overrides_from_metadata(wmd or md, golden), device,
                          (tensors, f"{golden} weights"))
    recorded = json.loads(md.get("f32_vs_f64_max_rel_err", "{}"))
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def crop(arr):  # the tracker's Preprocessor: u8 HWC -> normalised f32 NCHW
        return ((arr.to(device).float().permute(2, 0, 1)[None] / 255.0) - mean) / std

    name = pathlib.Path(golden).name.replace(".golden.safetensors", "")
    ok, lines = True, []

    def check(what, ours, want, family):
        nonlocal ok
        if want.dtype == torch.uint8:
            good = bool(torch.equal(ours.detach().cpu().to(torch.uint8), want))
            lines.append(f"{name} {what}: {'equal' if good else 'DIFFERENT'}")
        else:
            err, tol = rel_err(ours, want), tracker_tolerance(recorded, family)
            good = err <= tol
            lines.append(f"{name} {what}: rel err {err:.2e} (tol {tol:.1e}) {'ok' if good else 'FAIL'}")
        ok &= good

    set_precision("f32")
    with torch.no_grad():
        z1 = net.forward_backbone(orig.NestedTensor(crop(g["input.init.template.crop"]),
                                                    (g["input.init.template.mask"] != 0)[None].to(device)))
        for part in ("feat", "pos"):
            check(f"init.template.{part}", z1[part], g[f"expected.init.template.{part}"], part)
        check("init.template.mask", z1["mask"], g["expected.init.template.mask"], "mask")
        templates = [z1, z1]
        t = 1
        while f"expected.frame.{t}.hs" in g:
            f = f"expected.frame.{t}"
            x, out, hs = track_network(net, orig.NestedTensor, templates, crop(g[f"{f}.search.crop"]),
                                       (g[f"{f}.search.amask"] != 0)[None].to(device))
            for part in ("feat", "pos"):
                check(f"frame.{t}.search.{part}", x[part], g[f"{f}.search.{part}"], part)
            check(f"frame.{t}.search.mask", x["mask"], g[f"{f}.search.mask"], "mask")
            check(f"frame.{t}.hs", hs, g[f"{f}.hs"], "hs")
            check(f"frame.{t}.pred_box", out["pred_boxes"].view(-1), g[f"{f}.pred_box"], "pred_box")
            check(f"frame.{t}.conf_logit", out["pred_logits"].view(-1), g[f"{f}.conf_logit"], "conf_logit")
            if g[f"{f}.template_updated"].item():
                templates = [z1, {k: g[f"{f}.template.{k}"].to(device) != 0 if k == "mask"
                                  else g[f"{f}.template.{k}"].to(device) for k in ("feat", "pos", "mask")}]
            t += 1
    if info.get("not_in_weights"):
        lines.append(f"{name}: {info['not_in_weights']} model tensors not in the weights (initialised)")
    return ok, lines


def validate(orig, golden_dir, device):
    folder = pathlib.Path(golden_dir)
    if not folder.is_dir():
        raise SetupError(f"--validate {golden_dir}: not a folder")
    ok, ran = True, 0
    for golden in sorted(folder.glob("*.golden.safetensors")):
        _, md, _ = safetensors_header(golden.read_bytes(), str(golden))
        kind = md.get("format")
        if kind == "cswintt-transformer":
            weights = folder / golden.name.replace(".golden.", ".weights.")
            good, lines = validate_transformer(orig, golden, weights, device)
        elif kind == "cswintt-tracker":
            good, lines = validate_tracker(orig, golden, device)
        else:
            continue
        ran += 1
        ok &= good
        print("\n".join(lines), flush=True)
    if not ran:
        raise SetupError(f"--validate {golden_dir}: no transformer or tracker golden file there")
    return ok


# ---------------------------------------------------------------------------------------------


def comma_list(kind):
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--original", required=True, metavar="DIR", help="checkout of the original repository")
    ap.add_argument("--validate", metavar="GOLDEN_DIR", help="check the callables on the golden files")
    ap.add_argument("--bench", action="store_true", help="time the configurations")
    ap.add_argument("--device", default=None, help="cuda (default when there is one) or cpu")
    ap.add_argument("--weights", metavar="FILE", help="safetensors with the checkpoint's names")
    ap.add_argument("--size", choices=sorted(SIZES), default="released",
                    help="model to time without --weights; 'tiny' only smoke-tests the bench")
    ap.add_argument("--parts", type=comma_list(str), default=list(PARTS))
    ap.add_argument("--batches", type=comma_list(int), default=[1, 8, 32],
                    help="batches for encoder and transformer (the frame: 1)")
    ap.add_argument("--precisions", type=comma_list(str), default=["f32", "bf16"])
    ap.add_argument("--variants", type=comma_list(str), default=list(VARIANTS))
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="leave out the torch.compile variants")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=2.0,
                    help="cap on each configuration's warm-up, and on its timed calls")
    ap.add_argument("--jobs", type=int, default=None,
                    help="compiles running at once (default: all, as far as memory allows)")
    ap.add_argument("--compile-timeout", type=float, default=300, metavar="S",
                    help="seconds one configuration may take to build, compile and warm up")
    ap.add_argument("--prepare-by", type=float, default=None, metavar="S",
                    help="stop all compiling S seconds after the start (default: no limit)")
    ap.add_argument("--json", metavar="OUT", help="write the results here (rewritten after each)")
    ap.add_argument("--save-state-dict", metavar="PTH",
                    help="write the tracker's state dict at --size (the model's initialisation, "
                         "seed 0) for scripts/convert_checkpoint.py, so that attnrt times the same "
                         "weights; then exit")
    a = ap.parse_args()
    if not a.validate and not a.bench and not a.save_state_dict:
        ap.error("give --validate GOLDEN_DIR, --bench and/or --save-state-dict PTH")
    try:
        return run(a)
    except SetupError as e:
        print(f"original_cswintt.py: {e}", file=sys.stderr)
        return 2


def run(a):
    import torch
    import torchvision
    if a.device is None:
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SetupError("--device cuda: no CUDA GPU is usable here")
    orig = import_original(a.original)
    if a.save_state_dict:
        net, _ = build_net(orig, SIZES[a.size], "cpu")
        torch.save(net.state_dict(), a.save_state_dict)
        print(f"wrote {a.save_state_dict}: the {a.size} tracker's state dict (seed 0)")
        return 0
    status = 0
    if a.validate:
        if validate(orig, a.validate, a.device):
            print("validation ok")
        else:
            print("validation FAILED", file=sys.stderr)
            status = 1
    if not a.bench:
        return status
    a.model_size = SIZES[a.size]
    weights, loaded = "random (the model's initialisation, seed 0)", None
    if a.weights:
        tensors, md = read_safetensors(a.weights)
        a.model_size = overrides_from_metadata(md, a.weights) if "d_model" in md else SIZES["released"]
        loaded = (tensors, a.weights)
    # Built once here on the meta device (nothing computed): the weights' names and shapes are
    # checked before any job starts, and the tensors moved are listed.
    _, info = build_net(orig, a.model_size, "meta", loaded)
    if a.weights:
        weights = f"{a.weights} ({info['loaded']} tensors; {info.get('not_in_weights', 0)} initialised)"
    variants = [v for v in a.variants if a.compile or v not in COMPILED]
    configs = plan(a.parts, a.batches, a.precisions, variants, a.device.startswith("cuda"))
    cuda = a.device.startswith("cuda")
    results = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "original": {"path": str(orig.root), "commit": original_commit(orig.root)},
        "config": f"cswintt_cls + {EXPERIMENT}",
        "model": {"size": "weights file" if a.weights else a.size, **a.model_size},
        "weights": weights,
        "iters": a.iters, "warmup": a.warmup, "max_seconds": a.max_seconds,
        "precisions": {"f32": "TF32 off (matmul and cuDNN), matmul precision highest",
                       "tf32": "TF32 on (matmul and cuDNN)",
                       "bf16": "autocast to bfloat16, TF32 off"},
        "stand_ins": orig.stand_ins, "patches": orig.patches,
        "moved_to_device": info["moved_to_device"],
        "rows": [],
    }
    order = {key(c): i for i, c in enumerate(configs)}

    def record(config, r):
        results["rows"] = [row for row in results["rows"] if key(row) != key(config)]
        results["rows"].append({**config, **r})
        results["rows"].sort(key=lambda row: order[key(row)])
        shown = (f"{r['p50_ms']:.3f} ms (p10 {r['p10_ms']:.3f}, p90 {r['p90_ms']:.3f}, n {r['n']})"
                 if "p50_ms" in r else r.get("error", "no time"))
        extra = "".join([f", peak {r['peak_mib']:.0f} MiB" if "peak_mib" in r else "",
                         f", compiled in {r['compile_s']} s" if "compile_s" in r else "",
                         f", host tensors: {' '.join(r['host_tensors'])}" if r.get("host_tensors") else "",
                         f", cudagraph skips {r['cudagraph_skips']}" if r.get("cudagraph_skips") else ""])
        print(f"{config['part']} b{config['batch']} {config['precision']} {config['variant']}: "
              f"{shown}{extra}", flush=True)
        if a.json:
            pathlib.Path(a.json).write_text(json.dumps(results, indent=1))

    print(f"{len(configs)} configurations on {results['device']}, torch {torch.__version__}; "
          f"stand-ins: {', '.join(orig.stand_ins) or 'none'}", flush=True)
    run_bench(a, configs, record)
    print(table(results))
    return status


def table(results):
    """The printed summary: one line per part, batch and precision, a column per variant."""
    cols = [v for v in VARIANTS if any(r["variant"] == v for r in results["rows"])]
    lines = [f"{'part':<12} {'batch':>5} {'prec':<5} " + " ".join(f"{v:>22}" for v in cols)]
    seen = []
    for r in results["rows"]:
        k = (r["part"], r["batch"], r["precision"])
        if k not in seen:
            seen.append(k)
    for part, batch, precision in seen:
        cells = []
        for v in cols:
            r = next((r for r in results["rows"] if (r["part"], r["batch"], r["precision"],
                                                     r["variant"]) == (part, batch, precision, v)), None)
            if r is None:
                cells.append("-")
            elif "p50_ms" in r:
                mem = f" {r['peak_mib']:.0f}MiB" if "peak_mib" in r else ""
                cells.append(f"{r['p50_ms']:.3f} ms{mem}")
            else:
                cells.append("error")
        lines.append(f"{part:<12} {batch:>5} {precision:<5} " + " ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
