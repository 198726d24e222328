#!/usr/bin/env python3
"""Train each torchvision CNN for a few steps in PyTorch and in attnrt from the same weights
on the same batches, and compare the loss curves step by step.

For every model (default all five: resnet50, densenet121, alexnet, resnext50_32x4d,
shufflenet_v2_x1_0):
  1. initial weights: torchvision's random initialisation (seeded), written by
     scripts/export_torchvision.py's code to OUT/MODEL.init.safetensors;
  2. data: one file, OUT/data.safetensors, of STEPS x BATCH synthetic images (class patterns
     plus noise, drawn from --seed) and labels, which attnrt reads as `dataset =
     "tensors:FILE"`: in file order, without augmentation, so step t of both is samples
     t*B .. (t+1)*B;
  3. attnrt: `attnrt-train --jobs OUT/MODEL.toml --gpus G --log-every 1` (the job: the model,
     the data, `init_weights`, `classes`, the optimizer and learning rate, and for AlexNet
     `dropout = 0.0`, since the two frameworks draw different dropout masks). When the GPU
     path refuses the job (not built yet, or a key it does not support) the run is repeated
     on the CPU and the table says `cpu (fallback)`;
  4. PyTorch: the same model loaded from the same file, train mode, f32 with TF32 off,
     deterministic cuDNN, the same optimizer (SGD: momentum 0.9, no weight decay, as attnrt's;
     AdamW: betas 0.9/0.999, eps 1e-8, weight decay 0.01, PyTorch's defaults and attnrt's);
  5. both losses side by side per step, the relative difference |attnrt - torch| / torch at
     step 1 (one forward pass from identical weights: f32 rounding, ~1e-6, below attnrt's
     printed 4 decimals) and its maximum over the steps (it grows: f32 rounding differences
     compound through the updates, fastest with batch norm over small batches), the logs
     OUT/MODEL.{torch,attnrt}.log and a plot OUT/MODEL.svg (scripts/plot_loss_curves.py),
     and OUT/summary.json;
  6. with --control, PyTorch a second time on the same weights and batches with cuDNN's
     nondeterministic, benchmarked algorithms (PyTorch against itself with only the order of
     its sums changed): its largest relative difference from the first PyTorch run is how far
     rounding alone moves this model's curve (OUT/MODEL.control.log, the summary's
     `control_max_rel`), the yardstick for attnrt's.

Usage (on a machine with PyTorch and torchvision; build attnrt first):
  cargo build --release --bin attnrt-train
  python3 scripts/compare_loss_curves.py [--models all|M1,M2] [--steps 40] [--batch 16]
      [--size 64] [--classes 10] [--optimizer sgd|adamw] [--lr 0.01] [--gpus 0|cpu]
      [--bin target/release/attnrt-train] [--out loss-curves] [--seed 0] [--control]

Exit status: 0 compared (whatever the differences: read the table), 1 a run failed, 2 bad
usage or PyTorch missing. The pure parts (the job file, log parsing, the comparison, the
table) are tested without PyTorch by scripts/test_compare_loss_curves.py.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MODELS = ("resnet50", "densenet121", "alexnet", "resnext50_32x4d", "shufflenet_v2_x1_0")
# The models with dropout layers (a `dropout` key on any other is an error).
WITH_DROPOUT = ("alexnet",)
STEP_LINE = re.compile(r"step\s+(\d+)/\d+\s+loss\s+([-\d.eE+naif]+)\s+acc\s+([\d.]+)")
# What attnrt says when its GPU path cannot run a job: then the CPU runs it.
GPU_REFUSALS = ("not built yet", "not supported on GPUs", "no usable GPU")


def job_text(model, data, weights, classes, batch, steps, optimizer, lr):
    """The attnrt job file of one model's run."""
    lines = [
        "[[job]]",
        f'name = "{model}"',
        f'model = "{model}"',
        f'dataset = "tensors:{data}"',
        f"classes = {classes}",
        f'init_weights = "{weights}"',
        f"batch_size = {batch}",
        f"iterations = {steps}",
        f'optimizer = "{optimizer}"',
        f"lr = {lr!r}",
    ]
    if model in WITH_DROPOUT:
        lines.append("dropout = 0.0")
    return "\n".join(lines) + "\n"


def parse_steps(text):
    """[(step, loss, accuracy)] from attnrt-train's `--log-every 1` lines."""
    return [(int(m[1]), float(m[2]), float(m[3])) for m in map(STEP_LINE.search, text.splitlines()) if m]


def log_lines(rows, steps):
    """Rows written in attnrt-train's step-line format (what plot_loss_curves.py reads)."""
    return "".join(f"step {s:>6}/{steps}  loss {loss:.6f}  acc {acc:.3f}\n" for s, loss, acc in rows)


def compare(attnrt, torch_rows):
    """Per-step relative differences of the losses, over the steps both have."""
    theirs = {s: loss for s, loss, _ in torch_rows}
    out = []
    for s, loss, _ in attnrt:
        if s in theirs:
            t = theirs[s]
            out.append((s, loss, t, abs(loss - t) / max(abs(t), 1e-12)))
    return out


def summary_row(model, device, diffs, control=None):
    """One model's line of the summary: step 1's and the largest relative difference, and
    with `control` (PyTorch's second run against its first, as `compare` gives) the control's
    largest."""
    if not diffs:
        return {"model": model, "attnrt_device": device, "steps": 0, "step1_rel": None,
                "max_rel": None, "max_rel_step": None}
    worst = max(diffs, key=lambda d: d[3])
    row = {"model": model, "attnrt_device": device, "steps": len(diffs),
           "step1_rel": diffs[0][3], "max_rel": worst[3], "max_rel_step": worst[0],
           "final_attnrt": diffs[-1][1], "final_torch": diffs[-1][2]}
    if control:
        worst = max(control, key=lambda d: d[3])
        row.update(control_max_rel=worst[3], control_max_rel_step=worst[0])
    return row


def side_by_side(model, device, diffs):
    """The per-step table of one model."""
    out = [f"{model} (attnrt on {device})", f"{'step':>5} {'attnrt':>10} {'pytorch':>10} {'rel diff':>9}"]
    out += [f"{s:>5} {a:>10.4f} {t:>10.4f} {r:>9.2e}" for s, a, t, r in diffs]
    return "\n".join(out)


def summary_table(rows):
    """One line per model; with a control run, its largest difference (torch vs torch)."""
    control = any("control_max_rel" in r for r in rows)
    extra = f" {'torch/torch':>11} {'at':>4}" if control else ""
    out = [f"{'model':<20} {'attnrt on':<16} {'steps':>5} {'step 1':>9} {'max':>9} {'at':>4}{extra}"]
    for r in rows:
        if r["steps"] == 0:
            out.append(f"{r['model']:<20} {r['attnrt_device']:<16} {0:>5} {'-':>9} {'-':>9} {'-':>4}")
            continue
        line = (f"{r['model']:<20} {r['attnrt_device']:<16} {r['steps']:>5} "
                f"{r['step1_rel']:>9.2e} {r['max_rel']:>9.2e} {r['max_rel_step']:>4}")
        if "control_max_rel" in r:
            line += f" {r['control_max_rel']:>11.2e} {r['control_max_rel_step']:>4}"
        out.append(line)
    return "\n".join(out)


# ---- the parts that need PyTorch ----

def make_data(path, steps, batch, size, classes, seed):
    """STEPS x BATCH images: a smooth random pattern per class plus noise, with labels."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    n = steps * batch
    ys = torch.linspace(0, 6.283, size).view(1, 1, size, 1)
    xs = torch.linspace(0, 6.283, size).view(1, 1, 1, size)
    f = torch.rand(classes, 3, 2, 1, 1, generator=g) * 2.5 + 0.5
    p = torch.rand(classes, 3, 2, 1, 1, generator=g) * 6.283
    patterns = torch.sin(f[:, :, 0] * ys + p[:, :, 0]) * torch.cos(f[:, :, 1] * xs + p[:, :, 1])
    labels = torch.randint(0, classes, (n,), generator=g)
    images = patterns[labels] + 0.5 * torch.randn(n, 3, size, size, generator=g)
    save_file({"images": images.contiguous().float(), "labels": labels.to(torch.int64)}, path,
              metadata={"classes": str(classes)})


def export_weights(model, path, classes, seed):
    from export_torchvision import export

    args = argparse.Namespace(model=model, out=path, classes=classes, weights="none",
                              checkpoint=None, seed=seed)
    if export(args) != 0:
        raise RuntimeError(f"exporting {model}'s weights failed")


def train_torch(model_name, weights, data, classes, batch, steps, optimizer, lr, device,
                deterministic=True):
    """PyTorch's rows; `deterministic=False` lets cuDNN benchmark and take nondeterministic
    algorithms (the control run)."""
    import torch
    import torchvision
    from safetensors.torch import load_file

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    tensors = load_file(data)
    images, labels = tensors["images"], tensors["labels"]
    state = load_file(weights)
    model = torchvision.models.get_model(model_name, weights=None, num_classes=classes)
    model.load_state_dict(state)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model = model.to(device).train()
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    rows = []
    for t in range(steps):
        x = images[t * batch:(t + 1) * batch].to(device)
        y = labels[t * batch:(t + 1) * batch].to(device)
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        opt.step()
        acc = (logits.argmax(1) == y).float().mean().item()
        rows.append((t + 1, loss.item(), acc))
    return rows


def run_attnrt(binary, job, gpus, seed):
    """attnrt's rows and the device it ran on ('cpu (fallback)' after a GPU refusal)."""
    def once(devices):
        cmd = [binary, "--jobs", job, "--gpus", devices, "--log-every", "1", "--seed", str(seed)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        return p.returncode, p.stdout + p.stderr

    code, text = once(gpus)
    device = gpus
    if code != 0 and gpus != "cpu" and any(r in text for r in GPU_REFUSALS):
        print(f"  attnrt refused the GPU ({text.strip().splitlines()[-1]}); on the CPU instead",
              file=sys.stderr)
        code, text = once("cpu")
        device = "cpu (fallback)"
    if code != 0:
        raise RuntimeError(f"attnrt-train failed ({code}):\n{text}")
    return parse_steps(text), device


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="all")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--gpus", default="0")
    p.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "attnrt-train"))
    p.add_argument("--out", default="loss-curves")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--control", action="store_true",
                   help="run PyTorch twice, the second with other cuDNN algorithms")
    args = p.parse_args(argv)
    models = MODELS if args.models == "all" else tuple(args.models.split(","))
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"--models: {unknown} not among {', '.join(MODELS)}")
    if args.size < 63 and "alexnet" in models:
        p.error("--size: AlexNet needs 63 or more")
    if not os.path.isfile(args.bin):
        p.error(f"--bin {args.bin}: no such file (cargo build --release --bin attnrt-train)")
    try:
        import torch
        from plot_loss_curves import write_svg
    except ImportError as e:
        print(f"compare_loss_curves: needs PyTorch, torchvision and safetensors ({e})", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() and args.gpus != "cpu" else "cpu"
    os.makedirs(args.out, exist_ok=True)
    data = os.path.abspath(os.path.join(args.out, "data.safetensors"))
    make_data(data, args.steps, args.batch, args.size, args.classes, args.seed)
    rows = []
    for model in models:
        started = time.time()
        weights = os.path.abspath(os.path.join(args.out, f"{model}.init.safetensors"))
        export_weights(model, weights, args.classes, args.seed)
        job = os.path.join(args.out, f"{model}.toml")
        with open(job, "w") as f:
            f.write(job_text(model, data, weights, args.classes, args.batch, args.steps,
                             args.optimizer, args.lr))
        try:
            ours, where = run_attnrt(args.bin, job, args.gpus, args.seed)
        except RuntimeError as e:
            print(f"{model}: {e}", file=sys.stderr)
            return 1
        theirs = train_torch(model, weights, data, args.classes, args.batch, args.steps,
                             args.optimizer, args.lr, device)
        logs = [("attnrt", ours), ("torch", theirs)]
        control = None
        if args.control:
            again = train_torch(model, weights, data, args.classes, args.batch, args.steps,
                                args.optimizer, args.lr, device, deterministic=False)
            logs.append(("control", again))
            control = compare(again, theirs)
        for name, r in logs:
            with open(os.path.join(args.out, f"{model}.{name}.log"), "w") as f:
                f.write(log_lines(r, args.steps))
        write_svg(os.path.join(args.out, f"{model}.svg"),
                  [(f"pytorch ({device})", theirs), (f"attnrt ({where})", ours)], args.steps,
                  titles=(f"{model}: loss", f"{model}: batch accuracy"))
        diffs = compare(ours, theirs)
        print(side_by_side(model, where, diffs))
        print(f"  ({time.time() - started:.0f} s)\n")
        rows.append(summary_row(model, where, diffs, control))
    print(summary_table(rows))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"steps": args.steps, "batch": args.batch, "size": args.size,
                   "classes": args.classes, "optimizer": args.optimizer, "lr": args.lr,
                   "torch_device": device, "models": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
