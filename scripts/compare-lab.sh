#!/usr/bin/env bash
# The lab host's data plane against the CLI, in one run on the same VDI: `curl` exporting
# over loopback against `vhdsync export` of the VDI's chain, and `curl -T` importing that
# stream into a fresh VDI against `vhdsync apply` of it into a VHD file, with the server's
# peak RSS. Medians of ROUNDS interleaved runs, page cache warm.
#
#   scripts/compare-lab.sh [DISK_GIB] [ALLOCATED_GIB]      (default 4 2)
#   ROUNDS=5 DIR=/some/tmp VHDSYNC=target/release/vhdsync
set -euo pipefail
disk_gib=${1:-4}
alloc_gib=${2:-2}
rounds=${ROUNDS:-5}
bin=$(realpath "${VHDSYNC:-target/release/vhdsync}")
dir=${DIR:-$(mktemp -d)}
cd "$dir"
rm -rf lab stream.vhd out.vhd serve.out
server=
trap '[ -n "$server" ] && kill "$server"; rm -rf "$dir"/{lab,stream.vhd,out.vhd,body}' EXIT

"$bin" lab init --dir lab --vm "src:${disk_gib}G" --json > init.json
src=$(python3 -c "import json; print(json.load(open('init.json'))['vms'][0]['disks'][0]['vdi']['uuid'])")
"$bin" lab serve --dir lab > serve.out 2> serve.err &
server=$!
while [ ! -s serve.out ]; do sleep 0.05; done
url=$(head -1 serve.out)
admin=${url/:\/\//://root:lab@}
# The allocated data sits in the middle of the disk, written as a guest would.
"$bin" lab write --url "$admin" --vdi "$src" --offset "$(( (disk_gib - alloc_gib) / 2 ))G" \
  --random "${alloc_gib}G" --seed 1 > /dev/null
leaf=lab/sr/$(python3 -c "import json; print(json.load(open('lab/sr/sr.json'))['vdis']['$src']['leaf'])")
curl -sf -u root:lab -o stream.vhd "$url/export_raw_vdi?vdi=$src&format=vhd"

# rpc METHOD ARGS...: a JSON-RPC call as root; prints the result.
rpc() {
  python3 - "$url" "$@" <<'PY'
import json, sys, urllib.request
url, method, args = sys.argv[1], sys.argv[2], sys.argv[3:]
def call(m, *p):
    body = json.dumps({"jsonrpc": "2.0", "method": m, "params": list(p), "id": 1}).encode()
    req = urllib.request.Request(url + "/jsonrpc", body, {"content-type": "application/json"})
    answer = json.load(urllib.request.urlopen(req))
    if "error" in answer: sys.exit(f"{m}: {answer['error']}")
    return answer["result"]
s = call("session.login_with_password", "root", "lab")
if method == "new":  # a fresh VDI of the source's size; prints its uuid
    sr = call("SR.get_all", s)[0]
    ref = call("VDI.create", s, {"SR": sr, "virtual_size": int(args[0]), "name_label": "import",
        "type": "user", "sharable": False, "read_only": False, "other_config": {}})
    print(call("VDI.get_uuid", s, ref))
elif method == "destroy":
    call("VDI.destroy", s, call("VDI.get_by_uuid", s, args[0]))
PY
}

# time_of LABEL COMMAND...: appends the seconds to $dir/LABEL.
time_of() {
  local label=$1; shift
  /usr/bin/time -f "%e" -o "$dir/.t" "$@" > /dev/null
  cat "$dir/.t" >> "$dir/$label"
}
rm -f export_null export_pipe curl_export apply curl_import
for round in $(seq "$rounds"); do
  cat "$leaf" stream.vhd > /dev/null
  time_of export_null "$bin" export "$leaf" -o /dev/null
  time_of export_pipe sh -c "'$bin' export '$leaf' | cat > /dev/null"
  time_of curl_export curl -sf -o /dev/null -u root:lab "$url/export_raw_vdi?vdi=$src&format=vhd"
  rm -f out.vhd; time_of apply "$bin" apply stream.vhd out.vhd
  target=$(rpc new $((disk_gib << 30)))
  # The body of a successful import is empty; a failure would be an embedded 500.
  time_of curl_import curl -sf -o body -u root:lab -T stream.vhd \
    "$url/import_raw_vdi?vdi=$target&format=vhd"
  [ ! -s body ] || { cat body; exit 1; }
  if [ "$round" = "$rounds" ]; then
    [ "$("$bin" lab hash --url "$admin" --vdi "$target")" = "$("$bin" lab hash --url "$admin" --vdi "$src")" ] \
      || { echo "the imported VDI differs from the source"; exit 1; }
  fi
  rpc destroy "$target"
done
peak=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")

median() { sort -n "$dir/$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bytes=$(stat -c %s stream.vhd)
row() {
  awk -v l="$3" -v o="$(median "$1")" -v t="$(median "$2")" -v b="$bytes" 'BEGIN {
    if (t < 0.01) t = 0.01
    printf "%-40s %6.2f s vs %6.2f s  %5.0f%% of its throughput  %5.0f MB/s\n",
      l, o, t, 100 * t / o, b / o / 1e6 }'
}
echo "VDI ${disk_gib} GiB, ${alloc_gib} GiB allocated, stream $bytes bytes, median of $rounds"
row curl_export export_pipe "curl export vs export | cat"
# write(2) to /dev/null never reads the mapped pages: this row times the metadata walk only.
row curl_export export_null "curl export vs export -o /dev/null"
row curl_import apply "curl -T import vs apply to a .vhd"
echo "lab serve peak RSS $((peak / 1024)) MiB"
