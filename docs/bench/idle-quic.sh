#!/usr/bin/env bash
# Idle sessions over QUIC on one edge: `selvage loadtest idle --quic ADDR --fingerprint FP`.
# A QUIC session costs neither process a file descriptor (the edge serves them all through one
# UDP socket, the load generator through one per 10,000 sessions), so this reaches ARCHITECTURE §6's
# 100,000 sessions where the open-file limit caps WebSocket ones (docs/bench/edge.sh, part c).
# Each run gets a fresh `selvage origin` and `selvage edge`; the summary gives the median.
# Usage: docs/bench/idle-quic.sh [RUNS] [SESSIONS]     (from the repository root)
set -euo pipefail
runs=${1:-3}
sessions=${2:-100000}
source docs/bench/common.sh
bench_setup idle-quic
echo "== $sessions idle QUIC sessions =="
for r in $(seq "$runs"); do
  start_pair
  quic=$(awk '/quic on/ {print $5}' "$out/edge.out")
  fingerprint=$(awk '/quic on/ {print $NF}' "$out/edge.out")
  SELVAGE_OPERATOR_KEY=$key RUST_LOG=warn /usr/bin/time -f "%M" -o "$out/lg-rss-$r" $bin loadtest idle \
    --sessions "$sessions" --quic "$quic" --fingerprint "$fingerprint" --origin "$origin_url" --edge "$edge_url" --json \
    > "$out/idle-$r.json" 2> "$out/idle-$r.err" || { echo "run $r failed:" >&2; grep -v '^  ' "$out/idle-$r.err" | tail -5 >&2; exit 1; }
  edge_cpu=$(awk '{print $14 + $15}' "/proc/$edge_pid/stat")
  stop_pair
  field "$out/idle-$r.json" "'run $r: %.0f bytes per session (edge RSS %.1f -> %.1f MiB, %d connections, opened in %.1f s); load generator peak RSS %.0f MiB; edge CPU %.1f s' % (r['bytes_per_session'], r['before']['resident_bytes']/2**20, r['after']['resident_bytes']/2**20, r['after']['connections'], r['connect_seconds'], $(cat "$out/lg-rss-$r")/1024, $edge_cpu/100)"
done
echo "median: $(for r in $(seq "$runs"); do field "$out/idle-$r.json" "round(r['bytes_per_session'])"; done | median) bytes per session"
rm -rf "$out"
