#!/usr/bin/env python3
"""PyTorch's own run of a train-step golden file, scored the way `attnrt-train --check` scores
ours (docs/TRAINING.md; the spec: ../shared/spec/train-step-golden.md).

One step (forward in train mode, mean cross-entropy, backward; no optimizer step) of the
file's torchvision model with the file's weights, batch and labels, on a device and dtype,
compared with the file's f64 expectation per family: logits and loss (relative error),
grad_norm (largest absolute error over the largest norm), grad and buffer (the worst tensor's
relative Frobenius error). With --perturb EPS the weights are first multiplied by 1 +- EPS
(signs from --seeds): how far the step moves when its inputs move by about one f32 rounding.
A ReLU whose input is that close to zero flips, and the batch norms at small batches amplify
the flip into the gradients of every layer before it, so this measures what any f32
implementation can promise on this file.

Usage:
  python3 scripts/torch_golden_cnn.py GOLDEN.safetensors [--device cuda] [--dtypes f32,f64]
      [--perturb 0,1e-7] [--seeds 3]
Prints one line per (dtype, eps, seed) with each family's error and tolerance.
"""
import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from original_cswintt import SetupError, read_safetensors  # noqa: E402


def step(model, images, labels):
    """(logits, loss, grads by name, buffers by name) of one train-mode step."""
    import torch
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(images)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    buffers = {k: b for k, b in model.named_buffers() if b.is_floating_point()}
    return logits.detach(), loss.item(), grads, buffers


def rel(got, want):
    got, want = got.double().flatten().cpu(), want.double().flatten().cpu()
    d = (want.norm().item() or 1.0)
    return (got - want).norm().item() / d


def score(tensors, logits, loss, grads, buffers):
    """{family: error} as attnrt's golden check computes them."""
    out = {"logits": rel(logits, tensors["expected.logits"]),
           "loss": abs(loss - tensors["expected.loss"].double().item())
           / abs(tensors["expected.loss"].double().item())}
    worst, largest = 0.0, 0.0
    for name, g in grads.items():
        want = tensors[f"expected.grad_norm.{name}"].double().item()
        largest = max(largest, want)
        worst = max(worst, abs(g.double().norm().item() - want))
    out["grad_norm"] = worst / largest
    for family, prefix, source in (("grad", "expected.grad.", grads),
                                   ("buffer", "expected.buffer.", buffers)):
        out[family] = max(rel(source[k[len(prefix):]], v)
                          for k, v in tensors.items() if k.startswith(prefix))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("golden")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="f32,f64")
    ap.add_argument("--perturb", default="0,1e-7")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    dtypes = args.dtypes.split(",")
    if not set(dtypes) <= {"f32", "f64"}:
        ap.error(f"--dtypes: expected f32 and/or f64, not '{args.dtypes}'")
    try:
        perturb = [float(e) for e in args.perturb.split(",")]
    except ValueError:
        ap.error(f"--perturb: expected numbers separated by commas, not '{args.perturb}'")
    import torch
    import torchvision
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        tensors, md = read_safetensors(args.golden)
    except SetupError as e:
        print(f"torch_golden_cnn.py: {e}", file=sys.stderr)
        return 2
    own = json.loads(md["f32_vs_f64_max_rel_err"])
    tol = {k: max(1e-4, 4 * v) for k, v in own.items()}
    classes = int(md["classes"])
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    print(f"{md['model']}: batch {tuple(tensors['input.images'].shape)}, tolerances "
          + " ".join(f"{k} {v:.1e}" for k, v in tol.items()))
    for dtype_name in dtypes:
        dtype = {"f32": torch.float32, "f64": torch.float64}[dtype_name]
        for eps in perturb:
            for seed in range(args.seeds if eps else 1):
                model = getattr(torchvision.models, md["model"])(num_classes=classes)
                if hasattr(model, "classifier"):
                    # The golden files turn AlexNet's dropout off.
                    for m in model.modules():
                        if isinstance(m, torch.nn.Dropout):
                            m.p = 0.0
                model.load_state_dict({k: v.to(torch.float64) for k, v in weights.items()})
                model = model.to(args.device, dtype)
                if eps:
                    g = torch.Generator().manual_seed(seed)
                    with torch.no_grad():
                        for p in model.parameters():
                            sign = torch.randint(0, 2, p.shape, generator=g) * 2 - 1
                            p.mul_(1 + eps * sign.to(args.device, dtype))
                images = tensors["input.images"].to(args.device, dtype)
                labels = tensors["input.labels"].to(args.device)
                errs = score(tensors, *step(model, images, labels))
                verdict = "pass" if all(errs[k] <= tol[k] for k in errs) else "FAIL"
                print(f"  {args.device} {dtype_name} perturb {eps:.0e} seed {seed}: "
                      + "  ".join(f"{k} {v:.2e}" for k, v in errs.items()) + f"  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
