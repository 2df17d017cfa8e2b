#!/usr/bin/env bash
# The PostgreSQL peer of `selvage loadtest sends`: the same ordered, deduplicated, durable insert
# — take the channel's next seq and insert the message with its client_msg_id, in one
# transaction, fsync on (PostgreSQL's defaults: fsync=on, synchronous_commit=on).
#
# Usage: docs/bench/pg-ordered-insert.sh CHANNELS CLIENTS SECONDS
#   CHANNELS=1000 spreads over many channels; CHANNELS=1 is one hot channel.
# Starts a throwaway PostgreSQL 15 cluster in a temporary directory on a loopback port and
# removes it afterwards. Needs Debian's postgresql-15 package; run as root (it uses `postgres`).
set -euo pipefail
channels=${1:-1000}
clients=${2:-64}
seconds=${3:-20}
bin=/usr/lib/postgresql/15/bin
dir=$(mktemp -d /tmp/selvage-pg.XXXXXX)
chown postgres "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg() { runuser -u postgres -- "$@"; }
cleanup() { as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
as_pg "$bin/initdb" -D "$dir/data" -A trust >/dev/null
if ! as_pg "$bin/pg_ctl" -D "$dir/data" -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300" -l "$dir/log" -w start >/dev/null; then
  echo "PostgreSQL did not start; its log:" >&2
  cat "$dir/log" >&2
  exit 1
fi
psql() { as_pg /usr/bin/psql -h 127.0.0.1 -p $port -q -X -v ON_ERROR_STOP=1 "$@" postgres; }
psql <<SQL
CREATE TABLE heads (channel int PRIMARY KEY, head bigint NOT NULL);
CREATE TABLE messages (
  channel int NOT NULL, seq bigint NOT NULL, client_msg_id text NOT NULL, text text NOT NULL,
  ts timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (channel, seq), UNIQUE (channel, client_msg_id));
INSERT INTO heads SELECT g, 0 FROM generate_series(1, $channels) g;
SQL
cat > "$dir/send.sql" <<SQL
\set c random(1, $channels)
WITH h AS (UPDATE heads SET head = head + 1 WHERE channel = :c RETURNING head)
INSERT INTO messages (channel, seq, client_msg_id, text)
SELECT :c, head, md5(random()::text), repeat('x', 100) FROM h;
SQL
chown postgres "$dir/send.sql"
as_pg /usr/lib/postgresql/15/bin/pgbench -h 127.0.0.1 -p $port -n -M prepared -c "$clients" -j 2 -T "$seconds" -f "$dir/send.sql" postgres \
  | grep -E "^(number of clients|number of transactions actually|latency average|tps)"
psql -t -c "SELECT 'gaps: ' || count(*) FROM (SELECT channel, max(seq) - count(*) AS g FROM messages GROUP BY channel) x WHERE g <> 0"
