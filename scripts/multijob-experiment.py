#!/usr/bin/env python3
"""Runs a multi-job workload under several policies on the real machine, and the simulator on
the same measured costs, and prints one comparison table (markdown).

1. Probe: every job of --jobs runs a few iterations under the manager, which first measures
   each job alone (calibration) and writes the fitted costs (--write-sim).
2. Sizing: each job's iteration count is set so that its exclusive time is its intended one
   (iterations x the file's [job.sim] cost) times --time-scale; arrival times and the manager
   period are scaled alike. The sized file keeps the measured [job.sim] costs.
3. For every policy: a real run (--no-calibrate: every policy's Slow-Downs use the same
   exclusive times) and a simulated one, each with its report; the real run also writes its
   decision log and an SVG plot.

Everything goes under --out; the table is printed and written to OUT/table.md.

  python3 scripts/multijob-experiment.py --bin target/release \\
      --jobs examples/multijob-2gpu.toml --gpus 0,1 --out exp2
"""

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def dump_toml(doc):
    """The job-file subset of TOML: [manager], [simulation], [[job]] with [job.sim]."""
    out = []
    for table in ("manager", "simulation"):
        if table in doc:
            out.append(f"[{table}]")
            out += [f"{k} = {toml_value(v)}" for k, v in doc[table].items()]
            out.append("")
    for job in doc.get("job", []):
        out.append("[[job]]")
        out += [f"{k} = {toml_value(v)}" for k, v in job.items() if k != "sim"]
        if "sim" in job:
            out.append("[job.sim]")
            out += [f"{k} = {toml_value(v)}" for k, v in job["sim"].items()]
        out.append("")
    return "\n".join(out)


def iter_s(job):
    s = job["sim"]
    return (job["batch_size"] * s["sample_ms"] + s.get("iter_overhead_ms", 0.0)) / 1000.0


def run(cmd, log):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    started = time.time()
    with open(log, "w") as f:
        p = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT)
    print(f"  exit {p.returncode} in {time.time() - started:.1f} s (log {log})", file=sys.stderr)
    if p.returncode != 0:
        sys.stderr.write(Path(log).read_text()[-3000:])
        raise SystemExit(f"{cmd[0]} failed")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="directory with attnrt-train")
    ap.add_argument("--jobs", required=True, type=Path)
    ap.add_argument("--gpus", default="all")
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--policies", default="static,even,thesis")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    exe = Path(a.bin) / "attnrt-train"
    a.out.mkdir(parents=True, exist_ok=True)
    template = tomllib.loads(a.jobs.read_text())

    probe = dict(template)
    probe["job"] = [dict(j, iterations=3, arrival_s=0.0) for j in template["job"]]
    (a.out / "probe.toml").write_text(dump_toml(probe))
    run([exe, "--jobs", a.out / "probe.toml", "--gpus", a.gpus, "--policy", "static",
         "--write-sim", a.out / "calibrated.toml", "--report", a.out / "probe.json"],
        a.out / "probe.log")
    measured = tomllib.loads((a.out / "calibrated.toml").read_text())

    sized = dict(measured)
    sized["manager"] = dict(measured["manager"], period_s=measured["manager"]["period_s"] * a.time_scale)
    jobs = []
    for want, got in zip(template["job"], measured["job"]):
        target_s = want["iterations"] * iter_s(want) * a.time_scale
        iterations = max(1, round(target_s / iter_s(got)))
        jobs.append(dict(got, iterations=iterations, arrival_s=want.get("arrival_s", 0.0) * a.time_scale))
    sized["job"] = jobs
    exp = a.out / "experiment.toml"
    exp.write_text(dump_toml(sized))

    rows = []
    for policy in a.policies.split(","):
        real, sim = a.out / f"{policy}.json", a.out / f"{policy}-sim.json"
        run([exe, "--jobs", exp, "--gpus", a.gpus, "--policy", policy, "--no-calibrate",
             "--report", real, "--decisions", a.out / f"{policy}-decisions.json",
             "--plot", a.out / f"{policy}.svg"], a.out / f"{policy}.log")
        run([exe, "--simulate", "--jobs", exp, "--policy", policy, "--report", sim,
             "--plot", a.out / f"{policy}-sim.svg"], a.out / f"{policy}-sim.log")
        rows.append((policy, json.loads(real.read_text()), json.loads(sim.read_text())))

    lines = [f"Workload `{a.jobs}` (time scale {a.time_scale}), devices `{a.gpus}`.", "",
             "| job | model | batch | iterations | alone (ms/iter) | exclusive (s) |",
             "|---|---|---:|---:|---:|---:|"]
    for j in jobs:
        lines.append(f"| {j['name']} | `{j['model']}` | {j['batch_size']} | {j['iterations']} | "
                     f"{iter_s(j) * 1e3:.2f} | {iter_s(j) * j['iterations']:.1f} |")
    lines += ["", "| policy | max SD | mean SD | Jain (1/SD) | makespan (s) | mean GPU util (%) | "
              "sim max SD | sim mean SD | sim makespan (s) | sim util (%) | mean abs SD error |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for policy, r, s in rows:
        pred = {j["name"]: j["slowdown"] for j in s["jobs"]}
        errs = [abs(j["slowdown"] - pred[j["name"]]) for j in r["jobs"] if j["name"] in pred]
        err = sum(errs) / len(errs) if errs else float("nan")
        lines.append(f"| {policy} | {r['max_slowdown']:.3f} | {r['mean_slowdown']:.3f} | "
                     f"{r['jain_index']:.3f} | {r['makespan_s']:.1f} | {r['mean_gpu_util']:.1f} | "
                     f"{s['max_slowdown']:.3f} | {s['mean_slowdown']:.3f} | {s['makespan_s']:.1f} | "
                     f"{s['mean_gpu_util']:.1f} | {err:.3f} |")
        for f in r.get("failed", []):
            lines.append(f"|  {policy}: **{f['name']} failed** at step {f['step']}: {f['error']} |")
    lines += ["", "Per job, measured SD (simulated):", "",
              "| policy | " + " | ".join(j["name"] for j in jobs) + " |",
              "|---|" + "---:|" * len(jobs)]
    for policy, r, s in rows:
        got = {j["name"]: j["slowdown"] for j in r["jobs"]}
        pred = {j["name"]: j["slowdown"] for j in s["jobs"]}
        cells = [f"{got.get(j['name'], float('nan')):.2f} ({pred.get(j['name'], float('nan')):.2f})" for j in jobs]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (a.out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
