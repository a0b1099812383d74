#!/usr/bin/env bash
# Side by side, in one run on the same bytes: `vhdsync export` against `cat`, and
# `vhdsync apply` against `qemu-img convert -f vpc -O raw`, with peak RSS. Medians of ROUNDS
# interleaved runs, page cache warm.
#
#   scripts/compare-stream.sh [DISK_GIB] [ALLOCATED_GIB]      (default 2 1)
#   ROUNDS=5 DIR=/some/tmp VHDSYNC=target/release/vhdsync
set -euo pipefail
disk_gib=${1:-2}
alloc_gib=${2:-1}
rounds=${ROUNDS:-5}
bin=$(realpath "${VHDSYNC:-target/release/vhdsync}")
dir=${DIR:-$(mktemp -d)}
trap 'rm -f "$dir"/{src.raw,disk.vhd,stream.vhd,out.raw}' EXIT
cd "$dir"

# A sparse raw disk whose allocated GiB of random data is spread evenly over 2 MiB blocks.
python3 - "$disk_gib" "$alloc_gib" <<'PY'
import os, sys
disk, alloc = int(sys.argv[1]) << 30, int(sys.argv[2]) << 30
block = 2 << 20
blocks, used = disk // block, alloc // block
with open("src.raw", "wb") as f:
    f.truncate(disk)
    for i in range(used):
        f.seek(i * blocks // used * block)
        f.write(os.urandom(block))
PY
qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on src.raw disk.vhd
rm -f src.raw
"$bin" export disk.vhd -o stream.vhd
size=$(stat -c %s disk.vhd)

# time_of LABEL COMMAND...: appends "seconds rss_kib" to $dir/LABEL.
time_of() {
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$dir/.t" "$@" >/dev/null
  cat "$dir/.t" >> "$dir/$label"
}
rm -f export cat_pipe export_pipe cat apply qemu apply_nosync qemu_sync
for _ in $(seq "$rounds"); do
  cat disk.vhd stream.vhd > /dev/null
  time_of export "$bin" export disk.vhd -o /dev/null
  time_of cat cat stream.vhd
  time_of export_pipe sh -c "'$bin' export disk.vhd | cat > /dev/null"
  time_of cat_pipe sh -c "cat stream.vhd | cat > /dev/null"
  rm -f out.raw; time_of apply "$bin" apply stream.vhd out.raw --size $((disk_gib << 30))
  rm -f out.raw; time_of qemu_sync sh -c "qemu-img convert -f vpc -O raw disk.vhd out.raw && sync out.raw"
  rm -f out.raw; time_of apply_nosync "$bin" apply --no-sync stream.vhd out.raw --size $((disk_gib << 30))
  rm -f out.raw; time_of qemu qemu-img convert -f vpc -O raw disk.vhd out.raw
done

median() { sort -n -k1 "$dir/$1" | awk '{a[NR]=$1; r[NR]=$2} END {m=int((NR+1)/2); printf "%.3f %d\n", a[m], r[m]}'; }
row() {
  read -r ours ours_rss < <(median "$1")
  read -r theirs _ < <(median "$2")
  awk -v l="$3" -v o="$ours" -v t="$theirs" -v r="$ours_rss" -v b="$size" 'BEGIN {
    if (o < 0.01) { o = 0.01; bound = "> " } else { bound = "" }
    printf "%-36s %6.2f s vs %6.2f s  ratio %s%5.2fx  %s%5.0f MB/s  peak RSS %5.1f MiB\n",
      l, o, t, bound, t / o, bound, b / o / 1e6, r / 1024 }'
}
echo "disk ${disk_gib} GiB, ${alloc_gib} GiB allocated, stream $(stat -c %s stream.vhd) bytes, median of $rounds"
# write(2) to /dev/null never reads the mapped pages, so this row times the metadata walk
# only; the pipe row below moves every byte and is the one to judge.
row export cat "export -> /dev/null vs cat"
row export_pipe cat_pipe "export | cat vs cat | cat"
row apply qemu_sync "apply vs qemu-img convert + sync"
row apply_nosync qemu "apply --no-sync vs qemu-img convert"
