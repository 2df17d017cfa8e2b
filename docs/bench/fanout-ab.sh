#!/usr/bin/env bash
# Fan-out through one edge, two or more builds alternating on the same machine in the same
# minutes (the machine's speed drifts from day to day, so only figures taken this way compare):
# for each of RUNS rounds, each BINARY in turn gets a fresh `selvage origin` + `selvage edge`
# pair and `selvage loadtest fanout --subscribers 1000` against it, open loop at RATE sends/s
# (default 1,000 = 1,000,000 deliveries/s) or, with SENDERS=N, closed loop with N sends in flight.
# Usage: docs/bench/fanout-ab.sh RUNS BINARY...     (from the repository root)
#   e.g. git worktree add /tmp/old <rev> && (cd /tmp/old && cargo build --release) &&
#        docs/bench/fanout-ab.sh 3 /tmp/old/target/release/selvage ./target/release/selvage
# Environment: RATE, SENDERS, SECS (default 10) per run.
set -uo pipefail
runs=${1:?usage: docs/bench/fanout-ab.sh RUNS BINARY...}
shift
if [ -n "${SENDERS:-}" ]; then mode="--senders $SENDERS"; else mode="--rate ${RATE:-1000}"; fi
key=bench-operator-key-$(date +%s)
edge_key=bench-edge-key-$(date +%s)-0000
out=$(mktemp -d /tmp/selvage-fanout-ab.XXXXXX)
source docs/bench/common.sh
trap stop_pair EXIT
for r in $(seq "$runs"); do
  n=0
  for bin in "$@"; do
    n=$((n + 1))
    start_pair
    # shellcheck disable=SC2086
    SELVAGE_OPERATOR_KEY=$key RUST_LOG=warn $bin loadtest fanout --subscribers 1000 $mode --duration "${SECS:-10}s" \
      --origin "$origin_url" --edge "$edge_url" --json > "$out/$n-$r.json" 2> "$out/$n-$r.err" || true
    stop_pair
    field "$out/$n-$r.json" "'$bin run $r: %.0f deliveries/s, delivery p50 %.2f ms p99 %.2f ms, CPU edge %.1f origin %.1f loadtest %.2f, missing %s, sessions lost %s' % (r['deliveries_per_sec'], r['delivery_latency']['p50_ms'], r['delivery_latency']['p99_ms'], r['cpu']['edge'], r['cpu']['origin'], r['cpu']['this_process'], r['violations']['missing'], r['violations']['lost_sessions'])" \
      || { echo "$bin run $r: no report"; tail -5 "$out/$n-$r.err"; }
  done
done
echo "reports: $out"
