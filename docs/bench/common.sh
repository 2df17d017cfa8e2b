# Shared by the benchmark scripts (sourced, not run): starting a separate `selvage origin` and
# `selvage edge` for a run, waiting for them, and stopping them, and reading reports. The caller sets `bin` (the
# selvage binary), `out` (a scratch directory), `key` (operator key) and `edge_key`.

origin_pid= edge_pid=

# The median of numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# FIELD of a JSON report: field FILE PYTHON-EXPRESSION (the report is `r`).
field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'r': r}))" "$@"; }

# Starts a benchmark script: builds the release binary (`bin`; BIN=PATH measures another), picks
# the run's keys (`key`, `edge_key`), makes its scratch directory /tmp/selvage-NAME.XXXXXX
# (`out`), and stops the origin and edge when the script exits.
bench_setup() { # NAME
  bin=${BIN:-./target/release/selvage}
  cargo build --release --quiet
  key=bench-operator-key-$(date +%s)
  edge_key=bench-edge-key-$(date +%s)-0000
  out=$(mktemp -d "/tmp/selvage-$1.XXXXXX")
  trap stop_pair EXIT
}

wait_for() { # file pattern
  for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for '$2' in $1:" >&2; cat "$1" "${1%.out}.err" >&2; return 1
}

# The two cores are shared by everything on the machine: wait (up to 10 minutes) until they have
# been at least 90 % idle for 3 s before each run, so other work does not land in the figures.
quiet() {
  local a b i idle total
  for _ in $(seq 200); do
    a=($(head -1 /proc/stat)); sleep 3; b=($(head -1 /proc/stat))
    idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )); total=0
    for i in $(seq 1 10); do total=$(( total + b[i] - a[i] )); done
    [ $(( idle * 100 )) -ge $(( total * 90 )) ] && return 0
  done
  echo "warning: the machine did not go quiet; measuring anyway" >&2
}

# A fresh origin on an empty data directory (embedded store, fsync on). Sets origin_pid,
# origin_url, and the link address and certificate fingerprint edges need (link, fingerprint).
# Search and notifications are off unless SELVAGE_SEARCH__ENABLED / SELVAGE_NOTIFY__ENABLED say
# otherwise: these benchmarks measure the core (search indexing has its own, docs/bench/search.sh).
start_origin() {
  rm -rf "$out/data"
  SELVAGE_SEARCH__ENABLED=${SELVAGE_SEARCH__ENABLED:-false} SELVAGE_NOTIFY__ENABLED=${SELVAGE_NOTIFY__ENABLED:-false} SELVAGE_OPERATOR_KEY=$key SELVAGE_LINK__EDGE_KEY=$edge_key SELVAGE_LINK__LISTEN=127.0.0.1:0 RUST_LOG=warn \
    $bin origin --listen 127.0.0.1:0 --data-dir "$out/data" > "$out/origin.out" 2> "$out/origin.err" &
  origin_pid=$!
  wait_for "$out/origin.out" "link on"
  origin_url=$(awk '/listening on/ {print $NF}' "$out/origin.out")
  link=$(awk '/link on/ {sub("quic://", "", $5); print $5}' "$out/origin.out")
  fingerprint=$(awk '/link on/ {print $NF}' "$out/origin.out")
}

# An edge linked to the origin (or to LINK, e.g. a WAN proxy in front of it), once it is ready.
# Sets edge_pid and edge_url. SELVAGE_* variables of the caller's environment configure it.
# The load tester shares a few users' tokens among many simulated clients: the per-user cap
# is raised (SELVAGE_SESSIONS__MAX_CONNECTIONS_PER_USER from the caller's environment wins).
start_edge() { # [LINK]
  SELVAGE_SESSIONS__MAX_CONNECTIONS_PER_USER=${SELVAGE_SESSIONS__MAX_CONNECTIONS_PER_USER:-1048576} \
  SELVAGE_ORIGIN__EDGE_KEY=$edge_key RUST_LOG=warn \
    $bin edge --listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 --origin-link "${1:-$link}" --origin-fingerprint "$fingerprint" \
    > "$out/edge.out" 2> "$out/edge.err" &
  edge_pid=$!
  wait_for "$out/edge.out" "listening on"
  edge_url=http://$(awk '/listening on/ {sub("ws://", "", $NF); sub("/v1/connect", "", $NF); print $NF}' "$out/edge.out")
  for _ in $(seq 400); do curl -sf "$edge_url/readyz" > /dev/null && break; sleep 0.05; done
}

# Waits for a quiet machine, then starts an origin and an edge linked to it.
start_pair() {
  quiet
  start_origin
  start_edge
}

# Stops the origin, the edge and any other processes named (their pids).
stop_pair() { # [PID...]
  for pid in $edge_pid $origin_pid "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in $edge_pid $origin_pid "$@"; do wait "$pid" 2>/dev/null || true; done
  edge_pid= origin_pid=
}

# CPU seconds a process has used so far.
cpu_seconds() { # PID
  awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$1/stat"
}
