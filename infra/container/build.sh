#!/usr/bin/env bash
# Builds the Selvage runtime image (infra/container/Containerfile) from a `selvage` binary built
# on this machine: assembles a build context with the binary (debug info stripped), the shared
# libraries it links and their loader (from ldd), CA certificates, /etc/passwd and /etc/group
# with the image's user (10001) and the default configs, then runs `podman build` (or
# `docker build`). Nothing is pulled: the image is FROM scratch.
#
#   infra/container/build.sh [options] [BINARY]
#
#   BINARY                 the selvage binary [default: target/release/selvage]
#   --tag NAME             image name [default: localhost/selvage:latest]
#   --prometheus           also build a Prometheus image, FROM scratch, from this machine's
#                          prometheus binary (Debian's `prometheus` package), for machines
#                          that cannot pull prom/prometheus
#   --prometheus-tag NAME  its name [default: localhost/selvage-prometheus:latest]
#   --prometheus-binary P  [default: the `prometheus` on PATH]
#   --engine podman|docker [default: $CONTAINER_ENGINE, else podman, else docker]
#   --context-only DIR     assemble the Selvage context into DIR and stop (what
#                          Containerfile.source does inside its builder stage)
#   --no-strip             keep the binary's debug info
#
# podman builds in the docker image format (--format docker): the OCI format has no
# HEALTHCHECK, and podman would drop it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

binary=""
tag="localhost/selvage:latest"
prometheus=0
prometheus_tag="localhost/selvage-prometheus:latest"
prometheus_binary=""
engine="${CONTAINER_ENGINE:-}"
context_only=""
strip_debug=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --prometheus) prometheus=1; shift ;;
    --prometheus-tag) prometheus_tag=$2; shift 2 ;;
    --prometheus-binary) prometheus_binary=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --context-only) context_only=$2; shift 2 ;;
    --no-strip) strip_debug=0; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "build.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) [[ -z $binary ]] || { echo "build.sh: one binary only" >&2; exit 2; }; binary=$1; shift ;;
  esac
done
binary=${binary:-$root/target/release/selvage}
if [[ ! -x $binary ]]; then
  echo "build.sh: no executable $binary (cargo build --release, or give target/debug/selvage)" >&2
  exit 1
fi

# Copies an executable's shared libraries and its loader into rootfs, at the paths it names
# (the loader's path is written into the executable; the libraries are found in /lib* by it).
copy_libraries() {
  local exe=$1 rootfs=$2 line lib
  if ! ldd "$exe" >/dev/null 2>&1; then
    return 0 # static (ldd: "not a dynamic executable")
  fi
  while read -r line; do
    lib=""
    case $line in
      *"=> not found"*) echo "build.sh: $exe needs a library this machine lacks: $line" >&2; exit 1 ;;
      *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
      /*) lib=${line%% (*} ;;
    esac
    [[ -n $lib ]] || continue # linux-vdso.so.1: in the kernel
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done < <(ldd "$exe")
}

# The common part of both images' root file systems: users, name lookup, CA certificates, /tmp.
base_rootfs() {
  local rootfs=$1
  mkdir -p "$rootfs/etc" "$rootfs/tmp"
  chmod 1777 "$rootfs/tmp"
  cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
selvage:x:10001:10001:Selvage:/var/lib/selvage:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
  cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
selvage:x:10001:
nogroup:x:65534:
GROUP
  printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  # HTTPS to S3, push services, webhooks and SMTP servers checks their certificates against
  # the system's roots.
  local ca
  for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
    if [[ -f $ca ]]; then
      mkdir -p "$rootfs/etc/ssl/certs"
      cp -L "$ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"
      return 0
    fi
  done
  echo "build.sh: warning: no CA certificate bundle on this machine; HTTPS from the image will fail" >&2
}

# The Selvage image's context: rootfs/ (binary, libraries, configs) and data/ (the volume's
# initial, empty, content, copied in owned by 10001).
assemble_selvage() {
  local ctx=$1 rootfs=$1/rootfs
  rm -rf "$ctx"
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/selvage" "$ctx/data"
  base_rootfs "$rootfs"
  if ((strip_debug)) && command -v objcopy >/dev/null; then
    objcopy --strip-debug "$binary" "$rootfs/usr/local/bin/selvage"
  else
    cp "$binary" "$rootfs/usr/local/bin/selvage"
  fi
  chmod 0755 "$rootfs/usr/local/bin/selvage"
  copy_libraries "$binary" "$rootfs"
  cp "$here/origin.toml" "$here/edge.toml" "$rootfs/etc/selvage/"
  cp "$here/Containerfile" "$ctx/Containerfile"
}

assemble_prometheus() {
  local ctx=$1 rootfs=$1/rootfs bin=$prometheus_binary
  bin=${bin:-$(command -v prometheus || true)}
  if [[ -z $bin || ! -x $bin ]]; then
    echo "build.sh: no prometheus binary (apt-get install prometheus, or --prometheus-binary PATH)" >&2
    exit 1
  fi
  rm -rf "$ctx"
  mkdir -p "$rootfs/bin" "$rootfs/etc/prometheus" "$ctx/data"
  base_rootfs "$rootfs"
  cp -L "$bin" "$rootfs/bin/prometheus"
  copy_libraries "$bin" "$rootfs"
  # A configuration that scrapes Prometheus itself, for a bare `run`; compose mounts its own.
  cat >"$rootfs/etc/prometheus/prometheus.yml" <<'PROM'
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:9090"]
PROM
  cp "$here/prometheus.Containerfile" "$ctx/Containerfile"
}

if [[ -n $context_only ]]; then
  assemble_selvage "$context_only"
  echo "build.sh: context assembled in $context_only"
  exit 0
fi

if [[ -z $engine ]]; then
  if command -v podman >/dev/null; then
    engine=podman
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
  else
    echo "build.sh: neither podman nor a running docker engine (set CONTAINER_ENGINE)" >&2
    exit 1
  fi
fi
format=()
[[ $(basename "$engine") == podman ]] && format=(--format docker)

work=$(mktemp -d "${TMPDIR:-/tmp}/selvage-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

assemble_selvage "$work/selvage"
echo "build.sh: $(du -sh "$work/selvage" | cut -f1) context from $binary; building $tag with $engine" >&2
"$engine" build "${format[@]}" --tag "$tag" --file "$work/selvage/Containerfile" "$work/selvage"

if ((prometheus)); then
  assemble_prometheus "$work/prometheus"
  echo "build.sh: building $prometheus_tag with $engine" >&2
  "$engine" build "${format[@]}" --tag "$prometheus_tag" --file "$work/prometheus/Containerfile" "$work/prometheus"
fi
