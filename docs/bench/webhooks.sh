#!/usr/bin/env bash
# Event webhook benchmarks of docs/BENCHMARKS.md ("Event webhooks"), with `selvage loadtest
# webhooks` against an in-process origin (embedded store, fsync on) and a receiver in the same
# process: deliveries per second to ENDPOINTS (100) local endpoints, event → delivered latency,
# the cost of one signature, and the sequencer's sends/s while deliveries run against the same
# origin with webhooks off, in turns.
# Usage: docs/bench/webhooks.sh [RUNS]     (from the repository root)
# ENDPOINTS= (100), EVENTS= (500), SECS= (10). QUIET=0 skips waiting for an idle machine.
# BIN=PATH measures another build.
set -euo pipefail
runs=${1:-3}
endpoints=${ENDPOINTS:-100}
events=${EVENTS:-500}
secs=${SECS:-10}
source "$(dirname "$0")/common.sh"
if [ -n "${BIN:-}" ]; then bin=$BIN; else bin=./target/release/selvage; cargo build --release --quiet; fi
out=$(mktemp -d /tmp/selvage-webhooks.XXXXXX)
trap 'rm -rf "$out"' EXIT
for r in $(seq "$runs"); do
  [ "${QUIET:-1}" = 0 ] || quiet
  RUST_LOG=warn $bin loadtest webhooks --endpoints "$endpoints" --events "$events" --duration "${secs}s" \
    --latency-duration "${secs}s" --data-dir "$out/run$r" --json > "$out/run$r.json" 2> "$out/run$r.err" \
    || { echo "run $r failed:" >&2; tail -n 20 "$out/run$r.err" "$out/run$r.json" >&2; exit 1; }
  rm -rf "$out/run$r"
  f=$out/run$r.json
  printf 'run %s: %s deliveries/s | event→delivered p50 %s ms p99 %s ms | sign %s ns | sends/s on %s off %s ratio %s\n' "$r" \
    "$(field "$f" 'round(r["throughput"]["per_sec"])')" "$(field "$f" 'round(r["latency"]["p50_ms"], 1)')" \
    "$(field "$f" 'round(r["latency"]["p99_ms"], 1)')" "$(field "$f" 'round(r["signing"]["ns_per_signature"])')" \
    "$(field "$f" 'r["sequencer"]["on"]')" "$(field "$f" 'r["sequencer"]["off"]')" "$(field "$f" 'round(r["sequencer"]["ratio"], 3)')"
  cp "$f" "/tmp/selvage-webhooks-run$r.json"
done

med() { for r in $(seq "$runs"); do field "$out/run$r.json" "$1"; done | median; }
echo
echo "Medians of $runs runs, $endpoints endpoints ($bin; $(date -u +%F)); reports in /tmp/selvage-webhooks-run*.json:"
echo "| measure | Selvage | peer | ratio |"
echo "|---|---|---|---|"
echo "| webhook deliveries per second, $endpoints endpoints | $(med 'round(r["throughput"]["per_sec"])')/s | — | — |"
echo "| event → delivered | p50 $(med 'round(r["latency"]["p50_ms"], 1)') ms, p99 $(med 'round(r["latency"]["p99_ms"], 1)') ms | — | — |"
echo "| one signature (HMAC-SHA256 of a ~400-byte delivery) | $(med 'round(r["signing"]["ns_per_signature"])') ns | — | — |"
echo "| sends/s, deliveries running / webhooks off | $(med 'round(sorted(r["sequencer"]["on"])[len(r["sequencer"]["on"])//2])')/s | $(med 'round(sorted(r["sequencer"]["off"])[len(r["sequencer"]["off"])//2])')/s (off) | $(med 'round(r["sequencer"]["ratio"], 3)')× |"
