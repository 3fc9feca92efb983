#!/usr/bin/env bash
# redis-benchmark against the 3-node kv cluster (its leader, over the Redis
# protocol; every write fsynced on a majority before it is answered) and
# against one redis-server with `appendonly yes`, `appendfsync always`, in
# one run on this machine: SET, GET, INCR and MSET (10 keys), 100-byte
# values over 100,000 random keys, 1/16/64/256 clients, pipelines of 1 and
# 16. Prints one table: requests a second, p50 and p99, the ratio, and the
# servers' CPU time per 1,000 requests (the three kv nodes summed).
# Installs redis-server and redis-tools (redis-benchmark) when missing.
#
#   bench/compare-redis.sh                       # every level
#   BENCH_TESTS=set BENCH_CLIENTS="1 64" bench/compare-redis.sh
#   BENCH_SCALE=2 bench/compare-redis.sh         # twice the requests per level
set -euo pipefail
cd "$(dirname "$0")/.."
tests="${BENCH_TESTS:-set get incr mset}"
clients="${BENCH_CLIENTS:-1 16 64 256}"
pipelines="${BENCH_PIPELINES:-1 16}"
scale="${BENCH_SCALE:-1}"

if ! command -v redis-benchmark >/dev/null || ! command -v redis-server >/dev/null; then
  echo "installing redis-server and redis-tools..." >&2
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools >&2
fi
cargo build -q --release --bin kv-server
source bench/lib.sh
dir="target/bench-redis"
rm -rf "$dir"
mkdir -p "$dir/redis"

start_cluster "$dir" --max-connections 4096
redis_port=$(port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$PWD/$dir/redis" \
  --appendonly yes --appendfsync always --save "" --daemonize no \
  --maxclients 4096 --logfile "$PWD/$dir/redis.log" &
pids+=($!)
redis_pid=$!

# The leader: the node whose INFO says role:master.
leader=""
for _ in $(seq 100); do
  for id in 1 2 3; do
    if redis-cli -p "${kv_port[$id]}" INFO replication 2>/dev/null | grep -q role:master; then
      leader=$id
    fi
  done
  [ -n "$leader" ] && redis-cli -p "$redis_port" PING >/dev/null 2>&1 && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "no kv leader elected; logs in $dir" >&2; exit 1; }

# CPU ticks (user + system) of the given processes, summed.
cpu_ticks() {
  local sum=0
  for p in "$@"; do
    read -r -a f <"/proc/$p/stat"
    sum=$((sum + f[13] + f[14]))
  done
  echo "$sum"
}
hz=$(getconf CLK_TCK)

# One redis-benchmark run: prints "rps p50 p99 cpu_ms_per_1000".
bench() { # port test clients pipeline requests pids...
  local port=$1 test=$2 c=$3 p=$4 n=$5; shift 5
  local before after csv
  before=$(cpu_ticks "$@")
  csv=$(redis-benchmark -h 127.0.0.1 -p "$port" -t "$test" -d 100 -r 100000 \
    -c "$c" -P "$p" -n "$n" --csv 2>/dev/null | tail -1)
  after=$(cpu_ticks "$@")
  python3 - "$csv" "$before" "$after" "$hz" "$n" <<'PY'
import csv, sys
row = next(csv.reader([sys.argv[1]]))
rps, p50, p99 = float(row[1]), float(row[4]), float(row[6])
ticks, hz, n = int(sys.argv[3]) - int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5])
print(f"{rps} {p50} {p99} {ticks / hz * 1000 / (n / 1000):.1f}")
PY
}

echo "kv: 3 nodes, redis-benchmark against the leader (n$leader); redis: one redis-server $(redis-server --version | grep -o 'v=[0-9.]*'), appendfsync always"
echo
echo "| test | clients | pipeline | kv req/s | redis req/s | kv/redis | kv p50 ms | redis p50 ms | kv p99 ms | redis p99 ms | kv CPU ms/1k req | redis CPU ms/1k req |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for t in $tests; do
  for c in $clients; do
    for p in $pipelines; do
      # Enough requests for a few seconds at the expected rate.
      n=$(( scale * 4000 * (c < 4 ? 1 : c / 4) * (p < 4 ? 1 : p / 4) ))
      n=$(( n > 400000 * scale ? 400000 * scale : n ))
      read -r krps kp50 kp99 kcpu < <(bench "${kv_port[$leader]}" "$t" "$c" "$p" "$n" "${kv_pid[1]}" "${kv_pid[2]}" "${kv_pid[3]}")
      read -r rrps rp50 rp99 rcpu < <(bench "$redis_port" "$t" "$c" "$p" "$n" "$redis_pid")
      python3 - "$t" "$c" "$p" "$krps" "$rrps" "$kp50" "$rp50" "$kp99" "$rp99" "$kcpu" "$rcpu" <<'PY'
import sys
t, c, p = sys.argv[1:4]
krps, rrps, kp50, rp50, kp99, rp99, kcpu, rcpu = map(float, sys.argv[4:12])
name = {"set": "SET", "get": "GET", "incr": "INCR", "mset": "MSET (10 keys)"}.get(t, t)
print(f"| {name} | {c} | {p} | {krps:,.0f} | {rrps:,.0f} | {krps / rrps:.2f}x | {kp50:.2f} | {rp50:.2f} | {kp99:.2f} | {rp99:.2f} | {kcpu:.1f} | {rcpu:.1f} |")
PY
    done
  done
done
