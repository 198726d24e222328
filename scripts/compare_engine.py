#!/usr/bin/env python3
"""Puts two builds' engine-bench JSON files (benches/engine.rs --json) side by side.

Usage: compare_engine.py PREV.json [PREV2.json ...] -- NEW.json [NEW2.json ...]
Prints, per (part, mode, precision, launch), each build's p50s (every run) and the ratio of
the new build's median p50 to the previous one's.
"""
import json
import statistics
import sys


def rows(paths):
    table = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for r in data["rows"] if isinstance(data, dict) else data:
            key = (r["part"], r["mode"], r["precision"], r["launch"])
            table.setdefault(key, []).append(r["p50_ms"])
    return table


def main(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    cut = argv.index("--")
    prev, new = rows(argv[:cut]), rows(argv[cut + 1:])
    print(f"{'part':<12} {'mode':<10} {'prec':<5} {'launch':<6} {'prev p50 ms':>18} "
          f"{'new p50 ms':>18} {'new/prev':>8}")
    for key in sorted(prev.keys() & new.keys()):
        a, b = prev[key], new[key]
        ratio = statistics.median(b) / statistics.median(a)
        fa = "/".join(f"{x:.3f}" for x in a)
        fb = "/".join(f"{x:.3f}" for x in b)
        print(f"{key[0]:<12} {key[1]:<10} {key[2]:<5} {key[3]:<6} {fa:>18} {fb:>18} {ratio:8.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
