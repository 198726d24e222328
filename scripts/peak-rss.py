#!/usr/bin/env python3
"""Runs COMMAND, writes the largest resident set (MiB) of any process it waited for (COMMAND and
the descendants each waited for) to RSS_FILE, and exits with COMMAND's status (128 + N when a
signal N ended it, as a shell reports it).

Usage: peak-rss.py RSS_FILE COMMAND [ARG...]   (scripts/sanitize.sh wraps each run in it)
"""

import resource
import subprocess
import sys


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    rss_file, command = sys.argv[1], sys.argv[2:]
    try:
        rc = subprocess.call(command)
    except OSError as e:
        print(f"peak-rss.py: cannot run {command[0]}: {e}", file=sys.stderr)
        return 127
    # ru_maxrss is in KiB on Linux.
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(rss_file, "w") as f:
        f.write(f"{peak_kib / 1024:.0f}MiB\n")
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main())
