#!/usr/bin/env bash
# Files-service benchmarks of docs/BENCHMARKS.md ("Files"), with `selvage loadtest files`:
#   1. upload URLs issued per second (`POST /v1/files`, closed loop) and their latency;
#   2. `complete` → `message` event latency at a member connected to the edge over WebSocket;
#   3. UPLOADS uploads of UPLOAD_BYTES each, all at once, end to end (declare, PUT through the
#      presigned URL, complete), with the origin's resident memory read from /proc/PID/status
#      before, during and after: file bytes go to the object store, never through the origin.
# The object store is the S3 endpoint of a `selvage dev` process (s3local); the origin and the
# edge are separate `selvage origin` / `selvage edge` processes, so the origin's memory is its
# own. Each run gets a fresh origin and edge; the summary gives the median of RUNS runs.
# Usage: docs/bench/files.sh [RUNS] [SECONDS]      (run from the repository root; needs UPLOADS ×
# UPLOAD_BYTES of free space for the object store: under /tmp, or DEV_DIR=, e.g. on /dev/shm,
# which the script empties and deletes)
# UPLOADS= (default 1000), UPLOAD_BYTES= (default 1048576), ISSUE_CONCURRENCY= (default 64),
# EVENT_CONCURRENCY= (default 4). QUIET=0 skips waiting for an idle machine before each run.
# BIN=PATH measures another build of selvage; by default the
# script builds and measures this checkout's release binary.
set -euo pipefail
runs=${1:-3}
secs=${2:-10}
uploads=${UPLOADS:-1000}
upload_bytes=${UPLOAD_BYTES:-1048576}
issue_concurrency=${ISSUE_CONCURRENCY:-64}
event_concurrency=${EVENT_CONCURRENCY:-4}
source "$(dirname "$0")/common.sh"
if [ -n "${BIN:-}" ]; then bin=$BIN; else bin=./target/release/selvage; cargo build --release --quiet; fi
key=bench-operator-key-$(date +%s)
edge_key=bench-edge-key-$(date +%s)-0000
out=$(mktemp -d /tmp/selvage-files.XXXXXX)
dev_dir=${DEV_DIR:-$out/dev}
dev_pid=
stop_all() { stop_pair $dev_pid; rm -rf "$out" "$dev_dir"; }
trap stop_all EXIT

# The S3 endpoint: `selvage dev` on free ports, its own origin and edge left idle.
RUST_LOG=warn $bin dev --listen 127.0.0.1:0 --link-listen 127.0.0.1:0 --edge-listen 127.0.0.1:0 \
  --edge-quic-listen 127.0.0.1:0 --s3-listen 127.0.0.1:0 --data-dir "$dev_dir" --fresh \
  > "$out/dev.out" 2> "$out/dev.err" &
dev_pid=$!
wait_for "$out/dev.out" "files (S3)"
s3=$(awk '/files \(S3\)/ {print $3}' "$out/dev.out")
echo "S3 endpoint (selvage dev, pid $dev_pid): $s3"

for r in $(seq "$runs"); do
  [ "${QUIET:-1}" = 0 ] || quiet
  # Only the origin gets the files settings (bash exports prefix assignments to the function's
  # commands); the bucket and region are the defaults, which s3local serves.
  SELVAGE_FILES__ENABLED=true SELVAGE_FILES__ENDPOINT=$s3 SELVAGE_FILES__PATH_STYLE=true \
    SELVAGE_FILES__ACCESS_KEY_ID=selvage-dev SELVAGE_FILES__SECRET_ACCESS_KEY=selvage-dev-secret start_origin
  start_edge
  SELVAGE_OPERATOR_KEY=$key $bin loadtest files --target "$edge_url" --origin "$origin_url" --origin-pid "$origin_pid" \
    --issue-concurrency "$issue_concurrency" --issue-duration "${secs}s" \
    --event-concurrency "$event_concurrency" --event-duration "${secs}s" \
    --uploads "$uploads" --upload-bytes "$upload_bytes" --json > "$out/run$r.json" 2> "$out/run$r.err" \
    || { echo "run $r failed:" >&2; cat "$out/run$r.err" "$out/run$r.json" >&2; exit 1; }
  stop_pair
  # The run's objects (UPLOADS × UPLOAD_BYTES on disk) go before the next run adds as many.
  rm -rf "$dev_dir/s3/selvage-files/ws"
  f=$out/run$r.json
  printf 'run %s: %s URLs/s (p99 %s ms); event p50 %s ms p99 %s ms; %s uploads in %s s = %s MiB/s (p99 %s ms); origin RSS %s → max %s → %s MiB\n' "$r" \
    "$(field "$f" 'round(r["issue"]["issued_per_sec"])')" "$(field "$f" 'round(r["issue"]["latency"]["p99_ms"], 2)')" \
    "$(field "$f" 'round(r["events"]["event_latency"]["p50_ms"], 2)')" "$(field "$f" 'round(r["events"]["event_latency"]["p99_ms"], 2)')" \
    "$(field "$f" 'r["uploads"]["completed"]')" "$(field "$f" 'round(r["uploads"]["seconds"], 2)')" \
    "$(field "$f" 'round(r["uploads"]["mib_per_sec"], 1)')" "$(field "$f" 'round(r["uploads"]["latency"]["p99_ms"], 2)')" \
    "$(field "$f" 'round(r["uploads"]["origin_rss"]["before_bytes"] / 1048576, 1)')" \
    "$(field "$f" 'round(r["uploads"]["origin_rss"]["max_during_bytes"] / 1048576, 1)')" \
    "$(field "$f" 'round(r["uploads"]["origin_rss"]["after_bytes"] / 1048576, 1)')"
done

# The median over runs of a report field.
med() { for r in $(seq "$runs"); do field "$out/run$r.json" "$1"; done | median; }
mib_of() { med "round(r[\"uploads\"][\"origin_rss\"][\"$1\"] / 1048576, 1)"; }
echo
echo "Medians of $runs runs ($bin; $(date -u +%F)):"
echo "| measure | Selvage | peer |"
echo "|---|---|---|"
echo "| upload URLs issued (POST /v1/files, $issue_concurrency at once) | $(med 'round(r["issue"]["issued_per_sec"])')/s, p50 $(med 'round(r["issue"]["latency"]["p50_ms"], 2)') ms, p99 $(med 'round(r["issue"]["latency"]["p99_ms"], 2)') ms | — |"
echo "| complete → message event at a member on the edge ($event_concurrency uploaders) | p50 $(med 'round(r["events"]["event_latency"]["p50_ms"], 2)') ms, p99 $(med 'round(r["events"]["event_latency"]["p99_ms"], 2)') ms | — |"
echo "| $uploads × $upload_bytes-byte uploads at once, end to end | $(med 'round(r["uploads"]["seconds"], 2)') s, $(med 'round(r["uploads"]["mib_per_sec"], 1)') MiB/s, each p50 $(med 'round(r["uploads"]["latency"]["p50_ms"], 2)') ms, p99 $(med 'round(r["uploads"]["latency"]["p99_ms"], 2)') ms | — |"
echo "| origin RSS during those uploads | before $(mib_of before_bytes) MiB, max $(mib_of max_during_bytes) MiB, after $(mib_of after_bytes) MiB | — |"
