#!/usr/bin/env bash
# seed-export against the same work done by standard tools, in one run on the same lab VDI:
# `vhdsync seed-export` (export, validate, zstd level 3 in CRC'd frames, SHA-256 of stream
# and file, write, fsync) next to `curl export_raw_vdi | zstd -3` (without and with an fsync
# of the output, as seed-export makes its files durable) and `zstd -3` alone on the saved
# stream (page cache warm). The disk is half random data, half allocated zero blocks. Medians of ROUNDS runs.
#
#   scripts/compare-seed.sh [DISK_GIB]         (default 2)
#   ROUNDS=3 DIR=/some/tmp VHDSYNC=target/release/vhdsync
set -euo pipefail
disk_gib=${1:-2}
rounds=${ROUNDS:-3}
bin=$(realpath "${VHDSYNC:-target/release/vhdsync}")
dir=${DIR:-$(mktemp -d)}
cd "$dir"
rm -rf src tgt seed stream.vhd curl.zst
servers=()
trap 'for s in "${servers[@]}"; do kill "$s"; done; rm -rf "$dir"/{src,tgt,seed,stream.vhd,curl.zst}' EXIT

"$bin" lab init --dir src --vm "web01:${disk_gib}G" --json > src.json
"$bin" lab init --dir tgt --json > tgt.json
field() { python3 -c "import json,sys; d=json.load(open('$1')); print(eval('d'+sys.argv[1]))" "$2"; }
vm=$(field src.json "['vms'][0]['uuid']")
vdi=$(field src.json "['vms'][0]['disks'][0]['vdi']['uuid']")
sr=$(field tgt.json "['sr']['uuid']")
for lab in src tgt; do
  "$bin" lab serve --dir "$lab" > "$lab.out" 2> "$lab.err" &
  servers+=($!)
  while [ ! -s "$lab.out" ]; do sleep 0.05; done
done
src_url=$(head -1 src.out)
tgt_url=$(head -1 tgt.out)
admin=${src_url/:\/\//://root:lab@}
half=$(( (disk_gib << 30) / 2 ))
"$bin" lab write --url "$admin" --vdi "$vdi" --offset 0 --random "$half" --seed 1 > /dev/null
"$bin" lab write --url "$admin" --vdi "$vdi" --offset "$half" --zero "$half" > /dev/null
cat > job.toml <<JOB
name = "seed-bench"
source = "$admin"
target = "${tgt_url/:\/\//://root:lab@}"
target_sr = "$sr"
vms = ["$vm"]
retention = 1
state_dir = "$dir/state"
JOB
curl -sf -u root:lab -o stream.vhd "$src_url/export_raw_vdi?vdi=$vdi&format=vhd"

time_of() {
  local label=$1; shift
  /usr/bin/time -f "%e" -o "$dir/.t" "$@" > /dev/null
  cat "$dir/.t" >> "$dir/$label"
}
rm -f seed_export curl_zstd curl_zstd_sync zstd_file
for _ in $(seq "$rounds"); do
  cat stream.vhd > /dev/null
  rm -rf seed
  time_of seed_export "$bin" seed-export --job job.toml --vm "$vm" -o seed
  time_of curl_zstd sh -c "curl -sf -u root:lab '$src_url/export_raw_vdi?vdi=$vdi&format=vhd' | zstd -3 -q -c > curl.zst"
  time_of curl_zstd_sync sh -c "curl -sf -u root:lab '$src_url/export_raw_vdi?vdi=$vdi&format=vhd' | zstd -3 -q -f -o curl.zst && sync curl.zst"
  time_of zstd_file sh -c "zstd -3 -q -c stream.vhd > /dev/null"
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
stream=$(stat -c %s stream.vhd)
seed_file=$(stat -c %s seed/disk-0.seed)
zst=$(stat -c %s curl.zst)
echo "disk ${disk_gib} GiB, half random, half zero blocks: VHD stream $stream bytes"
echo "seed file (zstd -3, 4 MiB frames): $seed_file bytes; zstd -3 of the stream: $zst bytes"
for label in seed_export curl_zstd curl_zstd_sync zstd_file; do
  t=$(median "$label")
  printf '%-15s %6.2f s  %7.1f MB/s of stream  (runs: %s)\n' "$label" "$t" \
    "$(python3 -c "print($stream / $t / 1e6)")" "$(tr '\n' ' ' < "$label")"
done
