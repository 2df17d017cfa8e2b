#!/usr/bin/env bash
# ARCHITECTURE §6's send → delivered target (p99 ≤ 25 ms at 20,000 sends/s with 10,000 clients):
# docs/bench/steady-20k.toml against a separate `selvage origin` (embedded store, fsync on) and
# `selvage edge`, each its own process, started fresh for each of RUNS runs (default 3). Prints
# each run's send → ack and send → delivered latency, the checker's verdict and the CPU each
# process used; reports go under /tmp/selvage-steady-20k.*/.
# Usage: docs/bench/steady-20k.sh [RUNS] [SCALE]      (from the repository root)
# Environment: RATE=N sends/s instead of the file's 20,000; CLIENTS=N clients instead of 10,000,
# CHANNELS=N channels instead of 2,000, MEMBERS=N members each instead of 20, and RAMP=4s for
# the clients' ramp-up.
set -euo pipefail
runs=${1:-3}
scale=${2:-1}
bin=./target/release/selvage
cargo build --release --quiet
key=bench-operator-key-$(date +%s)
edge_key=bench-edge-key-$(date +%s)-0000
out=$(mktemp -d /tmp/selvage-steady-20k.XXXXXX)
sed -e "s/^rate = .*/rate = ${RATE:-20000}.0/" -e "s/^count = .*/count = ${CLIENTS:-10000}/" \
  -e "s/^channels = .*/channels = ${CHANNELS:-2000}/" \
  -e "s/^channel_members = .*/channel_members = ${MEMBERS:-20}/" -e "s/^ramp_up = .*/ramp_up = \"${RAMP:-20s}\"/" \
  docs/bench/steady-20k.toml > "$out/scenario.toml"
source docs/bench/common.sh
trap stop_pair EXIT
for r in $(seq "$runs"); do
  start_pair
  status=0
  /usr/bin/time -f "%U %S" -o "$out/loadtest.time" env SELVAGE_OPERATOR_KEY=$key \
    $bin loadtest run "$out/scenario.toml" --target "$edge_url" --origin "$origin_url" --scale "$scale" \
    --quiet --out "$out/report-$r" > "$out/run-$r.out" 2>&1 || status=$?
  python3 - "$out/report-$r/report.json" "$r" "$status" "$(cpu_seconds $origin_pid)" "$(cpu_seconds $edge_pid)" "$(cat "$out/loadtest.time")" <<'PY'
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
  stop_pair
done
