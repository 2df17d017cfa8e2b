#!/usr/bin/env bash
# The steady scenario with and without message changes, alternating, RUNS times each (default
# 3), in process (origin, edge and clients in one process). Prints each run's latency lines and
# writes every report under /tmp/selvage-steady-*/.
# Usage: docs/bench/steady-changes.sh [RUNS]      (from the repository root)
set -euo pipefail
runs=${1:-3}
cargo build --release --quiet
for r in $(seq "$runs"); do
  for kind in plain changes; do
    out=/tmp/selvage-steady-$kind-$r
    ./target/release/selvage loadtest run docs/bench/steady-$kind.toml --in-process --quiet --out "$out" >/dev/null
    python3 - "$out/report.json" "$kind" "$r" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency"]
def p(name):
    h = l.get(name)
    return "-" if not h or not h.get("count") else "p50 %.2f p99 %.2f ms" % (h["p50_ms"], h["p99_ms"])
print(f"{sys.argv[2]:8} run {sys.argv[3]}: send→ack {p('send_ack')} | send→delivered {p('send_delivered')} | change→ack {p('change_ack')} | passed {r['passed']}")
PY
  done
done
