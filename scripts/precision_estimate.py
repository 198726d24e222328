#!/usr/bin/env python3
"""Predicts the golden-file errors of the GPU engine's tf32/bf16 modes without a GPU: the
spec in numpy (float32), every matrix product's operands rounded as the kernels round them
(linears: x and W; attention: q and k, then p and v; tf32 nearest-away, bf16 nearest-even),
compared with the golden files' expected.* tensors. f32 reproduces them to ~3e-7.

Usage: python3 scripts/precision_estimate.py f32|tf32|bf16 NAME... (NAME: tiny_s1,
tiny_pad_s2 in ../shared/golden, or ATTNRT_GOLDEN_DIR). Needs numpy."""
import json, os, struct, sys, pathlib
import numpy as np

def load(path):
    raw = pathlib.Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n]); base = 8 + n; out = {}
    for k, v in hdr.items():
        if k == "__metadata__": continue
        a, b = v["data_offsets"]; dt = {"F32": np.float32, "U8": np.uint8, "F16": np.float16}[v["dtype"]]
        out[k] = np.frombuffer(raw[base + a:base + b], dtype=dt).reshape(v["shape"]).astype(np.float32 if dt != np.uint8 else np.uint8)
    return out, hdr.get("__metadata__", {})

MODE = "f32"
def rnd(x):
    x = np.ascontiguousarray(x, dtype=np.float32); b = x.view(np.uint32)
    if MODE == "bf16": return ((b + 0x7fff + ((b >> 16) & 1)) & 0xffff0000).view(np.float32)
    if MODE == "tf32": return ((b + 0x1000) & 0xffffe000).view(np.float32)
    return x
def mm(a, b): return np.matmul(rnd(a), rnd(b))

class Cfg:
    def __init__(s, md):
        s.c, s.h, s.ff = int(md["d_model"]), int(md["nhead"]), int(md["dim_feedforward"])
        s.enc, s.dec = int(md["enc_layers"]), int(md["dec_layers"])
        s.S, s.T = int(md["search_size"]), int(md["template_size"])
        s.win = [int(w) for w in md["window_sizes"].split(",")]
        s.hd = s.c // s.h; s.l_all = s.S * s.S + 2 * s.T * s.T
    def shift(s, h): return s.win[h] // 2 if h >= s.h // 2 else 0

def partition(x, cfg, w, sh):
    b, _, d = x.shape; T2 = cfg.T * cfg.T; out = []
    for g, side, shift in [(x[:, :T2], cfg.T, 0), (x[:, T2:2 * T2], cfg.T, 0), (x[:, 2 * T2:], cfg.S, sh)]:
        g = g.reshape(b, side, side, d)
        if shift: g = np.roll(g, (-shift, -shift), axis=(1, 2))
        n = side // w
        out.append(g.reshape(b, n, w, n, w, d).transpose(0, 1, 3, 2, 4, 5).reshape(b, n * n, w * w * d))
    return np.concatenate(out, 1)

def reverse(o, cfg, w, sh, d):
    b = o.shape[0]; nT, nS = cfg.T // w, cfg.S // w; out = []; st = 0
    for count, side, shift in [(nT * nT, cfg.T, 0), (nT * nT, cfg.T, 0), (nS * nS, cfg.S, sh)]:
        n = side // w
        g = o[:, st:st + count].reshape(b, n, n, w, w, d).transpose(0, 1, 3, 2, 4, 5).reshape(b, side, side, d)
        if shift: g = np.roll(g, (shift, shift), axis=(1, 2))
        out.append(g.reshape(b, side * side, d)); st += count
    return np.concatenate(out, 1)

def softmax(s):
    m = s.max(-1, keepdims=True); e = np.exp(s - m); return e / e.sum(-1, keepdims=True)

def attention(q, k, v, key_pad, cfg, w, bias_table):
    b, L, D = q.shape; hd = D // (w * w); ww = w * w
    r = np.arange(w); src = (r[None, :] - r[:, None]) % w
    idx = (src[:, None, :, None] * w + src[None, :, None, :]).reshape(-1)
    if w == 1: score = mm(q, k.transpose(0, 2, 1))
    else:
        ex = lambda t: t.reshape(b, L, ww, hd)[:, :, idx].reshape(b, L * ww, D)
        k, v = ex(k), ex(v)
        u = np.array([t / w if t / w > 0.5 else 1 - t / w for t in range(w)])
        sr = (u[:, None] * u[None, :] - 1).astype(np.float16).astype(np.float32).reshape(-1)
        score = (mm(q, k.transpose(0, 2, 1)) + np.tile(sr, L)) / ww
    score = np.where(key_pad[:, None, :], -np.inf, score)
    if bias_table is not None:
        i = np.arange(L)[:, None]; col = np.arange(cfg.l_all)[None, :]
        bi = ((i // w) - (col // w) + cfg.l_all // w - 1) * (2 * w - 1) + (i % w) - (col % w) + w - 1
        score = score + bias_table[bi]
    return mm(softmax(score), v)

def key_padding(mask, cfg, w):
    if w == 1: return mask
    win = partition(mask[:, :, None].astype(np.float32), cfg, w, 0)
    return np.repeat(win.min(-1) > 0, w * w, axis=1)

def ln(x, p, n):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * p[n + ".weight"] + p[n + ".bias"]
def lin(x, p, n): return mm(x, p[n + ".weight"].T) + p[n + ".bias"]

def run(p, g, cfg):
    feats = [g[f"input.{r}.feat"] for r in ("template1", "template2", "search")]
    x = np.concatenate([f.reshape(-1, f.shape[2], f.shape[3]) for f in feats], 0)
    m = np.concatenate([g[f"input.{r}.mask"].reshape(g[f"input.{r}.mask"].shape[0], -1) for r in ("template1", "template2", "search")], 1) != 0
    tr = {}
    for i in range(cfg.enc):
        pre = f"transformer.transformer.{i}."; c = cfg.c
        qkv = lin(x, p, pre + "qkv_embedding")
        q, k, v = qkv[..., :c] * np.float32(cfg.hd ** -0.5), qkv[..., c:2 * c], qkv[..., 2 * c:]
        heads = []
        for h, w in enumerate(cfg.win):
            s = cfg.shift(h); sl = slice(h * cfg.hd, (h + 1) * cfg.hd)
            qh, kh, vh = (partition(t[..., sl].transpose(1, 0, 2), cfg, w, s) for t in (q, k, v))
            o = attention(qh, kh, vh, key_padding(m, cfg, w), cfg, w, p.get(f"transformer.rel_bias_table{w}") if w in (1, 2, 4) else None)
            if i == 0: tr[f"expected.encoder.0.head.{h}"] = o
            heads.append(reverse(o, cfg, w, s, cfg.hd).transpose(1, 0, 2))
        cat = np.concatenate(heads, -1)
        if i == 0: tr["expected.encoder.0.heads_concat"] = cat
        x1 = ln(x + lin(cat, p, pre + "output_linear"), p, pre + "norm1")
        x = ln(x1 + lin(np.maximum(lin(x1, p, pre + "feedforward.0"), 0), p, pre + "feedforward.3"), p, pre + "norm2")
        tr[f"expected.encoder.{i}"] = x
    mem = x; b = x.shape[1]; c = cfg.c; hd = cfg.hd
    qpos = np.broadcast_to(g["input.query_embed"][:, None, :], (1, b, c)); t = np.zeros((1, b, c), np.float32)
    for i in range(cfg.dec):
        pre = f"transformer.transformer_post.{i}."
        W, B = p[pre + "self_attn.in_proj_weight"], p[pre + "self_attn.in_proj_bias"]
        vself = mm(t, W[2 * c:].T) + B[2 * c:]
        t = ln(t + mm(vself, p[pre + "self_attn.out_proj.weight"].T) + p[pre + "self_attn.out_proj.bias"], p, pre + "norm1")
        W, B = p[pre + "multihead_attn.in_proj_weight"], p[pre + "multihead_attn.in_proj_bias"]
        qq = (mm(t + qpos, W[:c].T) + B[:c]) * np.float32(hd ** -0.5)
        kk = mm(mem, W[c:2 * c].T) + B[c:2 * c]; vv = mm(mem, W[2 * c:].T) + B[2 * c:]
        Lk = kk.shape[0]
        qh = qq.reshape(1, b * cfg.h, hd).transpose(1, 0, 2); kh = kk.reshape(Lk, b * cfg.h, hd).transpose(1, 0, 2); vh = vv.reshape(Lk, b * cfg.h, hd).transpose(1, 0, 2)
        sc = mm(qh, kh.transpose(0, 2, 1)).reshape(b, cfg.h, 1, Lk)
        sc = np.where(m[:, None, None, :], -np.inf, sc).reshape(b * cfg.h, 1, Lk)
        o = mm(softmax(sc), vh).transpose(1, 0, 2).reshape(1, b, c)
        t = ln(t + mm(o, p[pre + "multihead_attn.out_proj.weight"].T) + p[pre + "multihead_attn.out_proj.bias"], p, pre + "norm2")
        t = ln(t + lin(np.maximum(lin(t, p, pre + "linear1"), 0), p, pre + "linear2"), p, pre + "norm3")
        tr[f"expected.decoder.{i}"] = t
    tr["expected.search_feat"] = mem[2 * cfg.T * cfg.T:]; tr["expected.hs"] = ln(t, p, "transformer.post_norm")
    return tr

for name in sys.argv[2:]:
    MODE = sys.argv[1]
    d = os.environ.get("ATTNRT_GOLDEN_DIR", str(pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "golden")) + "/"
    p, md = load(d + name + ".weights.safetensors"); g, _ = load(d + name + ".golden.safetensors")
    tr = run(p, g, Cfg(md))
    worst = max((np.linalg.norm(tr[k].astype(np.float64) - g[k]) / np.linalg.norm(g[k]), k) for k in g if k.startswith("expected."))
    print(f"{MODE} {name}: worst relative error {worst[0]:.3e} ({worst[1]})")
