#!/usr/bin/env bash
# Durable-send benchmarks of docs/BENCHMARKS.md, in one go:
#   1. in-process (sequencer + embedded store, no HTTP): 1000 channels and 1 hot channel;
#   2. over HTTP against a separate `selvage origin` process: the same two shapes;
#   3. ack latency over HTTP at half the measured maximum rate (open loop);
#   4. the PostgreSQL peer (docs/bench/pg-ordered-insert.sh) with the same shapes.
# Each throughput figure is run RUNS times (default 3); the summary gives the median.
# Usage: docs/bench/sends.sh [RUNS] [SECONDS]      (run from the repository root, as root)
# IN_CONCURRENCY= sets the in-process senders (default 8192, the sequencer's largest group).
# BIN=PATH measures another build of selvage (e.g. an older commit's, to compare); by default the
# script builds and measures this checkout's release binary.
set -euo pipefail
runs=${1:-3}
secs=${2:-10}
in_concurrency=${IN_CONCURRENCY:-8192}
if [ -n "${BIN:-}" ]; then bin=$BIN; else bin=./target/release/selvage; cargo build --release --quiet; fi
key=bench-operator-key-$(date +%s)
out=$(mktemp -d /tmp/selvage-bench.XXXXXX)
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rate_of() { python3 -c 'import json,sys; print(round(json.load(sys.stdin)["acked_per_sec"]))'; }
lat_of() { python3 -c 'import json,sys; r=json.load(sys.stdin)["ack_latency"]; print("p50 %.2f ms, p99 %.2f ms" % (r["p50_ms"], r["p99_ms"]))'; }

origin_pid=
start_origin() {
  rm -rf "$out/data"
  SELVAGE_OPERATOR_KEY=$key RUST_LOG=warn $bin origin --listen 127.0.0.1:0 --data-dir "$out/data" > "$out/origin.out" 2> "$out/origin.err" &
  origin_pid=$!
  for _ in $(seq 100); do grep -q listening "$out/origin.out" 2>/dev/null && break; sleep 0.1; done
  url=$(awk '{print $NF}' "$out/origin.out")
}
stop_origin() { [ -n "$origin_pid" ] && { kill "$origin_pid" 2>/dev/null; wait "$origin_pid" 2>/dev/null; }; origin_pid=; return 0; }
trap stop_origin EXIT

declare -A result
for shape in "many 1000" "hot 1"; do
  set -- $shape; name=$1; channels=$2
  for target in in-process http; do
    rates=()
    for r in $(seq "$runs"); do
      if [ "$target" = in-process ]; then
        json=$($bin loadtest sends --in-process --channels "$channels" --concurrency "$in_concurrency" --duration "${secs}s" --json 2>/dev/null)
      else
        start_origin
        json=$(SELVAGE_OPERATOR_KEY=$key $bin loadtest sends --target "$url" --channels "$channels" --concurrency 512 --duration "${secs}s" --json 2>/dev/null)
        stop_origin
      fi
      rates+=("$(echo "$json" | rate_of)")
      echo "$target $name run $r: ${rates[-1]} sends/s, $(echo "$json" | lat_of)"
    done
    result[$target-$name]=$(printf '%s\n' "${rates[@]}" | median)
  done
  # Ack latency at half the measured maximum, open loop: in process, then over HTTP.
  half=$(( ${result[in-process-$name]} / 2 ))
  json=$($bin loadtest sends --in-process --channels "$channels" --concurrency 8192 --rate "$half" --duration "${secs}s" --json 2>/dev/null)
  result[ihalf-$name]="$half/s: $(echo "$json" | lat_of)"
  echo "in-process $name at half rate: ${result[ihalf-$name]}"
  half=$(( ${result[http-$name]} / 2 ))
  start_origin
  json=$(SELVAGE_OPERATOR_KEY=$key $bin loadtest sends --target "$url" --channels "$channels" --concurrency 4096 --rate "$half" --duration "${secs}s" --json 2>/dev/null)
  stop_origin
  result[half-$name]="$half/s: $(echo "$json" | lat_of)"
  echo "http $name at half rate: ${result[half-$name]}"
  pgs=()
  for r in $(seq "$runs"); do
    tps=$(docs/bench/pg-ordered-insert.sh "$channels" 64 "$secs" | awk '/^tps/ {print int($3)}')
    pgs+=("$tps"); echo "postgresql $name run $r: $tps tx/s"
  done
  result[pg-$name]=$(printf '%s\n' "${pgs[@]}" | median)
done

echo
echo "| shape | in-process (sequencer + store) | HTTP, separate origin process | PostgreSQL ordered insert | in-process ÷ PostgreSQL | HTTP ÷ PostgreSQL | in-process ack latency at half rate | HTTP ack latency at half rate |"
echo "|---|---|---|---|---|---|---|---|"
for name in many hot; do
  label=$([ $name = many ] && echo "1,000 channels" || echo "1 hot channel")
  iratio=$(python3 -c "print(f'{${result[in-process-$name]}/${result[pg-$name]}:.1f}×')")
  ratio=$(python3 -c "print(f'{${result[http-$name]}/${result[pg-$name]}:.1f}×')")
  echo "| $label | ${result[in-process-$name]}/s | ${result[http-$name]}/s | ${result[pg-$name]}/s | $iratio | $ratio | ${result[ihalf-$name]} | ${result[half-$name]} |"
done
rm -rf "$out"
