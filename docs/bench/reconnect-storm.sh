#!/usr/bin/env bash
# ARCHITECTURE §6's reconnect storm (50,000 clients re-booted in ≤ 5 s, ≤ 1 origin request per 1,000
# reconnects, 0 events lost) as far as this machine's open-file limit allows: the shipped
# loadtest/scenarios/reconnect-storm.toml at SCALE (default 0.36 = 18,000 clients; each client
# is a socket in the edge and one in the load tester, and each process may hold 20,000 here)
# against a separate `selvage origin` and `selvage edge`, fresh for each of RUNS runs (default
# 3). Prints per run the clients resumed, close → hello latency (its max is when the last
# client was back), the origin's boot calls during the run (token lookups, snapshots, missed
# events; the first boots included) and the checker's verdict.
# Usage: docs/bench/reconnect-storm.sh [RUNS] [SCALE]      (from the repository root)
set -euo pipefail
runs=${1:-3}
scale=${2:-0.36}
bin=${BIN:-./target/release/selvage}
cargo build --release --quiet
# The edge asks for an accept queue of 65,535 (`listen_backlog`); the kernel caps it at
# net.core.somaxconn, 4,096 by default. Raising it needs root (in a container, its own network
# namespace).
sysctl -qw net.core.somaxconn=65535 2>/dev/null ||
  echo "warning: net.core.somaxconn is $(cat /proc/sys/net/core/somaxconn) and cannot be raised here" >&2
key=bench-operator-key-$(date +%s)
edge_key=bench-edge-key-$(date +%s)-0000
out=$(mktemp -d /tmp/selvage-reconnect-storm.XXXXXX)
source docs/bench/common.sh
trap stop_pair EXIT
calls() { curl -s "$origin_url/metrics" | awk '/^selvage_link_calls_total\{call="(authenticate|snapshot|events)"/ {s += $NF} END {print s + 0}'; }
for r in $(seq "$runs"); do
  start_pair
  before=$(calls)
  status=0
  SELVAGE_OPERATOR_KEY=$key $bin loadtest run loadtest/scenarios/reconnect-storm.toml --target "$edge_url" \
    --origin "$origin_url" --scale "$scale" --quiet --out "$out/report-$r" > "$out/run-$r.out" 2>&1 || status=$?
  after=$(calls)
  python3 - "$out/report-$r/report.json" "$r" "$before" "$after" "$status" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); rc = r["latency"]["reconnect"]; t = r["totals"]
calls = float(sys.argv[4]) - float(sys.argv[3])
print(f"run {sys.argv[2]}: {t['connections_opened']} sessions opened, {t['reconnects']} resumed,"
      f" close→hello p50 {rc['p50_ms']:.1f} ms p99 {rc['p99_ms']:.1f} ms max {rc['max_ms']:.1f} ms"
      f" | {t['acks']} of {t['sends']} sends acked, {t['deliveries']} deliveries"
      f" | origin boot calls {calls:.0f} over the run | passed {r['passed']} (exit {sys.argv[5]})")
PY
  stop_pair
done
echo "reports: $out"
