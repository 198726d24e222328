#!/usr/bin/env python3
"""PyTorch references for the trainer's measurements (docs/TRAINING.md, docs/PERF.md).

  --allreduce: NCCL all-reduce bus bandwidth at 1, 16, 64 and 256 MB over each GPU count of
               --gpus (a list; default 2 up to every GPU), one process per GPU, measured and
               printed as a table like tests/train_gpu.rs::allreduce_bandwidth
               (2 (n-1)/n * bytes / time).
  --train:     DistributedDataParallel training throughput of the same model as ours:
               `--model mlp` (3072 -> H1 -> H2 -> 10, ReLU; --hidden) or `--model vit-small`
               (patch 4, width 384, 12 pre-norm blocks of 6-head attention and a 1536-wide tanh-GELU
               MLP, mean pool, head), AdamW, f32, no TF32, on random data already on the GPU, so it
               measures compute and gradient exchange only. --bf16 runs the forward and the loss
               under torch.autocast(bfloat16) (bf16 matmuls, f32 weights and optimizer), the
               counterpart of attnrt-train --precision bf16.

Usage: python3 scripts/torch_ddp_reference.py --allreduce [--gpus 2,4]
       python3 scripts/torch_ddp_reference.py --train --hidden 512,256 --batch 256 --gpus 1
       python3 scripts/torch_ddp_reference.py --train --model vit-small --batch 256 --gpus 1 --bf16
Processes are started with torch.multiprocessing (no torchrun).
NCCL_NVLS_ENABLE=0 must stay set on shared machines (NVLink multicast off).
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


SIZES_MB = (1, 16, 64, 256)


def allreduce(rank, world, out):
    for mb in SIZES_MB:
        n = mb * 1_000_000 // 4
        x = torch.zeros(n, device=rank)
        for _ in range(5):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        iters = 50
        t = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        s = (time.perf_counter() - t) / iters
        bus = 2 * (world - 1) / world * n * 4 / s / 1e9
        if rank == 0:
            out.append({"gpus": world, "mb": mb, "us": s * 1e6, "bus_gbps": bus})


class Block(torch.nn.Module):
    def __init__(self, d, heads, mlp):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.fc1, self.fc2 = torch.nn.Linear(d, mlp), torch.nn.Linear(mlp, d)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(n, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class Vit(torch.nn.Module):
    def __init__(self, patch=4, d=384, depth=12, heads=6, mlp=1536, classes=10):
        super().__init__()
        self.patch = patch
        t = (32 // patch) ** 2
        self.embed = torch.nn.Linear(3 * patch * patch, d)
        self.pos = torch.nn.Parameter(torch.zeros(t, d))
        self.blocks = torch.nn.Sequential(*[Block(d, heads, mlp) for _ in range(depth)])
        self.norm, self.head = torch.nn.LayerNorm(d), torch.nn.Linear(d, classes)

    def forward(self, x):
        n, p = x.shape[0], self.patch
        x = x.view(n, 3, 32 // p, p, 32 // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, 3 * p * p)
        x = self.blocks(self.embed(x) + self.pos)
        return self.head(self.norm(x).mean(1))


def train(rank, world, args, out):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.model == "vit-small":
        model = Vit().to(rank)
        name = "vit-small"
    else:
        dims = [3072] + [int(h) for h in args.hidden.split(",")] + [10]
        layers = []
        for i in range(len(dims) - 1):
            layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
            if i + 2 < len(dims):
                layers.append(torch.nn.ReLU())
        model = torch.nn.Sequential(*layers).to(rank)
        name = f"mlp:{args.hidden}"
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    shard = args.batch // world
    x = torch.randn(shard, 3072, device=rank)
    y = torch.randint(0, 10, (shard,), device=rank)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=args.bf16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(20):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    s = time.perf_counter() - t
    if rank == 0:
        rate = args.steps * args.batch / s
        precision = "bf16 autocast" if args.bf16 else "f32"
        out.append({"gpus": world, "precision": precision, "samples_per_s": rate})
        print(f"torch {'DDP' if world > 1 else 'eager'} {name} {precision} batch {args.batch} on {world} GPU(s): {rate:.0f} samples/s", flush=True)


def worker(rank, world, port, args, out):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.cuda.set_device(rank)
    if world > 1 or args.allreduce:
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device(rank))
    if args.allreduce:
        allreduce(rank, world, out)
    else:
        train(rank, world, args, out)
    if dist.is_initialized():
        dist.destroy_process_group()


def gpu_counts(arg, allreduce):
    """--gpus as a list of GPU counts: `2,4`, or by default 2 up to every GPU (all-reduce) or
    every GPU (training)."""
    available = torch.cuda.device_count()
    if arg:
        counts = [int(n) for n in arg.split(",") if n.strip().isdigit()]
        bad = len(counts) != len(arg.split(","))
    else:
        counts = list(range(2, available + 1)) if allreduce else [available]
        bad = False
    bad = bad or any(not 1 <= n <= available or (allreduce and n < 2) for n in counts)
    if not counts or bad or (not allreduce and len(counts) != 1):
        raise SystemExit(f"--gpus {arg}: {available} GPUs present; the all-reduce takes counts "
                         f"from 2, training one count")
    return counts


def print_table(rows):
    """The all-reduce results in the form tests/train_gpu.rs::allreduce_bandwidth prints."""
    print(f"{'MB':>5} {'GPUs':>4} {'us':>10} {'bus GB/s':>10}")
    for r in sorted(rows, key=lambda r: (r["mb"], r["gpus"])):
        print(f"{r['mb']:>5} {r['gpus']:>4} {r['us']:>10.1f} {r['bus_gbps']:>10.1f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--allreduce", action="store_true")
    p.add_argument("--train", action="store_true")
    p.add_argument("--gpus", help="GPU counts, comma-separated (the all-reduce) or one (training)")
    p.add_argument("--model", default="mlp", choices=["mlp", "vit-small"])
    p.add_argument("--hidden", default="512,256")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--bf16", action="store_true", help="--train under torch.autocast(bfloat16)")
    p.add_argument("--json")
    args = p.parse_args()
    counts = gpu_counts(args.gpus, args.allreduce)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    base_port = int(os.environ.get("MASTER_PORT", "29517"))
    print(torch.cuda.get_device_name(0), "x", ",".join(map(str, counts)), "torch", torch.__version__,
          flush=True)
    with mp.Manager() as m:
        out = m.list()
        for world in counts:
            # A port per group, so one group's lingering sockets cannot delay the next.
            mp.spawn(worker, args=(world, base_port + world, args, out), nprocs=world)
        results = list(out)
    if args.allreduce:
        print("nccl all-reduce (NCCL_NVLS_ENABLE=%s)" % os.environ["NCCL_NVLS_ENABLE"])
        print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
