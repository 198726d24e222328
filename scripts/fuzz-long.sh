#!/usr/bin/env bash
# The nightly-style fuzz run: every target of the fuzz test binary (tests/fuzz/) with CASES
# cases each (default 100 000; the tracker golden target, which CI gives a tenth, gets them
# all), one target after another, and a table of cases and seconds per target at the end
# (also written to OUT, default fuzz-long.txt). The binary is built once and copied, so the
# sources may change while it runs. A failure's log (with the shrunk input) is kept beside
# OUT; the run goes on with the next target and the script exits 1.
#
# Usage (repository root): [nice] bash scripts/fuzz-long.sh [CASES] [OUT]
set -uo pipefail
cases="${1:-100000}"
out="${2:-fuzz-long.txt}"
export ATTNRT_CUDA_ARCHS="${ATTNRT_CUDA_ARCHS:-sm_90}"
# The checkpoint and frame-folder targets write files every case: on a disk that is 35 times
# slower than in memory (frame folders: 986 s against 28 s for 100 000 cases).
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ]; then export TMPDIR=/dev/shm; fi
exe=$(cargo test --release --test fuzz --no-run --message-format=json 2>/dev/null \
    | grep '"name":"fuzz"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$exe" ] || { echo "fuzz-long: building the fuzz binary failed" >&2; exit 1; }
bin="$out.bin"
cp "$exe" "$bin"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
failed=0
{
    echo "fuzz-long: $cases cases per target, commit $commit, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
    printf '%-60s %10s %10s %s\n' target cases seconds result
} | tee "$out"
for t in $("$bin" --list --format=terse | sed -n 's/: test$//p'); do
    start=$(date +%s.%N)
    if ATTNRT_FUZZ_CASES="$cases" ATTNRT_FUZZ_FULL=1 "$bin" --exact "$t" --test-threads=1 \
        > "$out.$t.log" 2>&1; then
        result=ok
        rm -f "$out.$t.log"
    else
        result="FAILED (see $out.$t.log)"
        failed=1
    fi
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    printf '%-60s %10s %10.1f %s\n' "$t" "$cases" "$secs" "$result" | tee -a "$out"
done
rm -f "$bin"
exit $failed
