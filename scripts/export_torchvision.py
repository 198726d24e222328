#!/usr/bin/env python3
"""Write a torchvision CNN's weights as safetensors for a job's `init_weights`.

The file holds the model's state dict under torchvision's names (parameters, batch norm
running statistics, `num_batches_tracked`), f32, which `attnrt-train` loads by name and
checks by shape. Models: resnet50, densenet121, alexnet, resnext50_32x4d,
shufflenet_v2_x1_0.

Usage:
  python3 scripts/export_torchvision.py MODEL OUT.safetensors [--classes K]
      [--weights DEFAULT|NAME|none] [--checkpoint FILE]

--weights picks torchvision's pretrained weights (DEFAULT, or a name such as
IMAGENET1K_V2; downloaded by torchvision) or none (torchvision's random initialisation,
seeded by --seed). --checkpoint FILE loads a state dict saved by PyTorch instead (read with
`torch.load(weights_only=True)`, which unpickles tensors and plain containers only; a
`state_dict` or `model` entry is taken when the file holds a dict around it). With
--classes K other than the source's 1000, the classifier (fc / classifier / the last
linear) keeps torchvision's fresh initialisation for K outputs and everything else is
copied: the file fine-tunes the pretrained features on a K-class dataset.

Needs PyTorch and torchvision. Exit status: 0 written; 1 the source does not fit the model;
2 bad usage or an unreadable file.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_checkpoint import write_safetensors  # noqa: E402

MODELS = ("resnet50", "densenet121", "alexnet", "resnext50_32x4d", "shufflenet_v2_x1_0")


def classifier_prefixes(model):
    """The names of the last linear layer's tensors (they depend on the class count)."""
    import torch

    last = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    return (last + ".weight", last + ".bias")


def source_state(args):
    import torch
    import torchvision

    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        return {k.removeprefix("module."): v for k, v in state.items()}
    if args.weights.lower() == "none":
        return None
    model = torchvision.models.get_model(args.model, weights=args.weights)
    return model.state_dict()


def export(args):
    import torch
    import torchvision

    torch.manual_seed(args.seed)
    model = torchvision.models.get_model(args.model, weights=None, num_classes=args.classes)
    state = model.state_dict()
    source = source_state(args)
    if source is not None:
        head = classifier_prefixes(model)
        missing = [k for k in state if k not in source]
        unknown = [k for k in source if k not in state]
        if missing or unknown:
            print(f"export_torchvision: the source does not hold {args.model}'s tensors: "
                  f"missing {missing[:5]}, unknown {unknown[:5]}", file=sys.stderr)
            return 1
        for name, t in source.items():
            if name in head and t.shape != state[name].shape:
                continue  # another class count: keep the fresh classifier
            if t.shape != state[name].shape:
                print(f"export_torchvision: tensor '{name}': shape {tuple(t.shape)}, "
                      f"{args.model} needs {tuple(state[name].shape)}", file=sys.stderr)
                return 1
            state[name] = t
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    meta = {"model": args.model, "classes": str(args.classes), "source": args.checkpoint or args.weights,
            "parameters": str(sum(p.numel() for p in model.parameters()))}
    write_safetensors(args.out, tensors, meta)
    print(f"{args.out}: {args.model}, {args.classes} classes, {len(tensors)} tensors")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=MODELS)
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--weights", default="DEFAULT")
    p.add_argument("--checkpoint")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.classes < 1:
        p.error("--classes must be at least 1")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        p.error(f"--checkpoint {args.checkpoint}: no such file")
    try:
        return export(args)
    except ImportError as e:
        print(f"export_torchvision: needs PyTorch and torchvision ({e})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
