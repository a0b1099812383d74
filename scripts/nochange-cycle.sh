#!/usr/bin/env bash
# A replication cycle where nothing changed, between two `vhdsync lab serve` hosts on
# loopback: a full, a delta after guest writes, then cycles with no guest writes in between.
# Prints, per cycle, the mode, the bytes sent, the RPC calls and the wall time.
#
#   scripts/nochange-cycle.sh [DISK_MIB] [CYCLES]        (default 256 3)
#   DIR=/some/tmp VHDSYNC=target/release/vhdsync
set -euo pipefail
disk_mib=${1:-256}
cycles=${2:-3}
here=$(dirname "$(realpath "$0")")
bin=$(realpath "${VHDSYNC:-target/release/vhdsync}")
dir=${DIR:-$(mktemp -d)}
cd "$dir"
source "$here/lab-pair.sh"
lab_pair "web01:${disk_mib}M,${disk_mib}M" 3 nochange
disk=$(echo "$init" | json 'd["vms"][0]["disks"][0]["vdi"]["uuid"]')
"$bin" lab write --url "$src" --vdi "$disk" --offset 0 --random $((disk_mib / 2))M --seed 1 > /dev/null
cycle full
"$bin" lab write --url "$src" --vdi "$disk" --offset 1M --random 8M --seed 2 > /dev/null
cycle delta
for i in $(seq "$cycles"); do cycle "no-change"; done
# With coalescing, the SRs' file counts stay bounded however many cycles ran.
echo "VHD files after $((cycles + 2)) cycles: source SR $(ls src/sr/*.vhd | wc -l), target SR $(ls dst/sr/*.vhd | wc -l)"
