#!/usr/bin/env bash
# The web client's benchmarks of docs/BENCHMARKS.md ("Web client"): its JavaScript and CSS
# (uncompressed, as the edge serves them), and the time from navigation to the first rendered
# message list in Debian's Chromium with a warm edge — first visits (fresh browser contexts) and
# reloads — against `selvage dev` (release build, every port picked free), #general holding 50
# messages. Needs chromium and `npm ci --prefix web/tests` (playwright-core).
# Usage: docs/bench/web.sh [RUNS] [LOADS]    (from the repository root; 3 runs of 20 loads)
# QUIET=0 skips waiting for an idle machine. BIN=PATH measures another build.
set -euo pipefail
runs=${1:-3}
loads=${2:-20}
source "$(dirname "$0")/common.sh"
if [ -n "${BIN:-}" ]; then bin=$BIN; else bin=./target/release/selvage; cargo build --release --quiet; fi
[ -f web/tests/node_modules/playwright-core/package.json ] || npm ci --prefix web/tests --no-audit --no-fund --loglevel=error
out=$(mktemp -d /tmp/selvage-web.XXXXXX)
dev_pid=
trap '[ -n "$dev_pid" ] && kill "$dev_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$out"' EXIT

RUST_LOG=warn $bin dev --fresh --data-dir "$out/dev" --listen 127.0.0.1:0 --link-listen 127.0.0.1:0 \
  --edge-listen 127.0.0.1:0 --edge-quic-listen 127.0.0.1:0 --s3-listen 127.0.0.1:0 > "$out/dev.out" 2> "$out/dev.err" &
dev_pid=$!
for _ in $(seq 600); do grep -q "Ctrl-C stops it" "$out/dev.out" && break; sleep 0.1; done
grep -q "Ctrl-C stops it" "$out/dev.out" || { echo "selvage dev did not start:" >&2; cat "$out/dev.out" "$out/dev.err" >&2; exit 1; }
link=$(grep -o 'http://[^ ]*/#token=[^ ]*' "$out/dev.out" | head -1)
edge=${link%%/#token=*}
token=${link##*#token=}
general=$(grep -o '#general is C[0-9A-Z]*' "$out/dev.out" | awk '{print $3}')
for i in $(seq 50); do
  curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "{\"text\":\"message $i of the benchmark's history\",\"client_msg_id\":\"bench-$i\"}" "$edge/v1/channels/$general/messages"
done

for r in $(seq "$runs"); do
  [ "${QUIET:-1}" = 0 ] || quiet
  node "$(dirname "$0")/web-first-paint.mjs" "$link" "$loads" > "$out/run$r.json"
  printf 'run %s: first visit median %s ms p90 %s ms | reload median %s ms p90 %s ms | JS+CSS %s bytes\n' "$r" \
    "$(field "$out/run$r.json" 'round(r["first_visit"]["median_ms"], 1)')" "$(field "$out/run$r.json" 'round(r["first_visit"]["p90_ms"], 1)')" \
    "$(field "$out/run$r.json" 'round(r["reload"]["median_ms"], 1)')" "$(field "$out/run$r.json" 'round(r["reload"]["p90_ms"], 1)')" \
    "$(field "$out/run$r.json" 'r["js_css_bytes"]')"
  cp "$out/run$r.json" "/tmp/selvage-web-run$r.json"
done

med() { for r in $(seq "$runs"); do field "$out/run$r.json" "$1"; done | median; }
echo
echo "Medians of $runs runs of $loads loads ($bin; $(date -u +%F)); reports in /tmp/selvage-web-run*.json:"
echo "| measure | Selvage | target |"
echo "|---|---|---|"
echo "| JavaScript + CSS, uncompressed | $(med 'r["js_css_bytes"]') bytes | < 150 KB |"
echo "| navigation → first message list, first visit | $(med 'round(r["first_visit"]["median_ms"], 1)') ms (p90 $(med 'round(r["first_visit"]["p90_ms"], 1)') ms) | < 300 ms |"
echo "| navigation → first message list, reload | $(med 'round(r["reload"]["median_ms"], 1)') ms (p90 $(med 'round(r["reload"]["p90_ms"], 1)') ms) | < 300 ms |"
