#!/usr/bin/env bash
# ReadIndex against lease reads: two 3-node clusters on loopback, one with
# --read-mode index (the default) and one with --read-mode lease, measured
# by kv-bench in the same run, level by level, alternating (16-byte keys,
# 100-byte values; linearizable reads of one key, and a 90/10 read/write
# mix over 100,000 keys, at 1, 16 and 64 connections). Prints one table
# with the lease/index ratio.
#
#   bench/read-modes.sh                 # 5 s per measurement
#   BENCH_SECS=10 bench/read-modes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${BENCH_SECS:-5}"
cargo build -q --release --bin kv-server --bin kv-bench
root="target/bench-read-modes"
rm -rf "$root"
mkdir -p "$root"
source bench/lib.sh
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
declare -A addrs
for mode in index lease; do
  members=""; list=""
  for id in 1 2 3; do
    p=$(port); c=$(port)
    members="${members:+$members,}$id=127.0.0.1:$p/127.0.0.1:$c"
    list="${list:+$list,}127.0.0.1:$c"
  done
  addrs[$mode]="$list"
  for id in 1 2 3; do
    RUST_LOG=warn target/release/kv-server --id "$id" --members "$members" \
      --data-dir "$root/$mode/node$id" --read-mode "$mode" 2>"$root/$mode-node$id.log" &
    pids+=($!)
  done
done
sleep 1

bench() { # mode, extra kv-bench args...
  local mode=$1; shift
  target/release/kv-bench --addr "${addrs[$mode]}" --protocol binary \
    --key-size 16 --value-size 100 --json "$@"
}
for mode in index lease; do bench "$mode" --keys 1 --count 10 >/dev/null; done

echo "| workload | connections | index req/s | lease req/s | lease/index | index p50 ms | lease p50 ms | index p99 ms | lease p99 ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for kind in r m; do
  extra=()
  if [ "$kind" = r ]; then extra=(--reads 1.0 --keys 1); else extra=(--reads 0.9 --keys 100000); fi
  for c in 1 16 64; do
    index=$(bench index --duration "$secs" --connections "$c" "${extra[@]}")
    lease=$(bench lease --duration "$secs" --connections "$c" "${extra[@]}")
    python3 - "$kind" "$c" "$index" "$lease" <<'PY'
import json, sys
kind, c, i, l = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
name = "linearizable read" if kind == "r" else "90% reads, 10% writes"
for j in (i, l):
    assert j["errors"] == 0, j
print(f"| {name} | {c} | {i['rps']:,.0f} | {l['rps']:,.0f} | {l['rps']/i['rps']:.2f} | {i['p50_ms']:.2f} | {l['p50_ms']:.2f} | {i['p99_ms']:.2f} | {l['p99_ms']:.2f} |")
PY
  done
done
