#!/usr/bin/env python3
"""Draws loss and accuracy curves from attnrt-train logs (run with --log-every 1) as an SVG,
with no plotting library: `step N/M  loss L  acc A ...` lines become polylines.

Usage: python3 scripts/plot_loss_curves.py OUT.svg [--steps 60] LABEL=LOG [LABEL=LOG ...]
Convert to PNG with: rsvg-convert -o OUT.png OUT.svg
"""
import re
import sys

LINE = re.compile(r"step\s+(\d+)/\d+\s+loss\s+([\d.]+)\s+acc\s+([\d.]+)")
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
W, H, PAD = 420, 260, 45


def read(path):
    with open(path) as f:
        return [(int(m[1]), float(m[2]), float(m[3])) for m in map(LINE.search, f) if m]


def panel(x0, title, series, key, ymax, steps):
    out = [f'<g transform="translate({x0},0)">',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>',
           f'<rect x="{PAD}" y="{PAD - 15}" width="{W - PAD - 10}" height="{H - 2 * PAD + 15}" fill="none" stroke="#888"/>']
    sx = lambda s: PAD + (W - PAD - 10) * (s - 1) / max(steps - 1, 1)
    sy = lambda v: H - PAD - (H - 2 * PAD + 15) * min(v, ymax) / ymax
    for t in range(5):
        v = ymax * t / 4
        out.append(f'<text x="{PAD - 5}" y="{sy(v) + 4}" text-anchor="end" font-size="10">{v:.2g}</text>')
    for t in range(0, steps + 1, max(steps // 6, 1)):
        if t >= 1:
            out.append(f'<text x="{sx(t)}" y="{H - PAD + 14}" text-anchor="middle" font-size="10">{t}</text>')
    out.append(f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle" font-size="11">step</text>')
    for i, (label, rows) in enumerate(series):
        pts = " ".join(f"{sx(r[0]):.1f},{sy(r[1 + key]):.1f}" for r in rows if r[0] <= steps)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{COLOURS[i % 4]}" stroke-width="1.8"/>')
        out.append(f'<text x="{W - 20}" y="{PAD + 5 + 14 * i}" text-anchor="end" font-size="11" fill="{COLOURS[i % 4]}">{label}</text>')
    out.append("</g>")
    return out


def write_svg(out_path, series, steps, titles=("training loss (batch mean)", "training accuracy (batch)")):
    """Writes the loss and accuracy panels of `series`, a list of (label, [(step, loss, acc)])."""
    ymax = max(r[1] for _, rows in series for r in rows if r[0] <= steps) * 1.05
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H}" font-family="sans-serif">',
           f'<rect width="{2 * W}" height="{H}" fill="white"/>']
    svg += panel(0, titles[0], series, 0, ymax, steps)
    svg += panel(W, titles[1], series, 1, 1.0, steps)
    svg.append("</svg>")
    with open(out_path, "w") as f:
        f.write("\n".join(svg) + "\n")


def main():
    args = sys.argv[1:]
    out_path, steps = args.pop(0), 60
    if args[0] == "--steps":
        steps = int(args[1])
        args = args[2:]
    series = [(a.rsplit("=", 1)[0], read(a.rsplit("=", 1)[1])) for a in args]
    write_svg(out_path, series, steps)


if __name__ == "__main__":
    main()
