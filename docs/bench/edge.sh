#!/usr/bin/env bash
# Edge benchmarks of docs/BENCHMARKS.md ("Edge"), in one go, each against a separate
# `selvage origin` and `selvage edge` process started fresh for every run:
#   a. warm hello: `selvage loadtest hello` (10,000 users, measured user in 50 conversations),
#      then the criterion bench of building both boot payloads (`cargo bench --bench boot`);
#   b. fan-out through one edge, 1,000 subscribers: closed loop (saturated), then open loop at
#      1,000 sends/s = 1,000,000 deliveries/s;
#   c. idle sessions: `selvage loadtest idle --sessions N`, edge memory per session.
# Every figure is run RUNS times (default 3) and the summary gives the median.
# Usage: docs/bench/edge.sh [RUNS] [SESSIONS] [SENDERS]
#   (from the repository root; as root, to raise the open-file limit for SESSIONS connections)
# Environment: SKIP="a b c" to skip parts; SECS (default 10) per fan-out run.
set -euo pipefail
runs=${1:-3}
sessions=${2:-100000}
senders=${3:-256}
secs=${SECS:-10}
skip=${SKIP:-}
source docs/bench/common.sh
bench_setup edge-bench
# Each idle session is a descriptor in the edge and one in the load generator; `selvage` raises
# its soft limit to the hard one, so raise the hard one here (needs root).
ulimit -Hn 1048576 2>/dev/null && ulimit -Sn 1048576 || true
if [ "$sessions" -gt $(( $(ulimit -Hn) - 1000 )) ]; then
  echo "warning: the open-file limit is $(ulimit -Hn) (raising it needs CAP_SYS_RESOURCE): $(( $(ulimit -Hn) - 1000 )) idle sessions instead of $sessions" >&2
  sessions=$(( $(ulimit -Hn) - 1000 ))
fi
# Runs a scenario against the pair; its JSON report goes to stdout, its log to $out/loadtest.err
# (shown when it fails: a failed fan-out check still prints its report, then exits non-zero).
loadtest() {
  SELVAGE_OPERATOR_KEY=$key RUST_LOG=warn $bin loadtest "$@" --origin "$origin_url" --edge "$edge_url" --json \
    2> "$out/loadtest.err" || { echo "selvage loadtest $1 failed:" >&2; grep -v '^  ' "$out/loadtest.err" | tail -5 >&2; return 1; }
}

if [[ $skip != *a* ]]; then
  echo "== a. warm hello =="
  for r in $(seq "$runs"); do
    start_pair
    loadtest hello > "$out/hello-$r.json"
    stop_pair
    for f in 0 1; do
      field "$out/hello-$r.json" "'%s: hello %d bytes, p50 %.3f ms, p99 %.3f ms, full snapshot %.1fx' % (r['formats'][$f]['format'], r['formats'][$f]['hello_bytes'], r['formats'][$f]['latency']['p50_ms'], r['formats'][$f]['latency']['p99_ms'], r['formats'][$f]['full_snapshot_ratio'])"
    done
  done
  for f in 0 1; do
    name=$(field "$out/hello-1.json" "r['formats'][$f]['format']")
    bytes=$(for r in $(seq "$runs"); do field "$out/hello-$r.json" "r['formats'][$f]['hello_bytes']"; done | median)
    p50=$(for r in $(seq "$runs"); do field "$out/hello-$r.json" "r['formats'][$f]['latency']['p50_ms']"; done | median)
    p99=$(for r in $(seq "$runs"); do field "$out/hello-$r.json" "r['formats'][$f]['latency']['p99_ms']"; done | median)
    full=$(for r in $(seq "$runs"); do field "$out/hello-$r.json" "r['full_snapshot']['${name}_bytes']"; done | median)
    echo "median $name: hello $bytes bytes, warm p50 $p50 ms, p99 $p99 ms; full snapshot $full bytes"
  done
  cargo bench --quiet -p selvage-edge --bench boot 2>&1 | grep -E 'lazy hello|time:'
fi

if [[ $skip != *b* ]]; then
  echo "== b. fan-out, 1,000 subscribers =="
  for mode in "saturated" "rate 1000"; do
    for r in $(seq "$runs"); do
      start_pair
      if [ "$mode" = saturated ]; then
        loadtest fanout --subscribers 1000 --senders "$senders" --duration "${secs}s" > "$out/fanout-$r.json" || true
      else
        loadtest fanout --subscribers 1000 --rate 1000 --duration "${secs}s" > "$out/fanout-$r.json" || true
      fi
      stop_pair
      field "$out/fanout-$r.json" "'$mode run $r: %.0f deliveries/s, %.0f sends/s, delivery p50 %.2f ms p99 %.2f ms, CPU edge %s origin %s loadtest %.2f, violations %s' % (r['deliveries_per_sec'], r['acked_per_sec'], r['delivery_latency']['p50_ms'], r['delivery_latency']['p99_ms'], r['cpu']['edge'], r['cpu']['origin'], r['cpu']['this_process'], r['violations'])"
    done
    echo "median $mode: $(for r in $(seq "$runs"); do field "$out/fanout-$r.json" "round(r['deliveries_per_sec'])"; done | median) deliveries/s," \
      "p99 $(for r in $(seq "$runs"); do field "$out/fanout-$r.json" "r['delivery_latency']['p99_ms']"; done | median) ms"
  done
fi

if [[ $skip != *c* ]]; then
  echo "== c. $sessions idle sessions =="
  for r in $(seq "$runs"); do
    start_pair
    loadtest idle --sessions "$sessions" > "$out/idle-$r.json"
    stop_pair
    field "$out/idle-$r.json" "'run $r: %.0f bytes per session (RSS %.1f -> %.1f MiB, %d connections)' % (r['bytes_per_session'], r['before']['resident_bytes']/2**20, r['after']['resident_bytes']/2**20, r['after']['connections'])"
  done
  echo "median: $(for r in $(seq "$runs"); do field "$out/idle-$r.json" "round(r['bytes_per_session'])"; done | median) bytes per session"
fi
rm -rf "$out"
