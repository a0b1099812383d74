#!/usr/bin/env bash
# Delta replication cycles between two `vhdsync lab serve` hosts on loopback, outside
# `vhdsync bench`: a one-disk VM of DISK filled with random data, a full cycle, then CYCLES
# rounds of (guest rewrites DELTA, as the bench does at 14 MiB steps; a delta cycle; a cycle
# with nothing written). Prints each cycle's wall time and stream bytes, and the delta's rate.
#
#   scripts/delta-cycle.sh [DISK] [DELTA] [CYCLES]          (default 1G 256M 4)
#   DIR=/some/tmp VHDSYNC=target/release/vhdsync
set -euo pipefail
disk=${1:-1G}
delta=${2:-256M}
cycles=${3:-4}
here=$(dirname "$(realpath "$0")")
bin=$(realpath "${VHDSYNC:-target/release/vhdsync}")
dir=${DIR:-$(mktemp -d)}
cd "$dir"
source "$here/lab-pair.sh"
lab_pair "bench:$disk" 1 delta-cycle
vdi=$(echo "$init" | json 'd["vms"][0]["disks"][0]["vdi"]["uuid"]')
write() { "$bin" lab write --url "$src" --vdi "$vdi" --offset "$1" --random "$2" --seed "$3" > /dev/null; }
write 0 "$disk" 1
cycle full
for round in $(seq "$cycles"); do
  write "$((round * 14))M" "$delta" "$((100 + round))"
  cycle delta
  cycle no-change
done
