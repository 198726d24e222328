#!/usr/bin/env python3
"""Draws Chrome-trace JSON files (from `attnrt-infer --trace` or the engine bench's
`--trace-dir`) as one SVG timeline: one row per stream, one bar per span, one panel per file.

Usage: python3 scripts/trace_to_svg.py OUT.svg TRACE.json [TRACE.json ...] [--until-us T]
No dependencies beyond the standard library.
"""
import argparse
import json
import pathlib

ROW, LABEL, WIDTH, GAP = 18, 110, 900, 34
COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f"]


def load(path, until):
    data = json.loads(pathlib.Path(path).read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and e["ts"] < until]


def colour(name):
    if "/head " in name:
        return COLOURS[int(name.rsplit(" ", 1)[1]) % len(COLOURS)]
    return "#bab0ac"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--until-us", type=float, default=float("inf"),
                    help="draw only spans starting before this time")
    a = ap.parse_args()
    panels = [(pathlib.Path(t).stem, load(t, a.until_us)) for t in a.traces]
    end = max(e["ts"] + e["dur"] for _, evs in panels for e in evs)
    scale = WIDTH / end
    parts, y = [], 10
    for title, evs in panels:
        lanes = sorted({e["tid"] for e in evs})
        parts.append(f'<text x="4" y="{y + 12}" font-weight="bold">{title}</text>')
        y += GAP - 14
        for lane in lanes:
            label = "main stream" if lane == 0 else f"stream {lane}"
            parts.append(f'<text x="4" y="{y + 13}">{label}</text>')
            for e in (e for e in evs if e["tid"] == lane):
                x, w = LABEL + e["ts"] * scale, max(e["dur"] * scale, 0.5)
                parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 3}" '
                             f'fill="{colour(e["name"])}"><title>{e["name"]}: '
                             f'{e["dur"]:.1f} us</title></rect>')
            y += ROW
        y += GAP
    for t in range(0, int(end) + 1, max(100, int(end / 10) // 100 * 100)):
        x = LABEL + t * scale
        parts.append(f'<line x1="{x:.1f}" y1="{y - GAP + 6}" x2="{x:.1f}" y2="{y - GAP + 12}" '
                     f'stroke="black"/><text x="{x:.1f}" y="{y - GAP + 24}" '
                     f'text-anchor="middle">{t} us</text>')
    height = y
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL + WIDTH + 20}" '
           f'height="{height}" font-family="sans-serif" font-size="11">'
           f'<rect width="100%" height="100%" fill="white"/>{"".join(parts)}</svg>')
    pathlib.Path(a.out).write_text(svg)


if __name__ == "__main__":
    main()
