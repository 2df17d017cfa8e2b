#!/usr/bin/env bash
# The reconnect storm with the origin 80 ms (round trip) away: a separate `selvage origin`, a
# `selvage loadtest wan-proxy` adding 40 ms each way to the UDP link between edge and origin, and
# a `selvage edge` linked through it — with warm caches (the default), then with
# `cache.cold_boots` (every boot asks the origin for the token and the workspace snapshot, and
# every resume for the missed events, as an edge without warm caches must). RUNS times each
# (default 3), alternating. Prints per run the reconnect (close → hello) latency, the checker's
# verdict and the origin's boot calls (token lookups, snapshots, missed events; not sends) over
# the run, which includes every client's first boot.
# Usage: docs/bench/wan-reconnect.sh [RUNS]      (from the repository root)
set -euo pipefail
runs=${1:-3}
bin=./target/release/selvage
cargo build --release --quiet
key=bench-operator-key-$(date +%s)
edge_key=bench-edge-key-$(date +%s)-0000
out=$(mktemp -d /tmp/selvage-wan-bench.XXXXXX)
source docs/bench/common.sh
proxy_pid=
stop_all() { stop_pair $proxy_pid; proxy_pid=; }
trap stop_all EXIT
# Link calls a boot or resume makes (not sends): token lookups, snapshots, missed events.
calls() { curl -s "$origin_url/metrics" | awk '/^selvage_link_calls_total\{call="(authenticate|snapshot|events)"/ {s += $NF} END {print s + 0}'; }
for r in $(seq "$runs"); do
  for mode in warm cold; do
    start_origin
    port=$(( 20000 + RANDOM % 20000 ))
    $bin loadtest wan-proxy --listen 127.0.0.1:$port --to "$link" --delay 40ms --protocol udp > "$out/wan.out" 2>&1 &
    proxy_pid=$!
    sleep 0.5
    SELVAGE_CACHE__COLD_BOOTS=$([ $mode = cold ] && echo true || echo false) start_edge 127.0.0.1:$port
    before=$(calls)
    status=0
    SELVAGE_OPERATOR_KEY=$key $bin loadtest run docs/bench/wan-reconnect.toml --target "$edge_url" --origin "$origin_url" \
      --quiet --out "$out/report-$mode-$r" > "$out/run.out" 2>&1 || status=$?
    after=$(calls)
    python3 - "$out/report-$mode-$r/report.json" "$mode" "$r" "$before" "$after" "$status" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); rc = r["latency"]["reconnect"]; t = r["totals"]
calls = float(sys.argv[5]) - float(sys.argv[4])
print(f"{sys.argv[2]:5} run {sys.argv[3]}: {t['reconnects']} reconnects, close→hello p50 {rc['p50_ms']:.1f} ms p99 {rc['p99_ms']:.1f} ms max {rc['max_ms']:.1f} ms"
      f" | origin boot calls {calls:.0f} over the run"
      f" | passed {r['passed']} (exit {sys.argv[6]})")
PY
    stop_all
  done
done
