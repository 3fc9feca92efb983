#!/usr/bin/env bash
# A/B of kv-server binaries (two commits, say) in one run: for each round
# and each binary, a fresh 3-node cluster on loopback and the same
# workloads, alternating, then the average of each workload per binary:
# requests a second, p50, p99 and the servers' CPU per 1,000 requests.
#
#   bench/ab.sh old=/tmp/kv-server-old new=target/release/kv-server
#   AB_ROUNDS=3 AB_SECS=5 AB_KV="1:1:0 64:1:0 16:16:0" bench/ab.sh old=... new=...
#   AB_TOOL=redis AB_REDIS="set:64:1 get:16:16" AB_TARGET=follower bench/ab.sh old=... new=...
#
# kv-bench workloads (AB_KV) are connections:inflight:reads; redis-benchmark
# ones (AB_TOOL=redis, AB_REDIS) are test:clients:pipeline, 100-byte values
# over 100,000 keys, sent to the leader or (AB_TARGET=follower) a follower.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,14p "$0" >&2; exit 2; }
rounds="${AB_ROUNDS:-2}"
secs="${AB_SECS:-4}"
tool="${AB_TOOL:-kv}"
cargo build -q --release --bin kv-bench --bin kv-cli
source bench/lib.sh
dir="target/bench-ab"
results="$dir/results"
rm -rf "$dir"
mkdir -p "$dir"
hz=$(getconf CLK_TCK)
cpu_ticks() {
  local sum=0 p f
  for p in "$@"; do
    read -r -a f <"/proc/$p/stat"
    sum=$((sum + f[13] + f[14]))
  done
  echo "$sum"
}

# One measurement: prints "requests rps p50 p99".
measure() { # workload
  if [ "$tool" = kv ]; then
    local c i r
    IFS=: read -r c i r <<<"$1"
    target/release/kv-bench --addr "$addrs" --connections "$c" --inflight "$i" --reads "$r" \
      --duration "$secs" --json --quiet 2>/dev/null |
      python3 -c 'import json, sys; j = json.load(sys.stdin); print(j["ok"], j["rps"], j["p50_ms"], j["p99_ms"])'
  else
    local t c p n port
    IFS=: read -r t c p <<<"$1"
    port=$(leader_port)
    if [ "${AB_TARGET:-leader}" = follower ]; then
      for id in 1 2 3; do [ "${kv_port[id]}" != "$port" ] && { port=${kv_port[id]}; break; }; done
    fi
    n=$((4000 * (c < 4 ? 1 : c / 4) * (p < 4 ? 1 : p / 4)))
    n=$((n > 300000 ? 300000 : n))
    redis-benchmark -h 127.0.0.1 -p "$port" -t "$t" -d 100 -r 100000 -c "$c" -P "$p" -n "$n" --csv 2>/dev/null |
      tail -1 | python3 -c 'import csv, sys; r = next(csv.reader(sys.stdin)); print(sys.argv[1], r[1], r[4], r[6])' "$n"
  fi
}

workloads="${AB_KV:-1:1:0 16:1:0 64:1:0 256:1:0 16:16:0 16:1:1}"
[ "$tool" = kv ] || workloads="${AB_REDIS:-set:1:1 set:64:1 set:256:1 set:16:16 get:16:16}"
for round in $(seq "$rounds"); do
  for arm in "$@"; do
    label=${arm%%=*}
    pids=()
    mkdir -p "$dir/$label-$round"
    KV_SERVER=${arm#*=} start_cluster "$dir/$label-$round" --max-connections 4096
    for _ in $(seq 50); do [ "$(leader_port)" != 0 ] && break; sleep 0.1; done
    [ "$(leader_port)" != 0 ] || { echo "no leader with $arm; logs in $dir/$label-$round" >&2; exit 1; }
    for w in $workloads; do
      before=$(cpu_ticks "${kv_pid[@]}")
      read -r n rps p50 p99 < <(measure "$w")
      after=$(cpu_ticks "${kv_pid[@]}")
      echo "$w $label $rps $p50 $p99 $(((after - before) * 1000000 / hz / (n > 0 ? n : 1)))" >>"$results"
    done
    cleanup
    wait 2>/dev/null || true
  done
done
python3 - "$results" <<'PY'
import collections, sys
rows = collections.defaultdict(list)
workloads, labels = [], []
for line in open(sys.argv[1]):
    w, label, rps, p50, p99, cpu = line.split()
    workloads += [w] if w not in workloads else []
    labels += [label] if label not in labels else []
    rows[(w, label)].append((float(rps), float(p50), float(p99), float(cpu)))
print("| workload | binary | rounds | req/s | p50 ms | p99 ms | CPU ms/1k req |")
print("|---|---|---:|---:|---:|---:|---:|")
for w in workloads:
    for label in labels:
        v = rows[(w, label)]
        rps, p50, p99, cpu = (sum(x[i] for x in v) / len(v) for i in range(4))
        print(f"| {w} | {label} | {len(v)} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.1f} |")
PY
