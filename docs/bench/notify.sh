#!/usr/bin/env bash
# Notification benchmarks of docs/BENCHMARKS.md ("Notifications"), with `selvage loadtest notify`
# against an in-process origin (embedded store, fsync on) and a Web Push receiver in the same
# process: the cost of deciding an `@channel` for MEMBERS (10,000) members; the sequencer's
# sends/s while the notifier decides an `@channel` every 500 ms, against the same origin with
# notifications off, in turns; Web Push deliveries per second (each encrypted and VAPID-signed)
# against pywebpush sending as many to the same receiver; mention → push latency with delay 0.
# pywebpush is installed in its own virtualenv under ~/.cache/selvage-bench on first use.
# Usage: docs/bench/notify.sh [RUNS]     (from the repository root)
# MEMBERS= (10000), SECS= (10). QUIET=0 skips waiting for an idle machine. BIN=PATH another build.
set -euo pipefail
runs=${1:-3}
members=${MEMBERS:-10000}
secs=${SECS:-10}
source "$(dirname "$0")/common.sh"
if [ -n "${BIN:-}" ]; then bin=$BIN; else bin=./target/release/selvage; cargo build --release --quiet; fi
venv=${XDG_CACHE_HOME:-$HOME/.cache}/selvage-bench/pywebpush-2.5.0
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pywebpush' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q pywebpush==2.5.0
fi
out=$(mktemp -d /tmp/selvage-notify.XXXXXX)
trap 'rm -rf "$out"' EXIT
for r in $(seq "$runs"); do
  [ "${QUIET:-1}" = 0 ] || quiet
  RUST_LOG=warn $bin loadtest notify --members "$members" --duration "${secs}s" --peer-python "$venv/bin/python" \
    --data-dir "$out/run$r" --json > "$out/run$r.json" 2> "$out/run$r.err" \
    || { echo "run $r failed:" >&2; tail -n 20 "$out/run$r.err" "$out/run$r.json" >&2; exit 1; }
  rm -rf "$out/run$r"
  f=$out/run$r.json
  printf 'run %s: decide %s ms/msg (CPU %s ms) | sends/s on %s off %s ratio %s | push %s/s pywebpush %s/s | mention→push p99 %s ms\n' "$r" \
    "$(field "$f" 'round(r["decision"]["ms_per_message"], 1)')" "$(field "$f" 'round(r["decision"]["cpu_ms_per_message"], 1)')" \
    "$(field "$f" 'r["sequencer"]["on"]')" "$(field "$f" 'r["sequencer"]["off"]')" "$(field "$f" 'round(r["sequencer"]["ratio"], 3)')" \
    "$(field "$f" 'round(r["webpush"]["per_sec"])')" "$(field "$f" 'round(r["peer"]["per_sec"])')" \
    "$(field "$f" 'round(r["latency"]["p99_ms"])')"
  cp "$f" "/tmp/selvage-notify-run$r.json"
done

med() { for r in $(seq "$runs"); do field "$out/run$r.json" "$1"; done | median; }
echo
echo "Medians of $runs runs, $members members ($bin; $(date -u +%F)); reports in /tmp/selvage-notify-run*.json:"
echo "| measure | Selvage | peer | ratio |"
echo "|---|---|---|---|"
echo "| @channel to $members members: decided, per message | $(med 'round(r["decision"]["ms_per_message"], 1)') ms ($(med 'round(r["decision"]["us_per_recipient"], 2)') µs per recipient) | — | — |"
echo "| @channel: CPU per message | $(med 'round(r["decision"]["cpu_ms_per_message"], 1)') ms | — | — |"
echo "| sends/s, notifier deciding an @channel every 500 ms / notifications off | $(med 'round(sorted(r["sequencer"]["on"])[len(r["sequencer"]["on"])//2])')/s | $(med 'round(sorted(r["sequencer"]["off"])[len(r["sequencer"]["off"])//2])')/s (off) | $(med 'round(r["sequencer"]["ratio"], 3)')× |"
echo "| Web Push deliveries per second | $(med 'round(r["webpush"]["per_sec"])')/s | $(med 'round(r["peer"]["per_sec"])')/s (pywebpush) | $(med 'round(r["webpush"]["per_sec"] / r["peer"]["per_sec"], 2)')× |"
echo "| mention → push, delay_ms 0 | p50 $(med 'round(r["latency"]["p50_ms"])') ms, p99 $(med 'round(r["latency"]["p99_ms"])') ms | — | — |"
