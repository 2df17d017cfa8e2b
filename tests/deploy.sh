#!/usr/bin/env bash
# The deploy kit, tested for real: builds the container images from this repository's binary
# (infra/container/build.sh, FROM scratch: nothing is pulled), brings up the two-region demo
# (infra/compose.yaml: origin, s3, edge-eu, edge-us, Prometheus) with podman-compose, waits for
# every service to be healthy, runs `selvage loadtest run steady` through both edges with the
# checker while edge-eu is drained mid-run (POST /admin/drain; its clients move to edge-us and
# every acknowledged message must still arrive once, in order), checks that Prometheus scraped
# every target and loaded the alert rules, then tears everything down (containers, volumes,
# network, images) whatever happened.
#
#   tests/deploy.sh
#
# Environment:
#   SELVAGE_BIN      the binary to put in the image and to run the load test with
#                    [default: target/debug/selvage, built if missing]
#   DEPLOY_SCALE     scale of the steady scenario [default: 0.1: 1,000 clients, 200 ops/s, 6 s]
#   DEPLOY_REQUIRE=1 fail instead of skipping when podman cannot run containers here
#   DEPLOY_KEEP=1    leave the deployment running (prints how to tear it down)
#
# Needs podman, podman-compose, curl, python3 and prometheus (for the Prometheus image; Debian's
# `prometheus`). No Docker engine. Podman runs with runc and cgroupfs, and containers get
# open-file and process limits within this machine's hard limits, from a containers.conf the
# test writes (CONTAINERS_CONF; nothing in /etc is changed); overlay storage, or vfs in a
# directory of its own if overlay does not work here.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=$SECONDS
scale=${DEPLOY_SCALE:-0.1}
bin=${SELVAGE_BIN:-$root/target/debug/selvage}

say() { printf '[deploy %3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() { say "FAILED: $*"; exit 1; }
skip() {
  if [[ ${DEPLOY_REQUIRE:-0} == 1 ]]; then
    fail "cannot run here: $*"
  fi
  say "SKIPPED: $*"
  exit 0
}

for tool in podman podman-compose curl python3; do
  command -v "$tool" >/dev/null || skip "no $tool (apt-get install podman podman-compose curl python3)"
done
command -v prometheus >/dev/null || skip "no prometheus binary for the Prometheus image (apt-get install prometheus)"
if [[ ! -x $bin ]]; then
  [[ -z ${SELVAGE_BIN:-} ]] || fail "SELVAGE_BIN=$bin is not an executable"
  say "building target/debug/selvage"
  cargo build --bin selvage
fi
"$bin" s3 --help >/dev/null 2>&1 || fail "$bin has no \`selvage s3\` (rebuild it)"

work=$(mktemp -d "${TMPDIR:-/tmp}/selvage-deploy.XXXXXX")
loadtest=
project="selvage-deploy-$$"
image="localhost/selvage-deploy-test:$$"
prometheus_image="localhost/selvage-deploy-test-prometheus:$$"
log=$work/podman.log
: >"$log"

# Podman's configuration for this run: runc with cgroupfs, and limits the kernel lets a
# container have (podman's defaults, 1048576 open files and 4194304 processes, are above this
# machine's hard limits, and runc then cannot start anything). Processes are also kept under
# kernel.pid_max, above which runc cannot set the limit here.
nofile=$(ulimit -Hn)
[[ $nofile == unlimited || $nofile -gt 1048576 ]] && nofile=1048576
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
[[ $nproc == unlimited || $nproc -gt $pid_max ]] && nproc=$pid_max
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
export CONTAINERS_CONF=$work/containers.conf

# Compose reads its files from a copy, with an .env of the test's own (podman-compose 1.0.3
# lets an infra/.env of the developer's override the environment).
mkdir -p "$work/infra/prometheus"
cp -r infra/compose.yaml infra/compose "$work/infra/"
cp infra/prometheus/alerts.yml "$work/infra/prometheus/alerts.yml"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
operator_key="op-$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
link_key="link-$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
origin_port=$(free_port) eu_port=$(free_port) us_port=$(free_port) s3_port=$(free_port) prom_port=$(free_port)
cat >"$work/infra/.env" <<EOF
SELVAGE_IMAGE=$image
PROMETHEUS_IMAGE=$prometheus_image
SELVAGE_OPERATOR_KEY=$operator_key
SELVAGE_LINK_KEY=$link_key
SELVAGE_S3_ACCESS_KEY=deploy-test
SELVAGE_S3_SECRET_KEY=s3-$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
SELVAGE_RATE_LIMITS=false
EDGE_DRAIN_GRACE_MS=2000
EDGE_CONNECTIONS_PER_USER=100
ORIGIN_PORT=$origin_port
EDGE_EU_PORT=$eu_port
EDGE_EU_QUIC_PORT=$(free_port)
EDGE_US_PORT=$us_port
EDGE_US_QUIC_PORT=$(free_port)
S3_PORT=$s3_port
PROMETHEUS_PORT=$prom_port
EOF
teardown() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n ${loadtest:-} ]] && kill -0 "$loadtest" 2>/dev/null; then
    kill "$loadtest" 2>/dev/null || true
  fi
  if [[ ${DEPLOY_KEEP:-0} == 1 ]]; then
    say "kept: CONTAINERS_CONF=$CONTAINERS_CONF ${CONTAINERS_STORAGE_CONF:+CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF }podman-compose -p $project -f $work/infra/compose.yaml down -v"
    exit "$status"
  fi
  if ((status != 0)); then
    say "logs of every container (last 40 lines each):"
    local c
    for c in $(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}' 2>/dev/null); do
      echo "--- $c ($(podman inspect "$c" --format '{{.State.Status}} exit {{.State.ExitCode}}' 2>/dev/null))"
      podman logs --tail 40 "$c" 2>&1 | sed 's/^/    /'
    done
    echo "--- podman commands (last 30 lines of $log)"
    tail -30 "$log" | sed 's/^/    /'
  fi
  say "tearing down"
  timeout 120 podman-compose -p "$project" -f "$work/infra/compose.yaml" down -v -t 5 >>"$log" 2>&1 || true
  # Whatever compose left: containers with their anonymous volumes, named volumes, the network.
  local ids
  ids=$(podman ps -aq --filter "label=io.podman.compose.project=$project" 2>/dev/null || true)
  [[ -z $ids ]] || podman rm -f -v $ids >>"$log" 2>&1 || true
  ids=$(podman volume ls -q --filter "label=io.podman.compose.project=$project" 2>/dev/null || true)
  [[ -z $ids ]] || podman volume rm -f $ids >>"$log" 2>&1 || true
  podman network rm -f "${project}_default" >>"$log" 2>&1 || true
  podman rmi -f "$image" "$prometheus_image" >>"$log" 2>&1 || true
  local left
  left=$(podman ps -aq --filter "label=io.podman.compose.project=$project" 2>/dev/null | wc -l)
  ((left == 0)) || say "warning: $left containers of $project are left"
  rm -rf "$work" 2>/dev/null || true
  if ((status == 0)); then say "PASSED"; fi
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# --- images ------------------------------------------------------------------------------------
build_images() {
  infra/container/build.sh "$bin" --tag "$image" --prometheus --prometheus-tag "$prometheus_image" \
    --engine podman >>"$log" 2>&1
}
say "building $image and $prometheus_image from $bin"
build_images || fail "the images did not build (see above)"
if ! timeout 60 podman run --rm "$image" --version >>"$log" 2>&1; then
  # Overlay on this file system may not work (e.g. inside another container): vfs, in a
  # directory of the test's own.
  say "podman cannot run a container with its default storage; trying vfs"
  cat >"$work/storage.conf" <<EOF
[storage]
driver = "vfs"
runroot = "$work/storage/run"
graphroot = "$work/storage/graph"
EOF
  export CONTAINERS_STORAGE_CONF=$work/storage.conf
  build_images || fail "the images did not build with vfs storage"
  timeout 60 podman run --rm "$image" --version >>"$log" 2>&1 \
    || skip "podman cannot run a container here: $(tail -1 "$log")"
fi
[[ $(podman image inspect "$image" --format '{{.Config.User}}') == 10001:10001 ]] \
  || fail "the image does not run as the non-root user 10001"

# --- compose up --------------------------------------------------------------------------------
say "podman-compose up (project $project)"
timeout 300 podman-compose -p "$project" -f "$work/infra/compose.yaml" up -d >>"$log" 2>&1 \
  || fail "podman-compose up failed"

origin="http://127.0.0.1:$origin_port"
eu="http://127.0.0.1:$eu_port"
us="http://127.0.0.1:$us_port"
prom="http://127.0.0.1:$prom_port"
wait_for() { # URL WHAT [SECONDS]
  local deadline=$((SECONDS + ${3:-120}))
  until curl -fsS -m 3 -o /dev/null "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "$2 ($1) not ready in ${3:-120} s"
    sleep 1
  done
}
wait_for "$origin/readyz" "the origin"
wait_for "http://127.0.0.1:$s3_port/healthz" "s3"
wait_for "$eu/readyz" "edge-eu (linked to the origin)"
wait_for "$us/readyz" "edge-us (linked to the origin)"
wait_for "$prom/-/ready" "Prometheus"
say "every service answers"

# The image's own HEALTHCHECK, as podman runs it (there is no systemd here to run it on a timer).
if "$bin" admin health --help >/dev/null 2>&1; then
  for service in s3 origin edge-eu edge-us; do
    container="${project}_${service}_1"
    podman healthcheck run "$container" >>"$log" 2>&1 || fail "the image's health check fails in $container"
  done
  say "the image's HEALTHCHECK passes in s3, origin, edge-eu and edge-us"
else
  say "note: not running the image's HEALTHCHECK: this selvage has no \`admin health\` probe"
fi

# --- load through both edges, edge-eu drained mid-run ------------------------------------------
clients=$(python3 -c "print(max(2, round(10000 * $scale)))")
say "selvage loadtest run steady --scale $scale ($clients clients) through edge-eu and edge-us"
"$bin" loadtest run steady --scale "$scale" --target "$eu" --target "$us" --origin "$origin" \
  --operator-key "$operator_key" --check-stored --quiet --out "$work/report" >"$work/loadtest.out" 2>&1 &
loadtest=$!
connections() {
  curl -fsS -m 3 "$1/metrics" 2>/dev/null | awk '/^selvage_edge_connections[{ ]/ { n += $NF } END { print n + 0 }'
}
# Client i starts at edge i mod 2: once edge-eu holds (nearly) its half, the ramp-up is over.
half=$(((clients + 1) / 2))
deadline=$((SECONDS + 240))
while (($(connections "$eu") < half * 9 / 10)); do
  kill -0 "$loadtest" 2>/dev/null || { cat "$work/loadtest.out"; fail "the load test ended before edge-eu held its clients"; }
  ((SECONDS < deadline)) || fail "edge-eu never held its half of the clients"
  sleep 0.2
done
sleep 1.5
say "draining edge-eu ($(connections "$eu") connections) mid-run"
status=$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $operator_key" "$eu/admin/drain")
[[ $status == 202 ]] || fail "POST /admin/drain answered $status"
if ! timeout 300 tail --pid="$loadtest" -f /dev/null; then
  kill "$loadtest" 2>/dev/null || true
  fail "the load test did not finish in 300 s"
fi
if wait "$loadtest"; then
  cat "$work/loadtest.out"
else
  cat "$work/loadtest.out"
  fail "the load test failed (report: $work/report/report.json)"
fi
python3 - "$work/report/report.json" "$half" <<'PY' || fail "the report does not show the drain working"
import json, sys
report = json.load(open(sys.argv[1]))
half = int(sys.argv[2])
totals, checker = report["totals"], report["checker"]
assert report["passed"], report["failures"]
assert checker["violation_count"] == 0, checker
assert checker["stored_checked"], "acknowledged sends were not looked for in the origin's history"
assert totals["acks"] > 0, totals
assert totals["moved"] >= half, f"only {totals['moved']} clients moved off edge-eu (it had {half}): {totals}"
print(f"report: {totals['acks']} acked, {totals['deliveries']} delivered, {totals['moved']} moved to edge-us, "
      f"{checker['clients_checked']} clients checked, no violation")
PY
[[ $(connections "$eu") == 0 ]] || fail "clients are left on the drained edge-eu"
ready=$(curl -sS -m 3 -o /dev/null -w '%{http_code}' "$eu/readyz")
[[ $ready == 503 ]] || fail "the drained edge-eu answers /readyz with $ready, not 503"
say "the run passed the checker; edge-eu's clients moved to edge-us"

# --- Prometheus --------------------------------------------------------------------------------
say "checking Prometheus: every target up, the alert rules loaded"
deadline=$((SECONDS + 60))
until curl -fsS -m 5 "$prom/api/v1/targets" -o "$work/targets.json" 2>/dev/null \
  && python3 - "$work/targets.json" <<'PY'
import json, sys
targets = json.load(open(sys.argv[1]))["data"]["activeTargets"]
jobs = {t["labels"]["job"]: t["health"] for t in targets}
want = {"selvage-origin", "selvage-edge-eu", "selvage-edge-us", "prometheus"}
missing = want - set(jobs)
down = {j: h for j, h in jobs.items() if h != "up"}
if missing or down:
    print(f"  targets: missing {sorted(missing)}, not up {down}", file=sys.stderr)
    sys.exit(1)
print(f"  targets up: {', '.join(sorted(jobs))}")
PY
do
  ((SECONDS < deadline)) || fail "not every Prometheus target is up"
  sleep 2
done
expected_rules=$(grep -cE '^\s*-\s*alert:' "$work/infra/prometheus/alerts.yml")
deadline=$((SECONDS + 60))
until curl -fsS -m 5 "$prom/api/v1/rules" -o "$work/rules.json" 2>/dev/null \
  && python3 - "$work/rules.json" "$expected_rules" <<'PY'
import json, sys
groups = json.load(open(sys.argv[1]))["data"]["groups"]
expected = int(sys.argv[2])
rules = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
files = {g["file"] for g in groups}
broken = [(r["name"], r.get("lastError")) for r in rules if r.get("health") == "err"]
unevaluated = [r["name"] for r in rules if r.get("health") not in ("ok", "err")]
if len(rules) != expected or broken or unevaluated:
    print(f"  rules: {len(rules)} of {expected} loaded from {files}, broken {broken}, not evaluated yet {len(unevaluated)}",
          file=sys.stderr)
    sys.exit(1)
print(f"  {len(rules)} alert rules in {len(groups)} groups loaded from {', '.join(sorted(files))}, every one evaluates")
PY
do
  ((SECONDS < deadline)) || fail "Prometheus did not load (or cannot evaluate) the alert rules"
  sleep 2
done
say "done in $((SECONDS - started)) s"
