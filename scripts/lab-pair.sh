# Sourced by the cycle scripts: two `vhdsync lab serve` hosts in the current directory and a
# job between them, stopped and removed on exit.
#
#   lab_pair VM_SPEC RETENTION JOB_NAME    (VM_SPEC as `lab init --vm`, e.g. web01:256M,256M)
#
# Needs $bin (the vhdsync binary) and $dir (the current directory). Sets $init (the source's
# `lab init --json` report), $vm, $src and $dst (URLs with root:lab credentials), and writes
# job.toml.
#
#   cycle LABEL      one `vhdsync replicate` of the job: mode, bytes, blocks, calls, wall, rate
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
lab_pair() {
  rm -rf src dst state src.url dst.url
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"/{src,dst,state}' EXIT
  init=$("$bin" lab init --dir src --vm "$1" --json)
  vm=$(echo "$init" | json 'd["vms"][0]["uuid"]')
  local sr
  sr=$("$bin" lab init --dir dst --json | json 'd["sr"]["uuid"]')
  "$bin" lab serve --dir src > src.url 2> src.log & pids+=($!)
  "$bin" lab serve --dir dst > dst.url 2> dst.log & pids+=($!)
  local f
  for f in src.url dst.url; do until [ -s $f ]; do sleep 0.05; done; done
  src=$(head -1 src.url); src=${src/:\/\//://root:lab@}
  dst=$(head -1 dst.url); dst=${dst/:\/\//://root:lab@}
  cat > job.toml <<TOML
name = "$3"
source = "$src"
target = "$dst"
target_sr = "$sr"
vms = ["$vm"]
retention = $2
state_dir = "$dir/state"
TOML
}

cycle() {
  local start end out
  start=$(date +%s.%N)
  out=$("$bin" replicate --job job.toml --json)
  end=$(date +%s.%N)
  python3 - "$1" "$start" "$end" "$out" <<'PY'
import json, sys
label, start, end, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
r = out["vms"][0]["report"]
blocks = sum(d["blocks"] for d in r["disks"])
wall = end - start
print(f"{label:<10} {r['mode']:<6} sent {r['bytes_sent']:>11} B ({blocks:>4} blocks)  rpc calls {out['rpc_calls']:>4}  wall {wall:6.3f} s  {r['bytes_sent'] / wall / 1e6:6.0f} MB/s")
PY
}
