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
bin=$(realpath "${VHDSYNC:-target/release/vhdsync}")
dir=${DIR:-$(mktemp -d)}
cd "$dir"
rm -rf src dst state src.url dst.url
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"/{src,dst,state}' EXIT

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
init=$("$bin" lab init --dir src --vm "bench:$disk" --json)
vm=$(echo "$init" | json 'd["vms"][0]["uuid"]')
vdi=$(echo "$init" | json 'd["vms"][0]["disks"][0]["vdi"]["uuid"]')
sr=$("$bin" lab init --dir dst --json | json 'd["sr"]["uuid"]')
"$bin" lab serve --dir src > src.url 2> src.log & pids+=($!)
"$bin" lab serve --dir dst > dst.url 2> dst.log & pids+=($!)
for f in src.url dst.url; do until [ -s $f ]; do sleep 0.05; done; done
src=$(head -1 src.url); dst=$(head -1 dst.url)
cat > job.toml <<TOML
name = "delta-cycle"
source = "${src/:\/\//://root:lab@}"
target = "${dst/:\/\//://root:lab@}"
target_sr = "$sr"
vms = ["$vm"]
retention = 1
state_dir = "$dir/state"
TOML
write() { "$bin" lab write --url "${src/:\/\//://root:lab@}" --vdi "$vdi" --offset "$1" --random "$2" --seed "$3" > /dev/null; }
cycle() {
  local start end out
  start=$(date +%s.%N)
  out=$("$bin" replicate --job job.toml --json)
  end=$(date +%s.%N)
  python3 - "$1" "$start" "$end" "$out" <<'PY'
import json, sys
label, start, end, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
r = out["vms"][0]["report"]
wall = end - start
print(f"{label:<10} {r['mode']:<6} sent {r['bytes_sent']:>11} B  rpc calls {out['rpc_calls']:>4}  wall {wall:6.3f} s  {r['bytes_sent'] / wall / 1e6:6.0f} MB/s")
PY
}
write 0 "$disk" 1
cycle full
for round in $(seq "$cycles"); do
  write "$((round * 14))M" "$delta" "$((100 + round))"
  cycle delta
  cycle no-change
done
