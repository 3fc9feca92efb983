#!/usr/bin/env bash
# kv against etcd in one run on this machine: a 3-node kv-server cluster and
# a 3-member etcd 3.4 cluster (Debian's etcd-server, default tuning), each on
# loopback with its data on the local disk, fsync on, one after the other
# (never both running), with the workloads of ../shared/peers/etcd.md:
# durable writes of 100-byte values over 100,000 16-byte keys sent to the
# leader, and linearizable reads of one key spread over the three nodes, at
# 1, 16, 64 and 256 clients over min(clients, 64) connections. kv is driven
# by kv-bench (binary protocol); etcd by bench/etcd-load, a small Go client
# doing what etcd's `benchmark put` / `range --consistency=l` do (etcd's own
# tool needs Go modules this machine cannot download; Debian packages its
# client library). Installs etcd-server, golang-go and golang-etcd-server-dev
# when missing. Prints one table with the ratio kv/etcd per level.
#
#   bench/compare-etcd.sh            # 5 s per level
#   BENCH_SECS=10 BENCH_CLIENTS="1 64" bench/compare-etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${BENCH_SECS:-5}"
clients="${BENCH_CLIENTS:-1 16 64 256}"

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v go >/dev/null || missing+=(golang-go)
[ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3 ] || missing+=(golang-etcd-server-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}..." >&2
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
fi
cargo build -q --release --bin kv-server --bin kv-bench
mkdir -p target/go
(cd bench/etcd-load && GO111MODULE=off GOPATH="$PWD/../../target/go:/usr/share/gocode" \
  GOCACHE="$PWD/../../target/go/cache" go build -o ../../target/etcd-load .)
source bench/lib.sh
dir="target/bench-etcd"
rm -rf "$dir"
mkdir -p "$dir"

# Results, one line each: "system kind clients rps p50 p99".
results="$dir/results"
: >"$results"
record() { # system kind clients json
  python3 - "$@" >>"$results" <<'PY'
import json, sys
system, kind, c, j = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if j["rps"] <= 0:
    sys.exit(f"{system} {kind} at {c} clients: no request succeeded ({sys.argv[4]})")
print(system, kind, c, j["rps"], j["p50_ms"], j["p99_ms"])
PY
}
conns_for() { echo $(($1 < 64 ? $1 : 64)); }

# kv: writes to the leader (kv-bench finds it), reads over all three nodes.
mkdir -p "$dir/kv"
start_cluster "$dir/kv" --max-connections 4096
sleep 1.5
for c in $clients; do
  conns=$(conns_for "$c")
  record kv w "$c" "$(target/release/kv-bench --addr "$addrs" --protocol binary --connections "$conns" \
    --inflight $((c / conns)) --duration "$secs" --key-size 16 --value-size 100 --reads 0.0 --keys 100000 --json --quiet)"
done
for c in $clients; do
  conns=$(conns_for "$c")
  record kv r "$c" "$(target/release/kv-bench --addr "$addrs" --protocol binary --connections "$conns" \
    --inflight $((c / conns)) --duration "$secs" --key-size 16 --value-size 100 --reads 1.0 --keys 1 --preload --json --quiet)"
done
cleanup
wait 2>/dev/null || true
pids=()

# etcd: 3 members, fresh data dirs.
initial=""
endpoints=""
for id in 1 2 3; do
  peer[id]=$(port); client[id]=$(port)
  initial="${initial:+$initial,}e$id=http://127.0.0.1:${peer[id]}"
  endpoints="${endpoints:+$endpoints,}127.0.0.1:${client[id]}"
done
for id in 1 2 3; do
  etcd --name "e$id" --data-dir "$dir/etcd$id" \
    --listen-client-urls "http://127.0.0.1:${client[id]}" --advertise-client-urls "http://127.0.0.1:${client[id]}" \
    --listen-peer-urls "http://127.0.0.1:${peer[id]}" --initial-advertise-peer-urls "http://127.0.0.1:${peer[id]}" \
    --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token bench \
    >"$dir/etcd$id.log" 2>&1 &
  pids+=($!)
done
leader=""
for _ in $(seq 1 50); do
  leader=$(target/etcd-load -endpoints "$endpoints" leader 2>/dev/null) && break
  sleep 0.2
done
[ -n "$leader" ] || { echo "etcd elected no leader; see $dir/etcd*.log" >&2; exit 1; }
for c in $clients; do
  conns=$(conns_for "$c")
  record etcd w "$c" "$(target/etcd-load -endpoints "$leader" -clients "$c" -conns "$conns" -duration "${secs}s" put)"
done
for c in $clients; do
  conns=$(conns_for "$c")
  record etcd r "$c" "$(target/etcd-load -endpoints "$endpoints" -clients "$c" -conns "$conns" -duration "${secs}s" range)"
done

python3 - "$results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    system, kind, c, rps, p50, p99 = line.split()
    rows[(system, kind, int(c))] = (float(rps), float(p50), float(p99))
print("| workload | clients | kv req/s | etcd req/s | kv/etcd | kv p50 ms | etcd p50 ms | kv p99 ms | etcd p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for kind, name in (("w", "durable write"), ("r", "linearizable read")):
    for c in sorted({c for (_, k, c) in rows if k == kind}):
        kv, etcd = rows[("kv", kind, c)], rows[("etcd", kind, c)]
        print(f"| {name} | {c} | {kv[0]:,.0f} | {etcd[0]:,.0f} | {kv[0] / etcd[0]:.2f}x | "
              f"{kv[1]:.2f} | {etcd[1]:.2f} | {kv[2]:.2f} | {etcd[2]:.2f} |")
PY
