#!/usr/bin/env bash
# Where a request's time goes between threads: a 3-node cluster on
# loopback, kv-bench at a few connection counts, and for each node the
# context switches and CPU time its threads spent per request (from
# /proc/<pid>/task/*/status and stat, before and after). On a 2-vCPU
# virtual machine a thread wake-up costs tens of microseconds of
# hypervisor time, so switches per request is the figure to cut.
#
#   bench/switches.sh                            # writes at 1, 16 and 64 connections
#   BENCH_CONNECTIONS="1" BENCH_READS=1 bench/switches.sh
#   KV_SERVER_ARGS="--worker-threads 0" bench/switches.sh   # a node on one thread
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${BENCH_SECS:-4}"
connections="${BENCH_CONNECTIONS:-1 16 64}"
reads="${BENCH_READS:-0}"
cargo build -q --release --bin kv-server --bin kv-bench --bin kv-cli
source bench/lib.sh
dir="target/bench-switches"
rm -rf "$dir"
mkdir -p "$dir"
# shellcheck disable=SC2086 # KV_SERVER_ARGS is a list of flags
start_cluster "$dir" ${KV_SERVER_ARGS:-}
sleep 1.5

# "pid switches cpu_ticks" for each node, its threads summed.
sample() {
  for p in "${pids[@]}"; do
    local cs=0 ticks=0
    for t in /proc/"$p"/task/*; do
      cs=$((cs + $(awk '/^(non)?voluntary_ctxt_switches/ {s += $2} END {print s}' "$t/status")))
      read -r -a f <"$t/stat"
      ticks=$((ticks + f[13] + f[14]))
    done
    echo "$p $cs $ticks"
  done
}

echo "| connections | reads | req/s | p50 ms | node | role | switches / req | CPU µs / req |"
echo "|---:|---:|---:|---:|---|---|---:|---:|"
for c in $connections; do
  sample >"$dir/before"
  target/release/kv-bench --addr "$addrs" --connections "$c" --reads "$reads" \
    --duration "$secs" --json --quiet >"$dir/bench.json" 2>/dev/null
  sample >"$dir/after"
  leader=$(target/release/kv-cli --addr "$addrs" status --json 2>/dev/null |
    python3 -c 'import json, sys; print(*[n["id"] for n in json.load(sys.stdin) if n["role"] == "leader"][:1])' \
    2>/dev/null || echo 0)
  python3 - "$c" "$reads" "$dir/bench.json" "$dir/before" "$dir/after" "$(getconf CLK_TCK)" "$leader" <<'PY'
import json, sys
c, reads, bench, before, after, hz, leader = sys.argv[1:8]
j = json.load(open(bench))
n = max(j["ok"], 1)
rows = lambda f: [list(map(int, line.split())) for line in open(f)]
for i, ((pid, cs0, t0), (_, cs1, t1)) in enumerate(zip(rows(before), rows(after)), 1):
    role = "leader" if str(i) == leader else "follower"
    cpu_us = (t1 - t0) / int(hz) * 1e6 / n
    print(f"| {c} | {reads} | {j['rps']:,.0f} | {j['p50_ms']:.2f} | n{i} | {role} | {(cs1 - cs0) / n:.1f} | {cpu_us:.0f} |")
PY
done
