#!/usr/bin/env bash
# `vhdsync apply --no-sync` and `qemu-img convert -f vpc -O raw` of the same VHD stream, each
# timed right after an untimed run of itself and right after one of the other. On a VM whose
# balloon hands free memory back to its host, a writer is fast only when the run before it
# left pages to free and reuse: qemu-img's leave its output cached, vhdsync's drop theirs
# behind them (README, Performance). Prints min-max seconds per case over ROUNDS.
#
#   scripts/apply-order.sh STREAM.vhd [ROUNDS]       (default 3; STREAM from `vhdsync export`)
#   DIR=/some/tmp VHDSYNC=target/release/vhdsync
set -euo pipefail
stream=$(realpath "$1")
rounds=${2:-3}
bin=$(realpath "${VHDSYNC:-target/release/vhdsync}")
dir=${DIR:-$(mktemp -d)}
out=$dir/apply-order.raw
trap 'rm -f "$out"' EXIT
size=$(qemu-img info --output=json "$stream" | python3 -c "import json,sys; print(json.load(sys.stdin)['virtual-size'])")

qemu() { qemu-img convert -f vpc -O raw "$stream" "$out"; }
apply() { "$bin" apply --no-sync "$stream" "$out" --size "$size" > /dev/null; }
# case LABEL BEFORE MEASURED: run BEFORE, flush, delete its output, then time MEASURED.
case_of() {
  rm -f "$out"; "$2"; sync; rm -f "$out"
  local started ended
  started=$(date +%s.%N); "$3"; ended=$(date +%s.%N)
  echo "$1 $(echo "$ended - $started" | bc)"
}
for _ in $(seq "$rounds"); do
  case_of "qemu-img after qemu-img" qemu qemu
  case_of "qemu-img after apply" apply qemu
  case_of "apply after apply" apply apply
  case_of "apply after qemu-img" qemu apply
done | awk '{t = $NF; $NF = ""; k = $0; if (!(k in lo) || t < lo[k]) lo[k] = t; if (t > hi[k]) hi[k] = t}
  END {for (k in lo) printf "%-26s %6.2f - %6.2f s\n", k, lo[k], hi[k]}' | sort
