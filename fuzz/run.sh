#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS from its seed corpus (docs/FUZZING.md).
#
#   fuzz/run.sh SECONDS [TARGET...]      every target when none is named
#
# The seeds in fuzz/corpus/<target>/ are only read; what the fuzzer adds goes to a work
# directory ($FUZZ_WORK, a temporary one by default), never into the repository. Exits non-zero
# on the first crash, after printing the input that caused it (kept in fuzz/artifacts/<target>/).
# Extra libFuzzer flags can be given in $FUZZ_FLAGS; FUZZ_BUDGET=cpu makes SECONDS CPU seconds
# of the fuzzer (for runs on a shared machine); FUZZ_NO_BUILD=1 runs what was built last.
set -euo pipefail
cd "$(dirname "$0")"

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
  echo "usage: fuzz/run.sh SECONDS [TARGET...]" >&2
  exit 2
fi
seconds=$1
shift
budget=${FUZZ_BUDGET:-wall}

# cargo fuzz needs nightly's -Z flags; RUSTC_BOOTSTRAP lets the stable toolchain take them.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 2
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo fuzz list)
fi

# The longest input worth trying per target: enough for a few frames, segments or keys, small
# enough that mutations stay dense.
max_len() {
  case $1 in
    tuple_decode) echo 512 ;;
    link_frame | wal_recovery) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

if [[ -n ${FUZZ_NO_BUILD:-} ]]; then
  :
elif [[ ${#targets[@]} -eq 1 ]]; then
  cargo fuzz build "${targets[0]}"
else
  cargo fuzz build
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=target/$triple/release
work=${FUZZ_WORK:-$(mktemp -d)}

hz=$(getconf CLK_TCK)
for t in "${targets[@]}"; do
  [[ -d corpus/$t ]] || { echo "no seed corpus fuzz/corpus/$t" >&2; exit 2; }
  mkdir -p "$work/$t" "artifacts/$t"
  printf '\n==> %s: %ss (%s), seeds fuzz/corpus/%s, corpus %s/%s\n' "$t" "$seconds" "$budget" "$t" "$work" "$t"
  log=$work/$t.log
  # -timeout: an input that takes 10 s is a hang; the RSS limit catches runaway allocation. A
  # CPU budget is enforced here (libFuzzer only knows wall time), with wall time as a backstop.
  wall=$seconds
  [[ $budget == cpu ]] && wall=$((seconds * 20))
  "$bin_dir/$t" "$work/$t" "corpus/$t" -max_total_time="$wall" -max_len="$(max_len "$t")" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="artifacts/$t/" ${FUZZ_FLAGS:-} >"$log" 2>&1 &
  pid=$!
  cpu=0
  stopped=0
  while kill -0 "$pid" 2>/dev/null; do
    if ticks=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null); then
      cpu=$((ticks / hz))
    fi
    if [[ $budget == cpu && $cpu -ge $seconds && $stopped -eq 0 ]]; then
      kill -INT "$pid"
      stopped=1
    fi
    sleep 1
  done
  status=0
  wait "$pid" || status=$?
  # 72: libFuzzer's exit on SIGINT, which is how a CPU budget ends.
  [[ $stopped -eq 1 && $status -eq 72 ]] && status=0
  grep -E '^#[0-9]+[[:space:]]' "$log" | tail -n 1 || true
  grep -E '^(stat::(number_of_executed_units|peak_rss_mb|new_units_added)|Done [0-9]+ runs)' "$log" || true
  echo "cpu: ${cpu}s; corpus: $(find "$work/$t" -type f | wc -l) files"
  if [[ $status -ne 0 ]]; then
    tail -n 60 "$log"
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [[ -n $artifact && -f $artifact ]]; then
      echo "crashing input: fuzz/$artifact ($(wc -c <"$artifact") bytes)"
      od -A d -t x1z -v "$artifact" | head -n 40
      echo "reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t $artifact"
    fi
    exit "$status"
  fi
done
