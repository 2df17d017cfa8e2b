#!/usr/bin/env bash
# The origin's HTTP API against its own OpenAPI document: starts a real `selvage origin` on a
# free port over a fresh embedded store, seeds a workspace (an admin, a second user, a public
# channel with a message and a reply, a DM), then runs schemathesis against /v1/openapi.json with
# the admin's token. Path parameters are drawn from the seeded ids most of the time so that
# authenticated operations get past "not found" and exercise the handlers behind it.
#
# Every check that applies without stateful links runs: a 5xx, a status, content type, header
# or body the document does not list, a request valid by the schema that is refused
# (positive_data_acceptance), one invalid by it that is accepted (negative_data_rejection), a
# request without credentials that is served (ignored_auth), a wrong method without 405. Any
# failure fails the script, as does a panic in the origin's log. The few refusals of valid
# requests that depend on stored state are accepted by name in hooks.py, and counted.
#
# Usage: origin/tests/schemathesis/run.sh
#   SELVAGE_BIN       the selvage binary [target/debug/selvage]
#   SCHEMATHESIS      the schemathesis command [schemathesis]
#   ST_MAX_EXAMPLES   examples per operation and phase [25]
#   ST_MAX_TIME       seconds the whole schemathesis run may take [240]
#   ST_SEED           hypothesis seed [random; printed]
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=origin/tests/schemathesis
bin=${SELVAGE_BIN:-target/debug/selvage}
schemathesis=${SCHEMATHESIS:-schemathesis}
max_examples=${ST_MAX_EXAMPLES:-25}
max_time=${ST_MAX_TIME:-240}
seed=${ST_SEED:-$RANDOM$RANDOM}

[[ -x $bin ]] || { echo "no selvage binary at $bin (build it, or set SELVAGE_BIN)" >&2; exit 2; }

work=$(mktemp -d)
origin_pid=
cleanup() {
  if [[ -n $origin_pid ]]; then
    kill "$origin_pid" 2>/dev/null || true
    wait "$origin_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

operator_key=st-operator-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
# Long-polls of /v1/events wait at most 200 ms, so that they cannot eat the time budget.
# Rate limits are off: thousands of requests on a few tokens would spend the run on `429`s
# (which origin/tests/rate_limits.rs covers).
SELVAGE_OPERATOR_KEY=$operator_key SELVAGE_FEED__MAX_WAIT_MS=200 SELVAGE_RATE_LIMITS__ENABLED=false \
  RUST_LOG=${RUST_LOG:-info} \
  "$bin" origin --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/stdout" 2>"$work/origin.log" &
origin_pid=$!

base=
for _ in $(seq 1 600); do
  base=$(sed -n 's/^selvage origin listening on \(http:\/\/[^ ]*\).*/\1/p' "$work/stdout")
  [[ -n $base ]] && break
  kill -0 "$origin_pid" 2>/dev/null || { cat "$work/origin.log" >&2; echo "the origin exited" >&2; exit 1; }
  sleep 0.1
done
[[ -n $base ]] || { cat "$work/origin.log" >&2; echo "the origin did not start within 60 s" >&2; exit 1; }
echo "origin at $base"

# call METHOD PATH TOKEN [BODY]: prints the response body; fails on a non-2xx status.
call() {
  local args=(-sS --fail-with-body -X "$1" -H "Authorization: Bearer $3")
  [[ $# -ge 4 ]] && args+=(-H 'Content-Type: application/json' --data "$4")
  curl "${args[@]}" "$base$2"
}
# field JSON PYTHON-EXPR: one field of a JSON document, e.g. field "$v" '["user"]["id"]'.
field() { python3 -c "import json, sys; print(json.loads(sys.argv[1])$2)" "$1"; }

ws=$(call POST /v1/workspaces "$operator_key" '{"name": "contract", "admin_handle": "admin"}')
token=$(field "$ws" '["token"]')
admin_id=$(field "$ws" '["user"]["id"]')
bob=$(call POST /v1/users "$token" '{"handle": "bob"}')
bob_id=$(field "$bob" '["user"]["id"]')
lounge=$(field "$(call POST /v1/channels "$token" '{"name": "lounge"}')" '["channel"]["id"]')
secret=$(field "$(call POST /v1/channels "$token" '{"name": "secret", "private": true}')" '["channel"]["id"]')
call POST "/v1/channels/$lounge/messages" "$token" '{"text": "hello <@'"$bob_id"'>", "client_msg_id": "seed-1"}' >/dev/null
call POST "/v1/channels/$lounge/messages" "$token" '{"text": "a reply", "client_msg_id": "seed-2", "thread_root": 1}' >/dev/null
call POST "/v1/channels/$lounge/messages" "$token" '{"text": "another topic", "client_msg_id": "seed-3"}' >/dev/null
call PUT "/v1/channels/$lounge/messages/1/reactions/thumbsup" "$token" >/dev/null
dm=$(field "$(call POST /v1/dms "$token" '{"users": ["'"$bob_id"'"]}')" '["channel"]["id"]')
call POST "/v1/channels/$dm/messages" "$token" '{"text": "psst", "client_msg_id": "seed-4"}' >/dev/null
cursor=$(field "$(call GET /v1/events "$token")" '["cursor"]')
echo "seeded: workspace with admin $admin_id, user $bob_id, channels $lounge $secret, DM $dm"

cat >"$work/schemathesis.toml" <<EOF
seed = $seed
max-time = $max_time

[cache]
enabled = false

[generation]
max-examples = $max_examples

[auth.openapi.bearer]
bearer = "$token"

[auth.openapi.operator]
bearer = "$operator_key"

[dictionaries.channels]
values = ["$lounge", "$secret", "$dm"]

[dictionaries.users]
values = ["$admin_id", "$bob_id"]

# Seqs 1 and 3 of #lounge are top-level messages (threads can start there), 2 is a reply.
[dictionaries.seqs]
values = [1, 2, 3]

[dictionaries.roots]
values = [1, 3]

[dictionaries.emoji]
values = ["thumbsup"]

[dictionaries.cursors]
values = ["$cursor"]

[parameters]
"path.id" = { dictionary = "channels", probability = 0.8 }
"path.user" = { dictionary = "users", probability = 0.7 }
"path.seq" = { dictionary = "seqs", probability = 0.6 }
"path.emoji" = { dictionary = "emoji", probability = 0.5 }
"query.cursor" = { dictionary = "cursors", probability = 0.5 }
"body.thread_root" = { dictionary = "roots", probability = 0.7 }
"body.user" = { dictionary = "users", probability = 0.6 }
"body.users[*]" = { dictionary = "users", probability = 0.6 }

# {id} names a user here, not a channel. Never the admin: deactivating oneself is refused, and
# the run's other users may come and go.
[[operations]]
include-path-regex = "^/v1/users/"
parameters = { "path.id" = { dictionary = "others", probability = 0.7 } }

[dictionaries.others]
values = ["$bob_id"]

[phases.stateful]
enabled = false

# A field over its size limit is refused with 413 too_large (docs/API.md, Errors).
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]
EOF

echo "schemathesis: seed $seed, $max_examples examples per operation, at most ${max_time}s"
status=0
ST_BASE_URL=$base ST_TOKEN=$token PYTHONPATH=$here SCHEMATHESIS_HOOKS=hooks \
  "$schemathesis" --config-file "$work/schemathesis.toml" run "$base/v1/openapi.json" --url "$base" \
  --checks all --exclude-checks use_after_free,ensure_resource_availability \
  --wait-for-schema 10 --no-color || status=$?

if grep -q "panicked" "$work/origin.log"; then
  echo "the origin panicked:" >&2
  grep -A5 "panicked" "$work/origin.log" >&2
  status=1
fi
if ! kill -0 "$origin_pid" 2>/dev/null; then
  echo "the origin died during the run" >&2
  tail -50 "$work/origin.log" >&2
  status=1
fi
exit "$status"
