#!/usr/bin/env bash
# DESIGN §6's send → delivered target (p99 ≤ 25 ms at 20,000 sends/s with 10,000 clients):
# docs/bench/steady-20k.toml against a separate `selvage origin` (embedded store, fsync on) and
# `selvage edge`, each its own process, started fresh for each of RUNS runs (default 3). Prints
# each run's send → ack and send → delivered latency, the checker's verdict and the CPU each
# process used; reports go under /tmp/selvage-steady-20k.*/.
# Usage: docs/bench/steady-20k.sh [RUNS] [SCALE]      (from the repository root)
# Environment: RATE=N sends/s instead of the file's 20,000 (same 10,000 clients).
set -euo pipefail
runs=${1:-3}
scale=${2:-1}
bin=./target/release/selvage
cargo build --release --quiet
key=bench-operator-key-$(date +%s)
edge_key=bench-edge-key-$(date +%s)-0000
out=$(mktemp -d /tmp/selvage-steady-20k.XXXXXX)
sed "s/^rate = .*/rate = ${RATE:-20000}.0/" docs/bench/steady-20k.toml > "$out/scenario.toml"
pids=()
wait_for() { # file pattern
  for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}
stop_all() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; pids=(); }
trap stop_all EXIT
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$1/stat"; }
for r in $(seq "$runs"); do
  rm -rf "$out/data"
  SELVAGE_OPERATOR_KEY=$key SELVAGE_LINK__EDGE_KEY=$edge_key SELVAGE_LINK__LISTEN=127.0.0.1:0 RUST_LOG=warn \
    $bin origin --listen 127.0.0.1:0 --data-dir "$out/data" > "$out/origin.out" 2> "$out/origin.err" &
  pids+=($!)
  wait_for "$out/origin.out" "link on"
  origin_url=$(awk '/listening on/ {print $NF}' "$out/origin.out")
  link=$(awk '/link on/ {sub("quic://", "", $5); print $5}' "$out/origin.out")
  fingerprint=$(awk '/link on/ {print $NF}' "$out/origin.out")
  SELVAGE_ORIGIN__EDGE_KEY=$edge_key RUST_LOG=warn \
    $bin edge --listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 --origin-link "$link" --origin-fingerprint "$fingerprint" \
    > "$out/edge.out" 2> "$out/edge.err" &
  pids+=($!)
  wait_for "$out/edge.out" "listening on"
  edge_url=http://$(awk '/listening on/ {sub("ws://", "", $NF); sub("/v1/connect", "", $NF); print $NF}' "$out/edge.out")
  for _ in $(seq 400); do curl -sf "$edge_url/readyz" > /dev/null && break; sleep 0.05; done
  status=0
  /usr/bin/time -f "%U %S" -o "$out/loadtest.time" env SELVAGE_OPERATOR_KEY=$key \
    $bin loadtest run "$out/scenario.toml" --target "$edge_url" --origin "$origin_url" --scale "$scale" \
    --quiet --out "$out/report-$r" > "$out/run-$r.out" 2>&1 || status=$?
  python3 - "$out/report-$r/report.json" "$r" "$status" "$(cpu "${pids[0]}")" "$(cpu "${pids[1]}")" "$(cat "$out/loadtest.time")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency"]
def p(name):
    h = l.get(name)
    return "-" if not h or not h.get("count") else "p50 %.2f p99 %.2f p99.9 %.2f ms" % (h["p50_ms"], h["p99_ms"], h["p999_ms"])
u, s = map(float, sys.argv[6].split())
t = r["totals"]
print(f"rate {r['scenario']['rate']:.0f}/s run {sys.argv[2]}: {t['sends']} sends, {t['acks']} acked, {t['deliveries']} deliveries | send→ack {p('send_ack')} | send→delivered {p('send_delivered')} | passed {r['passed']} (exit {sys.argv[3]})"
      f" | CPU s: origin {sys.argv[4]} edge {sys.argv[5]} loadtest {u + s:.1f}")
PY
  stop_all
done
