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
bin=$(realpath "${VHDSYNC:-target/release/vhdsync}")
dir=${DIR:-$(mktemp -d)}
cd "$dir"
rm -rf src dst state src.url dst.url
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"/{src,dst,state}' EXIT

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
vm=$("$bin" lab init --dir src --vm "web01:${disk_mib}M,${disk_mib}M" --json | json 'd["vms"][0]["uuid"]')
sr=$("$bin" lab init --dir dst --json | json 'd["sr"]["uuid"]')
"$bin" lab serve --dir src > src.url 2> src.log & pids+=($!)
"$bin" lab serve --dir dst > dst.url 2> dst.log & pids+=($!)
for f in src.url dst.url; do until [ -s $f ]; do sleep 0.05; done; done
src=$(head -1 src.url); dst=$(head -1 dst.url)
cat > job.toml <<TOML
name = "nochange"
source = "${src/:\/\//://root:lab@}"
target = "${dst/:\/\//://root:lab@}"
target_sr = "$sr"
vms = ["$vm"]
retention = 3
state_dir = "$dir/state"
TOML
disk=$(python3 - "$src" "$vm" <<'PY'
import json, sys, urllib.request
url, vm = sys.argv[1], sys.argv[2]
def call(method, *params):
    req = urllib.request.Request(url + "/jsonrpc", json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["result"]
s = call("session.login_with_password", "root", "lab")
ref = call("VM.get_by_uuid", s, vm)
for vbd in call("VM.get_VBDs", s, ref):
    r = call("VBD.get_record", s, vbd)
    if r["userdevice"] == "0":
        print(call("VDI.get_uuid", s, r["VDI"]))
PY
)
cycle() {
  local label=$1 start end out
  start=$(date +%s.%N)
  out=$("$bin" replicate --job job.toml --json)
  end=$(date +%s.%N)
  python3 - "$label" "$start" "$end" "$out" <<'PY'
import json, sys
label, start, end, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
r = out["vms"][0]["report"]
blocks = sum(d["blocks"] for d in r["disks"])
print(f"{label:<10} {r['mode']:<6} sent {r['bytes_sent']:>11} B ({blocks:>4} blocks)  rpc calls {out['rpc_calls']:>4}  wall {end - start:6.3f} s (cycle {r['seconds']:.3f} s)")
PY
}
"$bin" lab write --url "${src/:\/\//://root:lab@}" --vdi "$disk" --offset 0 --random $((disk_mib / 2))M --seed 1 > /dev/null
cycle full
"$bin" lab write --url "${src/:\/\//://root:lab@}" --vdi "$disk" --offset 1M --random 8M --seed 2 > /dev/null
cycle delta
for i in $(seq "$cycles"); do cycle "no-change"; done
# With coalescing, the SRs' file counts stay bounded however many cycles ran.
echo "VHD files after $((cycles + 2)) cycles: source SR $(ls src/sr/*.vhd | wc -l), target SR $(ls dst/sr/*.vhd | wc -l)"
