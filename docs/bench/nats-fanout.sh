#!/usr/bin/env bash
# Fan-out of one channel to N subscribers through a Selvage edge against nats-server doing the
# same over WebSocket, on this machine in the same run (docs/BENCHMARKS.md, "Edge → d").
# For every run, alternating, it starts fresh:
#   - nats-server (WebSocket without TLS, monitoring on) and runs `selvage loadtest nats-fanout`;
#   - `selvage origin` + `selvage edge` as two processes (as docs/bench/edge.sh does) and runs
#     `selvage loadtest fanout`;
# both (a) closed loop (saturated) and (b) open loop at RATE sends/s, and prints each run, the
# medians and the ratio Selvage ÷ NATS of deliveries/s (a) and delivery p99 (b).
# Usage: docs/bench/nats-fanout.sh [RUNS]   (from the repository root; default 3 runs)
# Environment: SUBSCRIBERS (1000), RATE (500), SECS (10), PUBLISHERS (4: publishing connections
#   on each side), SENDERS (256: Selvage sends in flight; NATS gets PUBLISHERS × SENDERS/PUBLISHERS
#   unflushed), BYTES (100: message text/payload bytes).
# Needs nats-server (Debian: apt-get install -y nats-server); installs nothing itself.
set -euo pipefail
runs=${1:-3}
subs=${SUBSCRIBERS:-1000}
rate=${RATE:-500}
secs=${SECS:-10}
senders=${SENDERS:-256}
publishers=${PUBLISHERS:-4}
bytes=${BYTES:-100}
if ! command -v nats-server > /dev/null; then
  echo "nats-server is not installed; on Debian: apt-get install -y nats-server" >&2
  exit 1
fi
ulimit -Hn 1048576 2>/dev/null && ulimit -Sn 1048576 || ulimit -Sn "$(ulimit -Hn)" || true
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

source docs/bench/common.sh
bench_setup nats-bench
nats_pid=
start_nats() {
  quiet
  ws_port=$(free_port); http_port=$(free_port)
  cat > "$out/nats.conf" <<EOF
listen: "127.0.0.1:-1"
http: "127.0.0.1:$http_port"
websocket { listen: "127.0.0.1:$ws_port"; no_tls: true }
EOF
  nats-server -c "$out/nats.conf" > "$out/nats.out" 2> "$out/nats.err" &
  nats_pid=$!
  wait_for "$out/nats.err" "Server is ready"
}
stop_all() {
  stop_pair $nats_pid
  nats_pid=
}
trap stop_all EXIT
fail() { echo "selvage loadtest $1 failed:" >&2; grep -v '^  ' "$out/loadtest.err" | tail -5 >&2; }
# A failed fan-out check still prints its report (then exits non-zero): keep it.
selvage_run() { # file, fanout flags...
  local file=$1; shift
  start_pair
  SELVAGE_OPERATOR_KEY=$key RUST_LOG=warn $bin loadtest fanout --origin "$origin_url" --edge "$edge_url" \
    --subscribers "$subs" --text-bytes "$bytes" --duration "${secs}s" --json "$@" > "$file" 2> "$out/loadtest.err" || fail fanout
  stop_all
  field "$file" "'  selvage run: %.0f deliveries/s, %.0f sends/s, delivery p50 %.2f ms p99 %.2f ms, CPU edge %.2f origin %.2f loadtest %.2f, missing %d lost %d' % (r['deliveries_per_sec'], r['acked_per_sec'], r['delivery_latency']['p50_ms'], r['delivery_latency']['p99_ms'], r['cpu']['edge'] or 0, r['cpu']['origin'] or 0, r['cpu']['this_process'], r['violations']['missing'], r['violations']['lost_sessions'])"
}
nats_run() { # file, nats-fanout flags...
  local file=$1; shift
  start_nats
  RUST_LOG=warn $bin loadtest nats-fanout --nats "ws://127.0.0.1:$ws_port" --monitor "http://127.0.0.1:$http_port" \
    --server-pid "$nats_pid" --subscribers "$subs" --payload-bytes "$bytes" --duration "${secs}s" --json "$@" \
    > "$file" 2> "$out/loadtest.err" || fail nats-fanout
  stop_all
  field "$file" "'  nats run:    %.0f deliveries/s, %.0f sends/s, delivery p50 %.2f ms p99 %.2f ms, CPU nats-server %.2f loadtest %.2f, missing %d lost %d slow consumers %s' % (r['deliveries_per_sec'], r['published_per_sec'], r['delivery_latency']['p50_ms'], r['delivery_latency']['p99_ms'], r['cpu']['server'], r['cpu']['this_process'], r['violations']['missing'], r['violations']['lost_sessions'], r['slow_consumers'])"
}
med() { # prefix expression
  for r in $(seq "$runs"); do field "$out/$1-$r.json" "$2"; done | median
}

echo "== $subs subscribers, $publishers publishers, $runs runs of ${secs}s each, alternating; nats-server $(nats-server --version | awk '{print $2}') =="
for mode in sat rate; do
  for r in $(seq "$runs"); do
    if [ $mode = sat ]; then
      echo "closed loop, run $r"
      nats_run "$out/nats-$mode-$r.json" --publishers "$publishers" --in-flight $(( senders / publishers ))
      selvage_run "$out/selvage-$mode-$r.json" --publishers "$publishers" --senders "$senders"
    else
      echo "open loop at $rate sends/s = $(( rate * subs )) deliveries/s, run $r"
      nats_run "$out/nats-$mode-$r.json" --publishers "$publishers" --rate "$rate"
      selvage_run "$out/selvage-$mode-$r.json" --publishers "$publishers" --rate "$rate"
    fi
  done
done

echo "== medians =="
for sys in selvage nats; do
  cpu="r['cpu']['server']"
  [ $sys = selvage ] && cpu="(r['cpu']['edge'] or 0) + (r['cpu']['origin'] or 0)"
  echo "$sys: saturated $(med $sys-sat "round(r['deliveries_per_sec'])") deliveries/s" \
    "(p99 $(med $sys-sat "r['delivery_latency']['p99_ms']") ms, server CPU $(med $sys-sat "round($cpu, 2)")," \
    "loadtest $(med $sys-sat "round(r['cpu']['this_process'], 2)"));" \
    "at $rate/s: $(med $sys-rate "round(r['deliveries_per_sec'])") deliveries/s," \
    "p50 $(med $sys-rate "r['delivery_latency']['p50_ms']") ms, p99 $(med $sys-rate "r['delivery_latency']['p99_ms']") ms" \
    "(server CPU $(med $sys-rate "round($cpu, 2)"), loadtest $(med $sys-rate "round(r['cpu']['this_process'], 2)"))"
done
python3 - "$(med selvage-sat "r['deliveries_per_sec']")" "$(med nats-sat "r['deliveries_per_sec']")" \
  "$(med selvage-rate "r['delivery_latency']['p99_ms']")" "$(med nats-rate "r['delivery_latency']['p99_ms']")" <<'EOF'
import sys
s_sat, n_sat, s_p99, n_p99 = map(float, sys.argv[1:])
print(f"ratio Selvage ÷ NATS: saturated deliveries/s {s_sat / n_sat:.2f}; delivery p99 at the fixed rate {s_p99 / n_p99:.2f}")
EOF
rm -rf "$out"
