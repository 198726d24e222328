#!/usr/bin/env python3
"""scripts/peak-rss.py, which scripts/sanitize.sh wraps each compute-sanitizer run in: the
command's exit status passes through (a signal as 128 + N), the peak resident memory of the
processes it waited for lands in the file, and bad use says so.

  python3 scripts/test_peak_rss.py
"""
import os
import subprocess
import sys
import tempfile

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peak-rss.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


def test_status_and_peak():
    with tempfile.TemporaryDirectory() as d:
        rss = os.path.join(d, "rss")
        # A child that holds 200 MiB: the peak is at least that.
        p = run(rss, sys.executable, "-c", "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])")
        assert p.returncode == 0, p.stderr
        mib = int(open(rss).read().strip().removesuffix("MiB"))
        assert mib >= 200, mib
        assert run(rss, "sh", "-c", "exit 3").returncode == 3
        # SIGKILL, as the out-of-memory killer sends it: 128 + 9, as a shell reports it.
        assert run(rss, "sh", "-c", "kill -9 $$").returncode == 137
        p = run(rss, os.path.join(d, "missing"))
        assert p.returncode == 127 and "cannot run" in p.stderr, p.stderr


def test_usage():
    p = run()
    assert p.returncode == 2 and "Usage" in p.stderr, p.stderr


if __name__ == "__main__":
    for name, f in list(globals().items()):
        if name.startswith("test_") and callable(f):
            f()
            print(f"{name}: ok")
