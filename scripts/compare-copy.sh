#!/usr/bin/env bash
# Side by side, in one run on the same VDI between two lab hosts on loopback:
#   vhdsync copy-vdi                      (export -> validate -> import, one process)
#   curl GET export | curl PUT import     (a plain relay, Content-Length given to curl)
#   curl GET export -o /dev/null          against  vhdsync export of the same chain
#   curl -T stream PUT import             against  vhdsync apply of the same stream
# (curl -T - would send chunked encoding, which XAPI refuses: the relay blanks it)
# with peak RSS of copy-vdi and of the lab servers. Medians of ROUNDS interleaved runs.
#
#   scripts/compare-copy.sh [DISK_GIB] [WRITTEN_GIB]      (default 4 2)
#   ROUNDS=5 DIR=/some/tmp VHDSYNC=target/release/vhdsync
set -euo pipefail
disk_gib=${1:-4}
written_gib=${2:-2}
rounds=${ROUNDS:-5}
bin=$(realpath "${VHDSYNC:-target/release/vhdsync}")
dir=${DIR:-$(mktemp -d)}
cd "$dir"
rm -rf src dst src.url dst.url
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"/{src,dst,stream.vhd,out.raw}' EXIT

uuid_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["vms"][0]["disks"][0]["vdi"]["uuid"])'; }
src_vdi=$("$bin" lab init --dir src --vm src:${disk_gib}G --json | uuid_of)
# A fresh target VDI for every import, as a replication cycle has (a new VDI or a clone):
# re-importing into a full VDI would also time the copy of its leaf.
sizes=$(for _ in $(seq $((3 * rounds))); do printf '%sG,' "$disk_gib"; done)
mapfile -t dst_vdis < <("$bin" lab init --dir dst --vm "dst:${sizes%,}" --json |
  python3 -c 'import json,sys; [print(d["vdi"]["uuid"]) for d in json.load(sys.stdin)["vms"][0]["disks"]]')
"$bin" lab serve --dir src > src.url 2> src.log & pids+=($!)
"$bin" lab serve --dir dst > dst.url 2> dst.log & pids+=($!)
for f in src.url dst.url; do until [ -s $f ]; do sleep 0.1; done; done
src_url=$(head -1 src.url); dst_url=$(head -1 dst.url)
src=${src_url/:\/\//:\/\/root:lab@}; dst=${dst_url/:\/\//:\/\/root:lab@}
"$bin" lab write --url "$src" --vdi "$src_vdi" --offset 0 --random $((written_gib << 30)) --seed 1 > /dev/null
leaf=$(ls -S src/sr/*.vhd 2>/dev/null | head -1 || true)
export_url="$src_url/export_raw_vdi?vdi=$src_vdi&format=vhd"
import_url() { echo "$dst_url/import_raw_vdi?vdi=${dst_vdis[$1]}&format=vhd"; }
curl -sf -u root:lab "$export_url" -o stream.vhd
len=$(stat -c %s stream.vhd)

time_of() {
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$dir/.t" "$@" > /dev/null
  cat "$dir/.t" >> "$dir/$label"
}
rm -f copy relay curl_get export curl_put apply
for round in $(seq 0 $((rounds - 1))); do
  time_of copy "$bin" copy-vdi --from "$src" --vdi "$src_vdi" --to "$dst" --target-vdi "${dst_vdis[$((3 * round))]}"
  time_of relay sh -c "curl -sf -u root:lab '$export_url' | curl -sf -u root:lab -T - -H 'Transfer-Encoding:' -H 'Content-Length: $len' '$(import_url $((3 * round + 1)))'"
  time_of curl_get curl -sf -u root:lab "$export_url" -o /dev/null
  if [ -n "$leaf" ]; then time_of export sh -c "'$bin' export '$leaf' | cat > /dev/null"; fi
  time_of curl_put curl -sf -u root:lab -T stream.vhd "$(import_url $((3 * round + 2)))"
  rm -f out.raw; time_of apply "$bin" apply stream.vhd out.raw --size $((disk_gib << 30))
done

median() { sort -n -k1 "$dir/$1" | awk '{a[NR]=$1; r[NR]=$2} END {m=int((NR+1)/2); printf "%.3f %d\n", a[m], r[m]}'; }
row() {
  [ -s "$dir/$1" ] && [ -s "$dir/$2" ] || return 0
  read -r ours ours_rss < <(median "$1")
  read -r theirs _ < <(median "$2")
  awk -v l="$3" -v o="$ours" -v t="$theirs" -v r="$ours_rss" -v b="$len" 'BEGIN {
    printf "%-40s %6.2f s vs %6.2f s  = %4.0f%%  %5.0f MB/s  peak RSS %5.1f MiB\n",
      l, o, t, 100 * t / o, b / o / 1e6, r / 1024 }'
}
server_rss() { awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' /proc/"$1"/status; }
echo "VDI ${disk_gib} GiB, ${written_gib} GiB written, stream $len bytes, median of $rounds"
row copy relay "copy-vdi vs curl GET | curl PUT relay"
row curl_get export "curl GET export vs vhdsync export | cat"
row curl_put apply "curl -T import vs vhdsync apply"
echo "lab server peak RSS: source $(server_rss "${pids[0]}"), target $(server_rss "${pids[1]}")"
