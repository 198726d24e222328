#!/usr/bin/env python3
"""Our PyTorch implementation of the CSWinTT transformer (shared/spec/cswintt-transformer.md),
written the way the original computes it: window partition with torch.roll, every key/value
window expanded into its w*w cyclic shifts (materialised, torch.roll + stack), one batched
matmul per head, softmax, window reverse, and nn.MultiheadAttention semantics in the decoder.

It is the PyTorch baseline of docs/PERF.md:
  --check GOLDEN...   runs each golden file in float64 and float32 and prints the largest
                      relative error (||ours - expected||_F / ||expected||_F) over its
                      expected.* tensors; exits 1 when the float32 run is over 1e-5.
  --bench             times the eager encoder (6 layers) and the whole transformer at the
                      released size (c=256, 8 heads, ff=2048, S=24, T=8), batch 1, random
                      weights and inputs, float32 (TF32 off): p50 over --reps passes with
                      CUDA events, after warm-up.
"""
import argparse
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

P = "transformer."


class Config:
    def __init__(self, d_model=256, nhead=8, ff=2048, enc=6, dec=6, s=24, t=8, windows=None):
        self.c, self.h, self.ff, self.enc, self.dec, self.s, self.t = d_model, nhead, ff, enc, dec, s, t
        self.windows = windows or [1, 2, 4, 8, 1, 2, 4, 8]
        self.hd = d_model // nhead
        self.l_all = s * s + 2 * t * t

    @staticmethod
    def from_metadata(m):
        return Config(int(m["d_model"]), int(m["nhead"]), int(m["dim_feedforward"]),
                      int(m["enc_layers"]), int(m["dec_layers"]), int(m["search_size"]),
                      int(m["template_size"]), [int(w) for w in m["window_sizes"].split(",")])

    def shift(self, h):
        return self.windows[h] // 2 if h >= self.h // 2 else 0

    def regions(self):
        """(first token, side, rolled) of template1, template2, search."""
        tt = self.t * self.t
        return [(0, self.t, False), (tt, self.t, False), (2 * tt, self.s, True)]


def random_weights(cfg, gen):
    def u(*shape):
        return (torch.rand(*shape, generator=gen) - 0.5) * 0.1
    c, ff, w = cfg.c, cfg.ff, {}
    for i in range(cfg.enc):
        e = f"{P}transformer.{i}."
        for name, shape in [("qkv_embedding", (3 * c, c)), ("output_linear", (c, c)),
                            ("feedforward.0", (ff, c)), ("feedforward.3", (c, ff))]:
            w[e + name + ".weight"], w[e + name + ".bias"] = u(*shape), u(shape[0])
        for n in ("norm1", "norm2"):
            w[e + n + ".weight"], w[e + n + ".bias"] = 1 + u(c), u(c)
    for i in range(cfg.dec):
        d = f"{P}transformer_post.{i}."
        for a in ("self_attn", "multihead_attn"):
            w[d + a + ".in_proj_weight"], w[d + a + ".in_proj_bias"] = u(3 * c, c), u(3 * c)
            w[d + a + ".out_proj.weight"], w[d + a + ".out_proj.bias"] = u(c, c), u(c)
        for name, shape in [("linear1", (ff, c)), ("linear2", (c, ff))]:
            w[d + name + ".weight"], w[d + name + ".bias"] = u(*shape), u(shape[0])
        for n in ("norm1", "norm2", "norm3"):
            w[d + n + ".weight"], w[d + n + ".bias"] = 1 + u(c), u(c)
    w[P + "post_norm.weight"], w[P + "post_norm.bias"] = 1 + u(c), u(c)
    for win in sorted(set(cfg.windows) & {1, 2, 4}):
        l = cfg.l_all // (win * win)
        w[f"{P}rel_bias_table{win}"] = u((2 * win - 1) * (cfg.l_all // win + (l - 1) // win))
    return w


class Transformer:
    def __init__(self, cfg, weights, device, dtype):
        self.cfg = cfg
        self.w = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
        self.device, self.dtype = device, dtype
        self.sr, self.bias_index = {}, {}
        for win in set(cfg.windows):
            self.sr[win] = self._sr(win).to(device=device, dtype=dtype)
            if win in (1, 2, 4):
                self.bias_index[win] = self._bias_index(win).to(device)

    @staticmethod
    def _sr(w):
        """sr(a, e) = u(a) u(e) - 1 in float16, as the original stores it; (w*w,)."""
        t = torch.arange(w, dtype=torch.float64) / w
        u = torch.where(t > 0.5, t, 1 - t).half()
        return (u[:, None] * u[None, :] - 1).reshape(-1).double()

    def _bias_index(self, w):
        l_all = self.cfg.l_all
        i = torch.arange(l_all // (w * w))[:, None]
        col = torch.arange(l_all)[None, :]
        return (i // w - col // w + l_all // w - 1) * (2 * w - 1) + i % w - col % w + w - 1

    # -- window partition and reverse, per region ------------------------------------
    def partition(self, x, w, s):
        """(b, L_all, d) -> (b, L, w*w*d) with P(w, s)."""
        b, _, d = x.shape
        out = []
        for first, side, rolled in self.cfg.regions():
            g = x[:, first:first + side * side].reshape(b, side, side, d)
            if rolled and s > 0:
                g = torch.roll(g, shifts=(-s, -s), dims=(1, 2))
            n = side // w
            g = g.reshape(b, n, w, n, w, d).permute(0, 1, 3, 2, 4, 5)
            out.append(g.reshape(b, n * n, w * w * d))
        return torch.cat(out, dim=1)

    def reverse(self, o, w, s, d):
        """(b, L, w*w*d) -> (b, L_all, d), the inverse of partition."""
        b = o.shape[0]
        out, at = [], 0
        for _, side, rolled in self.cfg.regions():
            n = side // w
            g = o[:, at:at + n * n].reshape(b, n, n, w, w, d).permute(0, 1, 3, 2, 4, 5)
            g = g.reshape(b, side, side, d)
            if rolled and s > 0:
                g = torch.roll(g, shifts=(s, s), dims=(1, 2))
            out.append(g.reshape(b, side * side, d))
            at += n * n
        return torch.cat(out, dim=1)

    # -- encoder ---------------------------------------------------------------------
    def head(self, q, k, v, m, w, s, layer_heads=None):
        cfg, hd = self.cfg, self.cfg.hd
        b = q.shape[0]
        qw, kw, vw = (self.partition(t, w, s) for t in (q, k, v))
        pad = self.partition(m[:, :, None].to(q.dtype), w, 0).bool().all(dim=2)  # (b, L)
        if w > 1:
            L = qw.shape[1]
            # Every key/value window in its w*w cyclic shifts: column l*w*w + a*w + e.
            def expand(t):
                t = t.reshape(b, L, w, w, hd)
                shifted = [torch.roll(t, shifts=(a, e), dims=(2, 3))
                           for a in range(w) for e in range(w)]
                return torch.stack(shifted, dim=2).reshape(b, L * w * w, w * w * hd)
            kx, vx = expand(kw), expand(vw)
            scores = (qw @ kx.transpose(1, 2) + self.sr[w].repeat(L)) / (w * w)
            colpad = pad.repeat_interleave(w * w, dim=1)
        else:
            kx, vx = kw, vw
            scores = qw @ kx.transpose(1, 2)
            colpad = pad
        scores = scores.masked_fill(colpad[:, None, :], float("-inf"))
        if w in self.bias_index:
            scores = scores + self.w[f"{P}rel_bias_table{w}"][self.bias_index[w]]
        o = torch.softmax(scores, dim=-1) @ vx
        return o

    def encoder_layer(self, i, x, m, capture=None):
        cfg, e = self.cfg, f"{P}transformer.{i}."
        W = self.w
        l_all, b, c = x.shape
        qkv = F.linear(x, W[e + "qkv_embedding.weight"], W[e + "qkv_embedding.bias"])
        q, k, v = qkv.split(c, dim=2)
        q = q * cfg.hd ** -0.5
        outs = []
        for h in range(cfg.h):
            sl = slice(h * cfg.hd, (h + 1) * cfg.hd)
            per = [t[:, :, sl].permute(1, 0, 2) for t in (q, k, v)]  # (b, L_all, hd)
            w, s = cfg.windows[h], cfg.shift(h)
            o = self.head(*per, m, w, s)
            if capture is not None:
                capture[f"encoder.0.head.{h}"] = o
            outs.append(self.reverse(o, w, s, cfg.hd))
        concat = torch.cat(outs, dim=2).permute(1, 0, 2)  # (L_all, b, c)
        if capture is not None:
            capture["encoder.0.heads_concat"] = concat
        y = F.linear(concat, W[e + "output_linear.weight"], W[e + "output_linear.bias"])
        x1 = F.layer_norm(x + y, (c,), W[e + "norm1.weight"], W[e + "norm1.bias"], 1e-5)
        f = F.linear(F.relu(F.linear(x1, W[e + "feedforward.0.weight"], W[e + "feedforward.0.bias"])),
                     W[e + "feedforward.3.weight"], W[e + "feedforward.3.bias"])
        return F.layer_norm(x1 + f, (c,), W[e + "norm2.weight"], W[e + "norm2.bias"], 1e-5)

    def encoder(self, x, m, capture=None):
        for i in range(self.cfg.enc):
            x = self.encoder_layer(i, x, m, capture if i == 0 else None)
            if capture is not None:
                capture[f"encoder.{i}"] = x
        return x

    # -- decoder ---------------------------------------------------------------------
    def mha(self, prefix, q, k, v, pad=None):
        W, c = self.w, self.cfg.c
        out, _ = F.multi_head_attention_forward(
            q, k, v, c, self.cfg.h, W[prefix + "in_proj_weight"], W[prefix + "in_proj_bias"],
            None, None, False, 0.0, W[prefix + "out_proj.weight"], W[prefix + "out_proj.bias"],
            training=False, key_padding_mask=pad, need_weights=False)
        return out

    def decoder(self, mem, m, query, capture=None):
        W, c = self.w, self.cfg.c
        b = mem.shape[1]
        qpos = query[:, None, :].expand(1, b, c)
        t = torch.zeros(1, b, c, device=mem.device, dtype=mem.dtype)
        ln = lambda x, n: F.layer_norm(x, (c,), W[n + ".weight"], W[n + ".bias"], 1e-5)
        for i in range(self.cfg.dec):
            d = f"{P}transformer_post.{i}."
            t = ln(t + self.mha(d + "self_attn.", t + qpos, t + qpos, t), d + "norm1")
            t = ln(t + self.mha(d + "multihead_attn.", t + qpos, mem, mem, m.bool()), d + "norm2")
            f = F.linear(F.relu(F.linear(t, W[d + "linear1.weight"], W[d + "linear1.bias"])),
                         W[d + "linear2.weight"], W[d + "linear2.bias"])
            t = ln(t + f, d + "norm3")
            if capture is not None:
                capture[f"decoder.{i}"] = t
        return ln(t, P + "post_norm")

    def forward(self, x, m, query, capture=None):
        mem = self.encoder(x, m, capture)
        hs = self.decoder(mem, m, query, capture)
        return mem[2 * self.cfg.t * self.cfg.t:], hs


def merged_inputs(g, cfg, device, dtype):
    """x0 (L_all, b, c), m (b, L_all) and the query from golden `input.*` tensors."""
    feats = [g[f"input.{r}.feat"] for r in ("template1", "template2", "search")]
    b = feats[2].shape[2]
    x = torch.cat([f.reshape(-1, b, cfg.c) for f in feats], dim=0)
    masks = [g.get(f"input.{r}.mask") for r in ("template1", "template2", "search")]
    m = torch.cat([mk.reshape(b, -1) if mk is not None else torch.zeros(b, f.shape[0] * f.shape[1])
                   for mk, f in zip(masks, feats)], dim=1) != 0
    return x.to(device, dtype), m.to(device), g["input.query_embed"].to(device, dtype)


def relative_error(ours, want):
    ours, want = ours.double().cpu(), want.double().cpu()
    return float((ours - want).norm() / want.norm())


def check(golden_path, device):
    weights_path = golden_path.replace(".golden.", ".weights.")
    with safe_open(weights_path, "pt") as f:
        cfg = Config.from_metadata(f.metadata())
    weights, g = load_file(weights_path), load_file(golden_path)
    worst = {}
    for dtype in (torch.float64, torch.float32):
        model = Transformer(cfg, weights, device, dtype)
        x, m, query = merged_inputs(g, cfg, device, dtype)
        cap = {}
        search, hs = model.forward(x, m, query, cap)
        cap["search_feat"], cap["hs"] = search, hs
        errs = {n: relative_error(cap[n[len("expected."):]], g[n])
                for n in g if n.startswith("expected.")}
        worst[dtype] = max(errs.values())
        print(f"{golden_path}: {dtype}: {len(errs)} tensors, max relative error {worst[dtype]:.3e}")
    return worst[torch.float32] <= 1e-5


def bench(device, reps, warmup):
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = Config()
    gen = torch.Generator().manual_seed(2022)
    model = Transformer(cfg, random_weights(cfg, gen), device, torch.float32)
    x = torch.randn(cfg.l_all, 1, cfg.c, generator=gen).to(device)
    m = torch.zeros(1, cfg.l_all, dtype=torch.bool, device=device)
    query = torch.randn(1, cfg.c, generator=gen).to(device)
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; released size, batch 1, "
          f"float32 (TF32 off); p50 (p10-p90) over {reps} passes after {warmup} warm-up")
    with torch.inference_mode():
        for name, fn in [("encoder", lambda: model.encoder(x, m)),
                         ("transformer", lambda: model.forward(x, m, query))]:
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            times.sort()
            pick = lambda p: times[round((len(times) - 1) * p)]
            print(f"torch eager {name:<12} {pick(0.5):8.3f} ({pick(0.1):.3f}-{pick(0.9):.3f}) ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", nargs="*", default=[], metavar="GOLDEN")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    ok = all([check(g, a.device) for g in a.check])
    if a.bench:
        bench(a.device, a.reps, a.warmup)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
