#!/usr/bin/env python3
"""Write a synthetic tracking sequence of JPEG frames: a textured background drifting slowly
and a bright target moving along a smooth path, with `groundtruth.txt` (one `x,y,w,h` line per
frame). For timing attnrt's tracker end to end, decoding included (scripts/perf-tracker.sh).

Usage:
  python3 scripts/make_jpeg_sequence.py OUT_DIR [--frames 1000] [--width 1280] [--height 720]
      [--quality 90] [--seed 0]

Needs numpy and Pillow (or, without Pillow, torchvision's JPEG encoder).
"""
import argparse
import math
import pathlib
import sys

import numpy as np


def encoder():
    """A function (array HxWx3 uint8, path, quality) that writes a JPEG."""
    try:
        from PIL import Image

        def write(a, path, quality):
            Image.fromarray(a).save(path, quality=quality)
        return write
    except ImportError:
        import torch
        from torchvision.io import write_jpeg

        def write(a, path, quality):
            write_jpeg(torch.from_numpy(a).permute(2, 0, 1).contiguous(), str(path), quality=quality)
        return write


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.frames < 1 or a.width < 64 or a.height < 64:
        ap.error("--frames must be at least 1 and the frame at least 64x64")
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    w, h = a.width, a.height
    # A background twice the frame, smoothed noise, from which each frame takes a drifting view.
    bg = rng.integers(0, 256, size=(2 * h, 2 * w, 3), dtype=np.uint8)
    bg = ((bg.astype(np.uint16) + np.roll(bg, 1, 0) + np.roll(bg, 1, 1) + np.roll(bg, 1, (0, 1))) // 4)
    bg = bg.astype(np.uint8)
    tw, th = w // 12, h // 10
    target = np.zeros((th, tw, 3), dtype=np.uint8)
    target[..., 0], target[..., 1], target[..., 2] = 230, 190, 60
    target[th // 3: 2 * th // 3, tw // 3: 2 * tw // 3] = (40, 60, 220)
    write = encoder()
    lines = []
    for i in range(a.frames):
        t = i / max(a.frames - 1, 1)
        ox = int((w / 2) * (0.5 + 0.5 * math.sin(2 * math.pi * t)))
        oy = int((h / 2) * (0.5 + 0.5 * math.cos(2 * math.pi * t)))
        frame = bg[oy:oy + h, ox:ox + w].copy()
        x = int((w - tw) * (0.5 + 0.4 * math.sin(6 * math.pi * t)))
        y = int((h - th) * (0.5 + 0.4 * math.sin(4 * math.pi * t + 1.0)))
        frame[y:y + th, x:x + tw] = target
        write(frame, out / f"{i + 1:08d}.jpg", a.quality)
        lines.append(f"{x},{y},{tw},{th}")
    (out / "groundtruth.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {a.frames} {w}x{h} JPEG frames and groundtruth.txt to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
