#!/usr/bin/env python3
"""Our own PyTorch implementation of the CSWinTT transformer spec, for peer comparison.

It follows ../shared/spec/cswintt-transformer.md and is validated against the golden files
before anything is timed. It then times what a PyTorch user would pick, on the same card:
eager, a CUDA graph of eager, and torch.compile (default and reduce-overhead).

Usage:
  python3 scripts/torch_reference.py --validate GOLDEN_DIR [--device cpu|cuda]
  python3 scripts/torch_reference.py --bench [--batch 1] [--iters 200] [--json OUT]
      [--compile-timeout S] [--no-compile]

--bench uses a released-size model (c=256, 8 heads, ff=2048, 6+6 layers, search 24, template 8)
with random weights: time does not depend on the values. Everything is fp32 with TF32 off,
timed per call with CUDA events (p50 and p90 in ms, nearest-rank as attnrt takes them). The
four torch.compile variants (encoder and transformer, default and reduce-overhead) compile at
once in four processes and are then timed one at a time (see compile_all). Exit code 1 when validation fails.
"""
import argparse
import json
import multiprocessing as mp
import os
import queue
import sys
import threading
import time

import torch
import torch.nn.functional as F

from torch_timing import cuda_graph, sync, time_fn

F32_TOL = 1e-5


class Config:
    def __init__(self, d_model, nhead, ff, enc_layers, dec_layers, search, template, windows):
        self.c, self.h, self.ff = d_model, nhead, ff
        self.enc_layers, self.dec_layers = enc_layers, dec_layers
        self.S, self.T = search, template
        self.windows = windows
        self.hd = d_model // nhead
        self.l_all = search * search + 2 * template * template

    @staticmethod
    def from_metadata(md):
        return Config(int(md["d_model"]), int(md["nhead"]), int(md["dim_feedforward"]),
                      int(md["enc_layers"]), int(md["dec_layers"]), int(md["search_size"]),
                      int(md["template_size"]), [int(w) for w in md["window_sizes"].split(",")])

    def shift(self, h):
        return self.windows[h] // 2 if h >= self.h // 2 else 0


def partition(x, cfg, w, s):
    """P(w, s): (b, L_all, d) -> (b, L_all / w^2, w*w*d); the search grid rolled by -s."""
    b, _, d = x.shape
    T2 = cfg.T * cfg.T
    regions = [(x[:, :T2], cfg.T, 0), (x[:, T2:2 * T2], cfg.T, 0), (x[:, 2 * T2:], cfg.S, s)]
    out = []
    for g, side, shift in regions:
        g = g.reshape(b, side, side, d)
        if shift:
            g = torch.roll(g, shifts=(-shift, -shift), dims=(1, 2))
        n = side // w
        g = g.reshape(b, n, w, n, w, d).permute(0, 1, 3, 2, 4, 5).reshape(b, n * n, w * w * d)
        out.append(g)
    return torch.cat(out, dim=1)


def reverse(o, cfg, w, s, d):
    """Inverse of P(w, s): (b, L, w*w*d) -> (b, L_all, d)."""
    b = o.shape[0]
    nT, nS = cfg.T // w, cfg.S // w
    counts = [(nT * nT, cfg.T, 0), (nT * nT, cfg.T, 0), (nS * nS, cfg.S, s)]
    out, start = [], 0
    for count, side, shift in counts:
        n = side // w
        g = o[:, start:start + count].reshape(b, n, n, w, w, d).permute(0, 1, 3, 2, 4, 5)
        g = g.reshape(b, side, side, d)
        if shift:
            g = torch.roll(g, shifts=(shift, shift), dims=(1, 2))
        out.append(g.reshape(b, side * side, d))
        start += count
    return torch.cat(out, dim=1)


class HeadTables:
    """What depends only on the config and a head's window: shift gather, sr, bias index."""

    def __init__(self, cfg, w, device):
        L = cfg.l_all // (w * w)
        r = torch.arange(w)
        a = torch.arange(w)
        # K(l,a,e)[r][c] = K(l)[(r-a) mod w][(c-e) mod w]; rows (a,e), columns (r,c).
        src_r = (r[None, :] - a[:, None]) % w  # (a, r)
        idx = (src_r[:, None, :, None] * w + src_r[None, :, None, :])  # (a, e, r, c)
        self.shift_idx = idx.reshape(-1).to(device)
        u = torch.tensor([t / w if t / w > 0.5 else 1 - t / w for t in range(w)], dtype=torch.float64)
        sr = (u[:, None] * u[None, :] - 1).to(torch.float16).to(torch.float32)
        self.sr = sr.reshape(-1).repeat(L).to(device)  # column l*w*w + a*w + e
        i = torch.arange(L)[:, None]
        col = torch.arange(cfg.l_all)[None, :]
        self.bias_idx = (((i // w) - (col // w) + cfg.l_all // w - 1) * (2 * w - 1)
                         + (i % w) - (col % w) + w - 1).to(device)


def window_attention(q, k, v, key_pad, cfg, w, tables, bias_table):
    """One head: q, k, v (b, L, w*w*hd) already partitioned; key_pad (b, L_all) bool."""
    b, L, D = q.shape
    hd = D // (w * w)
    if w == 1:
        score = q @ k.transpose(1, 2)
    else:
        def expand(t):
            t = t.reshape(b, L, w * w, hd)[:, :, tables.shift_idx]
            return t.reshape(b, L * w * w, D)
        k, v = expand(k), expand(v)
        score = (q @ k.transpose(1, 2) + tables.sr) / (w * w)
    score = score.masked_fill(key_pad[:, None, :], float("-inf"))
    if bias_table is not None:
        score = score + bias_table[tables.bias_idx]
    return torch.softmax(score, dim=-1) @ v


def key_padding(mask, cfg, w):
    """(b, L_all) bool: padded key columns for a head with window w (mask partitioned unshifted)."""
    if w == 1:
        return mask
    win = partition(mask[:, :, None].float(), cfg, w, 0)  # (b, L, w*w)
    padded = win.min(dim=-1).values > 0
    return padded.repeat_interleave(w * w, dim=1)


def layer_norm(x, p, name):
    return F.layer_norm(x, x.shape[-1:], p[name + ".weight"], p[name + ".bias"], 1e-5)


def linear(x, p, name):
    return F.linear(x, p[name + ".weight"], p[name + ".bias"])


def encoder_layer(x, mask, p, i, cfg, tables, trace=None):
    pre = f"transformer.transformer.{i}."
    L_all, b, c = x.shape
    qkv = linear(x, p, pre + "qkv_embedding")
    q, k, v = qkv[..., :c] * cfg.hd ** -0.5, qkv[..., c:2 * c], qkv[..., 2 * c:]
    heads = []
    for h, w in enumerate(cfg.windows):
        s = cfg.shift(h)
        sl = slice(h * cfg.hd, (h + 1) * cfg.hd)
        qh, kh, vh = (partition(t[..., sl].transpose(0, 1), cfg, w, s) for t in (q, k, v))
        bias = p.get(f"transformer.rel_bias_table{w}") if w in (1, 2, 4) else None
        o = window_attention(qh, kh, vh, key_padding(mask, cfg, w), cfg, w, tables[w], bias)
        if trace is not None and i == 0:
            trace[f"expected.encoder.0.head.{h}"] = o
        heads.append(reverse(o, cfg, w, s, cfg.hd).transpose(0, 1))
    concat = torch.cat(heads, dim=-1)
    if trace is not None and i == 0:
        trace["expected.encoder.0.heads_concat"] = concat
    x1 = layer_norm(x + linear(concat, p, pre + "output_linear"), p, pre + "norm1")
    ff = linear(F.relu(linear(x1, p, pre + "feedforward.0")), p, pre + "feedforward.3")
    return layer_norm(x1 + ff, p, pre + "norm2")


def mha(q_in, k_in, v_in, p, name, nhead, key_pad=None):
    c = q_in.shape[-1]
    W, B = p[name + ".in_proj_weight"], p[name + ".in_proj_bias"]
    q = F.linear(q_in, W[:c], B[:c])
    k = F.linear(k_in, W[c:2 * c], B[c:2 * c])
    v = F.linear(v_in, W[2 * c:], B[2 * c:])
    Lq, b, _ = q.shape
    Lk = k.shape[0]
    hd = c // nhead
    q = q.reshape(Lq, b * nhead, hd).transpose(0, 1) * hd ** -0.5
    k = k.reshape(Lk, b * nhead, hd).transpose(0, 1)
    v = v.reshape(Lk, b * nhead, hd).transpose(0, 1)
    score = q @ k.transpose(1, 2)
    if key_pad is not None:
        score = score.reshape(b, nhead, Lq, Lk).masked_fill(key_pad[:, None, None, :], float("-inf"))
        score = score.reshape(b * nhead, Lq, Lk)
    o = (torch.softmax(score, dim=-1) @ v).transpose(0, 1).reshape(Lq, b, c)
    return F.linear(o, p[name + ".out_proj.weight"], p[name + ".out_proj.bias"])


def decoder_layer(t, qpos, mem, mask, p, i, cfg):
    pre = f"transformer.transformer_post.{i}."
    t = layer_norm(t + mha(t + qpos, t + qpos, t, p, pre + "self_attn", cfg.h), p, pre + "norm1")
    t = layer_norm(t + mha(t + qpos, mem, mem, p, pre + "multihead_attn", cfg.h, mask), p, pre + "norm2")
    ff = linear(F.relu(linear(t, p, pre + "linear1")), p, pre + "linear2")
    return layer_norm(t + ff, p, pre + "norm3")


def merge_inputs(inp):
    """The three regions, flattened row-major and concatenated: x0 (L_all, b, c), m (b, L_all)."""
    feats = [inp[f"input.{r}.feat"] for r in ("template1", "template2", "search")]
    x0 = torch.cat([f.reshape(-1, f.shape[2], f.shape[3]) for f in feats], dim=0)
    masks = [inp[f"input.{r}.mask"] for r in ("template1", "template2", "search")]
    m = torch.cat([mk.reshape(mk.shape[0], -1) for mk in masks], dim=1) != 0
    return x0, m


def encoder(x, m, p, cfg, tables, trace=None):
    for i in range(cfg.enc_layers):
        x = encoder_layer(x, m, p, i, cfg, tables, trace)
        if trace is not None:
            trace[f"expected.encoder.{i}"] = x
    return x


def transformer(x, m, query, p, cfg, tables, trace=None):
    mem = encoder(x, m, p, cfg, tables, trace)
    b = x.shape[1]
    qpos = query[:, None, :].expand(1, b, cfg.c)
    t = torch.zeros_like(qpos)
    for i in range(cfg.dec_layers):
        t = decoder_layer(t, qpos, mem, m, p, i, cfg)
        if trace is not None:
            trace[f"expected.decoder.{i}"] = t
    hs = layer_norm(t, p, "transformer.post_norm")
    if trace is not None:
        trace["expected.search_feat"] = mem[2 * cfg.T * cfg.T:]
        trace["expected.hs"] = hs
    return mem[2 * cfg.T * cfg.T:], hs


def make_tables(cfg, device):
    return {w: HeadTables(cfg, w, device) for w in sorted(set(cfg.windows))}


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def validate(golden_dir, device):
    from safetensors import safe_open
    from safetensors.torch import load_file
    import pathlib
    ok = True
    for wfile in sorted(pathlib.Path(golden_dir).glob("*.weights.safetensors")):
        name = wfile.name.replace(".weights.safetensors", "")
        with safe_open(str(wfile), "pt") as f:
            cfg = Config.from_metadata(f.metadata())
        p = {k: v.to(device) for k, v in load_file(str(wfile)).items()}
        g = {k: v.to(device) for k, v in load_file(str(wfile).replace(".weights.", ".golden.")).items()}
        x0, m = merge_inputs(g)
        trace = {}
        with torch.no_grad():
            transformer(x0, m, g["input.query_embed"], p, cfg, make_tables(cfg, device), trace)
        for k in sorted(kk for kk in g if kk.startswith("expected.")):
            err = rel_err(trace[k], g[k])
            ok &= err <= F32_TOL
            print(f"{name} {k}: rel err {err:.2e} {'ok' if err <= F32_TOL else 'FAIL'}")
    return ok


SIZES = {
    # The released model: c=256, 8 heads, ff=2048, 6+6 layers, search 24, template 8.
    "released": lambda: Config(256, 8, 2048, 6, 6, 24, 8, [1, 2, 4, 8, 1, 2, 4, 8]),
    # The golden files' tiny model: only to smoke-test the bench machinery (e.g. on the CPU).
    "tiny": lambda: Config(64, 8, 128, 2, 2, 24, 8, [1, 2, 4, 8, 1, 2, 4, 8]),
}


def random_model(cfg, device, batch, seed=0):
    """Random parameters with the checkpoint's names, inputs x (L_all, b, c), mask, query."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale):
        return ((torch.rand(*shape, generator=gen) * 2 - 1) * scale).to(device)

    c, ff = cfg.c, cfg.ff
    p = {}
    for w in (1, 2, 4):
        L = cfg.l_all // (w * w)
        p[f"transformer.rel_bias_table{w}"] = rnd((2 * w - 1) * (cfg.l_all // w + L // w - 1), scale=0.02)
    for i in range(cfg.enc_layers):
        pre = f"transformer.transformer.{i}."
        for n, (o, inn) in {"qkv_embedding": (3 * c, c), "output_linear": (c, c),
                            "feedforward.0": (ff, c), "feedforward.3": (c, ff)}.items():
            p[pre + n + ".weight"] = rnd(o, inn, scale=inn ** -0.5)
            p[pre + n + ".bias"] = rnd(o, scale=0.02)
        for n in ("norm1", "norm2"):
            p[pre + n + ".weight"] = 1 + rnd(c, scale=0.1)
            p[pre + n + ".bias"] = rnd(c, scale=0.02)
    for i in range(cfg.dec_layers):
        pre = f"transformer.transformer_post.{i}."
        for a in ("self_attn", "multihead_attn"):
            p[pre + a + ".in_proj_weight"] = rnd(3 * c, c, scale=c ** -0.5)
            p[pre + a + ".in_proj_bias"] = rnd(3 * c, scale=0.02)
            p[pre + a + ".out_proj.weight"] = rnd(c, c, scale=c ** -0.5)
            p[pre + a + ".out_proj.bias"] = rnd(c, scale=0.02)
        for n, (o, inn) in {"linear1": (ff, c), "linear2": (c, ff)}.items():
            p[pre + n + ".weight"] = rnd(o, inn, scale=inn ** -0.5)
            p[pre + n + ".bias"] = rnd(o, scale=0.02)
        for n in ("norm1", "norm2", "norm3"):
            p[pre + n + ".weight"] = 1 + rnd(c, scale=0.1)
            p[pre + n + ".bias"] = rnd(c, scale=0.02)
    p["transformer.post_norm.weight"] = 1 + rnd(c, scale=0.1)
    p["transformer.post_norm.bias"] = rnd(c, scale=0.02)
    x = rnd(cfg.l_all, batch, c, scale=1.0)
    m = torch.zeros(batch, cfg.l_all, dtype=torch.bool, device=device)
    query = rnd(1, c, scale=1.0)
    return p, x, m, query


def bench_parts(size, device, batch):
    """The two timed functions, `encoder` and `transformer`, on a random model of `size`."""
    cfg = SIZES[size]()
    p, x, m, query = random_model(cfg, device, batch)
    tables = make_tables(cfg, device)
    return {
        "encoder": lambda: encoder(x, m, p, cfg, tables),
        "transformer": lambda: transformer(x, m, query, p, cfg, tables),
    }


def fp32_only():
    """Plain fp32 matrix products (TF32 off), as in every timing here."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


COMPILE_MODES = ("default", "reduce-overhead")


def compile_and_time(part, mode, a, compiled_by, barrier, lock, results):
    """One torch.compile job, in its own process: compile `part` in `mode`, wait until every
    job has compiled (so that no compilation competes for the CPU while anything is timed;
    at most until the wall-clock time `compiled_by`), then time it while holding `lock` (one
    job on the GPU at a time). Puts (part, mode, result) on `results`."""
    fp32_only()
    out = {}
    compiled = None
    try:
        with torch.no_grad():
            fn = bench_parts(a.size, a.device, a.batch)[part]
            t = time.perf_counter()
            compiled = torch.compile(fn, mode=None if mode == "default" else mode)
            # The first call compiles; reduce-overhead records its CUDA graph on the next ones.
            for _ in range(3):
                compiled()
            sync(a.device)
            out["compile_s"] = round(time.perf_counter() - t, 1)
    except Exception as e:  # report, do not hide: a failing compiler is a result too
        out["error"] = f"{type(e).__name__}: {e}"[:300]
    try:
        barrier.wait(timeout=max(0.0, compiled_by - time.time()))
    except threading.BrokenBarrierError:
        out["note"] = "timed while another compile job had not finished"
    if compiled is not None:
        with lock, torch.no_grad():
            out.update(time_fn(compiled, a.iters, a.warmup, a.device))
    results.put((part, mode, out))


def compile_all(a, record):
    """Compiles every (part, mode) at once, one process each, then times them one by one;
    `record(part, mode, result)` gets each result as it arrives.

    torch.compile of this model is expensive: it unrolls every layer and head into one graph
    (about 5,000 nodes for the encoder) and Dynamo, AOTAutograd and Inductor each pass over it;
    done one after another, the four compiles took about 8 minutes on the device machine.
    Their caches do not help each other: `reduce-overhead` changes Inductor's config (part of
    its FX-graph cache key) and the encoder alone is another graph than the transformer. Each
    job compiles exactly what a single torch.compile call would, so the programs timed are
    unchanged; only the compiles overlap. Jobs still compiling after `--compile-timeout`
    seconds are stopped and reported as errors."""
    ctx = mp.get_context("spawn")  # CUDA does not survive fork
    jobs = [(part, mode) for part in ("encoder", "transformer") for mode in COMPILE_MODES]
    # Inductor's own compile workers, shared out among the jobs (children inherit the setting).
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(2, (os.cpu_count() or 2) // 2)))
    barrier, lock, results = ctx.Barrier(len(jobs)), ctx.Lock(), ctx.Queue()
    compiled_by = time.time() + a.compile_timeout
    procs = [ctx.Process(target=compile_and_time,
                         args=(part, mode, a, compiled_by, barrier, lock, results))
             for part, mode in jobs]
    for proc in procs:
        proc.start()
    pending = set(jobs)
    # Compiling, then each job's timing (about 2 s at the released size) with a margin.
    deadline = compiled_by + 20 * len(jobs)
    while pending and time.time() < deadline:
        try:
            part, mode, out = results.get(timeout=max(1.0, deadline - time.time()))
        except queue.Empty:
            break
        pending.discard((part, mode))
        record(part, mode, out)
    for part, mode in sorted(pending):
        record(part, mode, {"error": f"no result within {a.compile_timeout} s of compiling "
                                     "(stopped) or the job died"})
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()


def bench(a):
    fp32_only()
    cuda = a.device.startswith("cuda")
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
               "size": a.size, "batch": a.batch, "iters": a.iters, "warmup": a.warmup,
               "precision": "fp32, TF32 off"}

    def record(part, variant, r):
        """Keeps one result, prints it and rewrites the JSON, so a run cut short keeps its
        results so far."""
        results.setdefault(part, {})[variant] = r
        shown = f"{r['p50_ms']:.3f} ms" if "p50_ms" in r else r.get("error", "no time")
        extra = f" (compiled in {r['compile_s']} s)" if "compile_s" in r else ""
        print(f"{part} {variant}: {shown}{extra}", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)

    with torch.no_grad():
        for part, fn in bench_parts(a.size, a.device, a.batch).items():
            record(part, "eager", time_fn(fn, a.iters, a.warmup, a.device))
            if cuda:
                record(part, "cuda_graph", time_fn(cuda_graph(fn), a.iters, a.warmup, a.device))
    if a.compile:
        compile_all(a, lambda part, mode, r: record(part, f"compile_{mode}", r))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--validate", metavar="GOLDEN_DIR")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", metavar="OUT", help="write the timings here (rewritten after each)")
    ap.add_argument("--size", choices=sorted(SIZES), default="released",
                    help="model to time; 'tiny' only smoke-tests the bench (e.g. --device cpu)")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="time eager and the CUDA graph only")
    ap.add_argument("--compile-timeout", type=float, default=300, metavar="S",
                    help="seconds the torch.compile jobs may take to compile (default 300)")
    a = ap.parse_args()
    if not a.validate and not a.bench:
        ap.error("give --validate GOLDEN_DIR and/or --bench")
    if a.validate:
        torch.backends.cuda.matmul.allow_tf32 = False
        if not validate(a.validate, a.device):
            print("validation FAILED", file=sys.stderr)
            return 1
        print("validation ok")
    if a.bench:
        if a.device.startswith("cuda") and not torch.cuda.is_available():
            print("--bench --device cuda needs a CUDA GPU", file=sys.stderr)
            return 2
        bench(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
