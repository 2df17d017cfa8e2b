#!/usr/bin/env bash
# Search benchmarks of docs/BENCHMARKS.md ("Search"), with `selvage loadtest search`: a realistic
# corpus (MESSAGES, default 1,000,000; 10 % CJK) sent through the sequencer of an in-process origin,
# which then restarts with search on and indexes it with its feed consumer `search` (messages/s,
# index size); then 16 searchers as a user in 50 of 1,000 private channels send GET /v1/search to
# it, closed loop for SECS seconds (p50, p99, searches/s). The peer,
# in the same run: PostgreSQL 15's full-text search (tsvector, GIN, ts_rank) on the same corpus,
# queries and permission filter, in a throwaway cluster on a loopback port started here.
# Usage: docs/bench/search.sh [RUNS]      (run from the repository root, as root: the cluster
# runs as the user postgres)
# MESSAGES= (1000000), SECS= (30), SEARCHERS= (16), SEED= (1), PG_CONFIG= (english).
# QUIET=0 skips waiting for an idle machine before each run. BIN=PATH measures another build.
set -euo pipefail
runs=${1:-3}
messages=${MESSAGES:-1000000}
secs=${SECS:-30}
searchers=${SEARCHERS:-16}
seed=${SEED:-1}
pg_config=${PG_CONFIG:-english}
source "$(dirname "$0")/common.sh"
if [ -n "${BIN:-}" ]; then bin=$BIN; else bin=./target/release/selvage; cargo build --release --quiet; fi
pg=/usr/lib/postgresql/15/bin
[ -x $pg/initdb ] || { echo "needs PostgreSQL 15 (Debian: apt-get install -y postgresql-15)" >&2; exit 1; }
out=$(mktemp -d /tmp/selvage-search.XXXXXX)
chown postgres "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg() { runuser -u postgres -- "$@"; }
stop_all() {
  as_pg $pg/pg_ctl -D "$out/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$out"
}
trap stop_all EXIT

# PostgreSQL's settings for this machine (2 cores, 23 GiB shared with other work): the corpus and
# its indexes fit in shared_buffers; JIT off (it costs milliseconds to compile per query and
# short queries never win them back); no parallel workers (16 connections already share 2 cores).
as_pg $pg/initdb -D "$out/pg" -A trust -U postgres >/dev/null
as_pg $pg/pg_ctl -D "$out/pg" -l "$out/pg.log" -w -o "-p $port -k $out -c listen_addresses=127.0.0.1 \
  -c shared_buffers=2GB -c effective_cache_size=8GB -c work_mem=32MB -c maintenance_work_mem=1GB \
  -c jit=off -c max_parallel_workers_per_gather=0 -c max_connections=100" start >/dev/null \
  || { echo "PostgreSQL did not start:" >&2; cat "$out/pg.log" >&2; exit 1; }
conninfo="host=127.0.0.1 port=$port user=postgres dbname=postgres"
echo "PostgreSQL on 127.0.0.1:$port ($(as_pg psql -h 127.0.0.1 -p "$port" -U postgres -Atc 'SHOW server_version' postgres))"

for r in $(seq "$runs"); do
  [ "${QUIET:-1}" = 0 ] || quiet
  RUST_LOG=warn $bin loadtest search --messages "$messages" --searchers "$searchers" --duration "${secs}s" \
    --seed "$seed" --postgres "$conninfo" --postgres-config "$pg_config" --data-dir "$out/run$r" --json \
    > "$out/run$r.json" 2> "$out/run$r.err" \
    || { echo "run $r failed:" >&2; tail -n 20 "$out/run$r.err" "$out/run$r.json" >&2; exit 1; }
  rm -rf "$out/run$r"
  f=$out/run$r.json
  printf 'run %s: indexed %s msg/s (%s MiB) | PG %s rows/s (%s MiB) | Selvage %s searches/s p50 %s p99 %s ms | PG %s/s p50 %s p99 %s ms\n' "$r" \
    "$(field "$f" 'round(r["indexing"]["per_sec"])')" "$(field "$f" 'round(r["indexing"]["index_bytes"] / 1048576, 1)')" \
    "$(field "$f" 'round(r["postgres"]["load_per_sec"])')" "$(field "$f" 'round(r["postgres"]["total_bytes"] / 1048576, 1)')" \
    "$(field "$f" 'round(r["queries"]["per_sec"])')" "$(field "$f" 'round(r["queries"]["latency"]["p50_ms"], 2)')" \
    "$(field "$f" 'round(r["queries"]["latency"]["p99_ms"], 2)')" \
    "$(field "$f" 'round(r["postgres"]["queries"]["per_sec"])')" "$(field "$f" 'round(r["postgres"]["queries"]["latency"]["p50_ms"], 2)')" \
    "$(field "$f" 'round(r["postgres"]["queries"]["latency"]["p99_ms"], 2)')"
  cp "$f" "/tmp/selvage-search-run$r.json"
done

# The median over runs of a report field.
med() { for r in $(seq "$runs"); do field "$out/run$r.json" "$1"; done | median; }
echo
echo "Medians of $runs runs, $messages messages, $searchers searchers for ${secs}s ($bin; $(date -u +%F)); reports in /tmp/selvage-search-run*.json:"
echo "| measure | Selvage | PostgreSQL ($pg_config) | ratio |"
echo "|---|---|---|---|"
echo "| messages indexed per second (PG: COPY + GIN + ANALYZE) | $(med 'round(r["indexing"]["per_sec"])')/s | $(med 'round(r["postgres"]["load_per_sec"])')/s | $(med 'round(r["ratios"]["indexing"], 2)')× |"
echo "| index size on disk (PG: table + indexes; GIN alone $(med 'round(r["postgres"]["gin_bytes"] / 1048576, 1)') MiB) | $(med 'round(r["indexing"]["index_bytes"] / 1048576, 1)') MiB | $(med 'round(r["postgres"]["total_bytes"] / 1048576, 1)') MiB | $(med 'round(r["ratios"]["size"], 2)')× |"
echo "| searches per second, $searchers searchers | $(med 'round(r["queries"]["per_sec"])')/s | $(med 'round(r["postgres"]["queries"]["per_sec"])')/s | $(med 'round(r["ratios"]["query_throughput"], 2)')× |"
echo "| search p50 | $(med 'round(r["queries"]["latency"]["p50_ms"], 2)') ms | $(med 'round(r["postgres"]["queries"]["latency"]["p50_ms"], 2)') ms | $(med 'round(r["ratios"]["p50"], 2)')× |"
echo "| search p99 | $(med 'round(r["queries"]["latency"]["p99_ms"], 2)') ms | $(med 'round(r["postgres"]["queries"]["latency"]["p99_ms"], 2)') ms | $(med 'round(r["ratios"]["p99"], 2)')× |"
