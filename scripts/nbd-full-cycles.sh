#!/usr/bin/env bash
# Full replication cycles over the export path and over NBD side by side, between two
# `vhdsync lab serve` hosts on loopback: the source disk written whole with random data and
# offered over NBD (`insecure_nbd`), then ROUNDS rounds of one full per transport, in turn,
# each into an emptied target. Prints each cycle, then the median per transport.
#
#   scripts/nbd-full-cycles.sh [DISK_MIB] [ROUNDS]        (default 256 5)
#   DIR=/some/tmp VHDSYNC=target/release/vhdsync
set -euo pipefail
disk_mib=${1:-256}
rounds=${2:-5}
here=$(dirname "$(realpath "$0")")
bin=$(realpath "${VHDSYNC:-target/release/vhdsync}")
dir=${DIR:-$(mktemp -d)}
cd "$dir"
source "$here/lab-pair.sh"
lab_pair "web01:${disk_mib}M" 1 nbd-fulls
disk=$(echo "$init" | json 'd["vms"][0]["disks"][0]["vdi"]["uuid"]')
"$bin" lab write --url "$src" --vdi "$disk" --offset 0 --random "${disk_mib}M" --seed 1 > /dev/null

# JSON-RPC on a lab host: offer NBD on every network, or destroy every VM and its disks.
rpc() {
  python3 - "$1" "$2" <<'PY'
import json, sys, urllib.parse, urllib.request
url, action = sys.argv[1], sys.argv[2]
parts = urllib.parse.urlsplit(url)
endpoint = f"{parts.scheme}://{parts.hostname}:{parts.port}/jsonrpc"
def call(method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(endpoint, body, {"Content-Type": "application/json"})
    answer = json.loads(urllib.request.urlopen(request).read())
    if "error" in answer:
        raise SystemExit(f"{method}: {answer['error']}")
    return answer["result"]
session = call("session.login_with_password", ["root", "lab", "1", "nbd-full-cycles"])
if action == "offer-nbd":
    for network in call("network.get_all", [session]):
        call("network.add_purpose", [session, network, "insecure_nbd"])
else:
    for ref, vm in call("VM.get_all_records", [session]).items():
        if vm["is_control_domain"]:
            continue
        for vbd in vm["VBDs"]:
            vdi = call("VBD.get_VDI", [session, vbd])
            if vdi != "OpaqueRef:NULL":
                call("VDI.destroy", [session, vdi])
        call("VM.destroy", [session, ref])
PY
}
rpc "$src" offer-nbd

results=()
for round in $(seq "$rounds"); do
  for transport in stream nbd-1 nbd-4; do
    rpc "$dst" empty
    rm -rf state
    cp job.toml round.toml
    case $transport in
      stream) printf 'transport = "stream"\n' >> round.toml ;;
      nbd-*) printf 'cbt = true\ntransport = "nbd"\nnbd_concurrency = %s\n' "${transport#nbd-}" >> round.toml ;;
    esac
    start=$(date +%s.%N)
    out=$("$bin" replicate --job round.toml --json)
    end=$(date +%s.%N)
    line=$(python3 - "$transport" "$start" "$end" "$out" <<'PY'
import json, sys
name, start, end, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
report = out["vms"][0]["report"]
assert report["mode"] == "full", report["mode"]
routes = ",".join(d["transport"] for d in report["disks"])
print(f"{name} {end - start:.3f} {report['bytes_sent']} {routes}")
PY
)
    echo "round $round: $line"
    results+=("$line")
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
times = {}
for line in sys.stdin:
    name, wall, _, _ = line.split()
    times.setdefault(name, []).append(float(wall))
stream = statistics.median(times["stream"])
for name, walls in times.items():
    median = statistics.median(walls)
    print(f"{name:<7} median {median:.3f} s, {stream / median:.2f}x the export path")
'
