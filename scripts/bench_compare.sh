#!/usr/bin/env bash
# Compares two gateway binaries in the same conditions: runs
# scripts/bench_scenario.py with each in turn (A, B, A, B, ...), so that the
# load of a shared machine falls on both alike. 40 s into each run
# (SMAPS_AT_S) it notes the resident pages of the binary's mappings and the
# heap (/proc/PID/smaps). Prints one line per run, then the medians.
#
#   scripts/bench_compare.sh OLD_BINARY NEW_BINARY [RUNS] [scenario args...]
#   scripts/bench_compare.sh /tmp/gw-before target/release/estate-gateway 3 --devices 50 --registers 100 --duration 60
#
# Copy the binaries out of target/ first: a build in between replaces them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,12p "$0" >&2; exit 2; }
a=$(realpath "$1")
b=$(realpath "$2")
runs=${3:-3}
shift $(($# >= 3 ? 3 : 2))
py=${GATEWAY_TEST_PYTHON:-.venv/bin/python}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

smaps() { # binary path, pid
  awk -v bin="$1" '/^[0-9a-f]+-[0-9a-f]+ /{name=$6; perm=$2}
    /^Rss:/{ if (name == bin) printf "%s=%sk ", perm, $2; else if (name == "[heap]") printf "heap=%sk ", $2 }' "/proc/$2/smaps"
}

for i in $(seq "$runs"); do
  for bin in "$a" "$b"; do
    ( sleep "${SMAPS_AT_S:-40}"
      pid=$(pgrep -f -x "$bin run --config .*" | head -n 1 || true)
      [ -n "$pid" ] && echo "smaps $bin $(smaps "$bin" "$pid")" >&2 ) &
    load=$(cut -d' ' -f1 /proc/loadavg)
    r=$("$py" scripts/bench_scenario.py --binary "$bin" "$@" | tail -n 1)
    wait
    echo "$bin load=$load $r" | tee -a "$out"
  done
done

"$py" - "$out" "$a" "$b" <<'EOF'
import json, statistics, sys
path, *bins = sys.argv[1:]
rows = {b: [] for b in bins}
for line in open(path):
    b, rest = line.split(" ", 1)
    rows[b].append(json.loads(rest[rest.index("{"):]))
for b, rs in rows.items():
    med = lambda k: statistics.median(r[k] for r in rs if r[k] is not None)
    print(json.dumps({
        "binary": b, "runs": len(rs),
        "cpu_s_per_60s": med("cpu_s_per_60s"), "peak_rss_mib": med("peak_rss_mib"),
        "delay_ms_p50": med("delay_ms_p50"), "delay_ms_p99": med("delay_ms_p99"),
        "lost_alarms": sum(r["lost_alarms"] for r in rs), "flips": sum(r["flips"] for r in rs),
    }))
EOF
