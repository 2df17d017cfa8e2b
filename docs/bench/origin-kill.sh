#!/usr/bin/env bash
# ARCHITECTURE §6's "origin process killed -9 under load: 0 acknowledged messages lost, ever".
# For each of RUNS runs (default 3): a fresh `selvage origin` (embedded store, fsync on) on
# fixed ports and a `selvage edge` linked to it, each its own process; `selvage loadtest run
# docs/bench/origin-kill.toml --check-stored` against them; KILL_AT seconds into the run
# (default 15: ten seconds into the sends) the origin gets SIGKILL and is started again at once
# on the same data directory and ports. The edge reconnects by itself. After the run the load
# tester reads every channel's history from the restarted origin and checks that it holds every
# acknowledged send at the seq its ack carried; the checker also holds every client's stream
# (each acknowledged message delivered to every member, in order, once).
# Usage: docs/bench/origin-kill.sh [RUNS]      (from the repository root)
set -euo pipefail
runs=${1:-3}
kill_at=${KILL_AT:-15}
source docs/bench/common.sh
bench_setup origin-kill
# The origin on fixed ports (chosen at random per run), so that it comes back where the edge
# and the load tester look for it.
origin_on() { # HTTP_PORT LINK_PORT
  SELVAGE_OPERATOR_KEY=$key SELVAGE_LINK__EDGE_KEY=$edge_key SELVAGE_LINK__LISTEN=127.0.0.1:$2 RUST_LOG=warn \
    $bin origin --listen 127.0.0.1:$1 --data-dir "$out/data" >> "$out/origin.out" 2>> "$out/origin.err" &
  origin_pid=$!
}
for r in $(seq "$runs"); do
  quiet
  rm -rf "$out/data" "$out/origin.out"
  http=$(( 20000 + RANDOM % 20000 ))
  udp=$(( http + 1 ))
  origin_on $http $udp
  wait_for "$out/origin.out" "link on"
  origin_url=http://127.0.0.1:$http
  link=127.0.0.1:$udp
  fingerprint=$(awk '/link on/ {print $NF}' "$out/origin.out")
  start_edge
  status=0
  SELVAGE_OPERATOR_KEY=$key $bin loadtest run docs/bench/origin-kill.toml --target "$edge_url" --origin "$origin_url" \
    --check-stored --quiet --out "$out/report-$r" > "$out/run-$r.out" 2>&1 &
  loadtest_pid=$!
  # Seeding takes a few seconds before the clock of the scenario starts; count from the first
  # session (the edge's connection gauge).
  for _ in $(seq 600); do
    curl -s "$edge_url/metrics" | grep -q '^selvage_edge_connections{.*} [1-9]' && break
    sleep 0.1
  done
  sleep "$kill_at"
  kill -9 "$origin_pid"
  wait "$origin_pid" 2>/dev/null || true
  killed=$(date +%s.%N)
  : > "$out/origin.out"
  origin_on $http $udp
  wait_for "$out/origin.out" "link on"
  back=$(date +%s.%N)
  wait "$loadtest_pid" || status=$?
  python3 - "$out/report-$r/report.json" "$r" "$status" "$killed" "$back" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); t = r["totals"]; c = r["checker"]
lost = sum(1 for v in c["violations"] if v["kind"] == "not_stored")
print(f"run {sys.argv[2]}: origin back {float(sys.argv[5]) - float(sys.argv[4]):.2f} s after SIGKILL |"
      f" {t['sends']} sends, {t['acks']} acked, errors {r['errors']} |"
      f" history checked {c['stored_checked']}, acked but not stored {lost} |"
      f" checker {c['violation_count']} violations, passed {r['passed']} (exit {sys.argv[3]})")
PY
  stop_pair
done
echo "reports: $out"
