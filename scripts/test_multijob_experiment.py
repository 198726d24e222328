#!/usr/bin/env python3
"""Runs scripts/multijob-experiment.py end to end on the CPU rehearsal of a 2-GPU machine
(`--gpus cpu:2`) with two tiny MLP jobs, and checks its table. Needs a release build:

  cargo build --release && python3 scripts/test_multijob_experiment.py [BIN_DIR]
"""
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
TEMPLATE = """
[manager]
policy = "thesis"
period_s = 1.0

[[job]]
name = "a"
model = "mlp:32"
dataset = "synthetic:500"
batch_size = 32
iterations = 200
initial_dr = [10, 0]
[job.sim]
sample_ms = 0.05

[[job]]
name = "b"
model = "mlp:64"
dataset = "synthetic:500"
batch_size = 64
iterations = 100
initial_dr = [10, 0]
arrival_s = 1.0
[job.sim]
sample_ms = 0.05
"""


def main():
    bin_dir = sys.argv[1] if len(sys.argv) > 1 else str(HERE.parent / "target" / "release")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "jobs.toml").write_text(TEMPLATE)
        run = subprocess.run([sys.executable, str(HERE / "multijob-experiment.py"), "--bin", bin_dir,
                              "--jobs", str(tmp / "jobs.toml"), "--gpus", "cpu:2", "--time-scale",
                              "0.5", "--out", str(tmp / "out")], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        table = (tmp / "out" / "table.md").read_text()
        for policy in ("static", "even", "thesis"):
            row = next((l for l in table.splitlines() if l.startswith(f"| {policy} |")), None)
            assert row is not None, f"no row for {policy}:\n{table}"
        for job in ("a", "b"):
            assert f"| {job} | `mlp:" in table, table
    print("multijob-experiment: 1 passed, 0 failed")


if __name__ == "__main__":
    main()
