#!/usr/bin/env bash
# Starts a 3-node kv-server cluster on loopback (data on local disk, fsync on)
# and runs kv-bench with the workloads of ../shared/peers/etcd.md (16-byte
# keys over a key space of 100,000, 100-byte values), printing one table
# beside etcd 3.4's figures measured on the same kind of machine.
#
#   bench/compare-etcd.sh            # 5 s per level
#   BENCH_SECS=10 bench/compare-etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${BENCH_SECS:-5}"
cargo build -q --release --bin kv-server --bin kv-bench
dir="target/bench-cluster"
rm -rf "$dir"
mkdir -p "$dir"
source bench/lib.sh
start_cluster "$dir" --max-connections 4096
sleep 1

# etcd 3.4.23, 3 members on 127.0.0.1, from ../shared/peers/etcd.md (median req/s, p99 ms).
declare -A etcd_rps=([w1]=1225 [w16]=4940 [w64]=8124 [w256]=11547 [r1]=1697 [r16]=5303 [r64]=8565 [r256]=10427)
declare -A etcd_p99=([w1]=1.49 [w16]=7.19 [w64]=17.95 [w256]=46.50 [r1]=2.25 [r16]=11.88 [r64]=25.29 [r256]=70.86)

echo "| workload | clients | kv req/s | etcd req/s | ratio | kv p50 ms | kv p99 ms | etcd p99 ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for kind in w r; do
  extra=()
  if [ "$kind" = r ]; then extra=(--reads 1.0 --keys 1 --preload); else extra=(--reads 0.0 --keys 100000); fi
  for c in 1 16 64 256; do
    # As etcd's benchmark: C clients over min(C, 64) connections.
    conns=$(( c < 64 ? c : 64 )); inflight=$(( c / conns ))
    json=$(target/release/kv-bench --addr "$addrs" --protocol binary --connections "$conns" \
      --inflight "$inflight" --duration "$secs" --key-size 16 --value-size 100 --json "${extra[@]}")
    python3 - "$kind" "$c" "$json" "${etcd_rps[$kind$c]}" "${etcd_p99[$kind$c]}" <<'PY'
import json, sys
kind, c, j, erps, ep99 = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
name = "durable write" if kind == "w" else "linearizable read"
print(f"| {name} | {c} | {j['rps']:,.0f} | {erps:,.0f} | {j['rps']/erps:.2f}x | {j['p50_ms']:.2f} | {j['p99_ms']:.2f} | {ep99:.2f} |")
PY
  done
done
