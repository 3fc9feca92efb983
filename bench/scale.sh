#!/usr/bin/env bash
# Millions of keys on a 3-node cluster on loopback (data on local disk, fsync
# on, snapshots on as by default): for each N (16-byte keys, 100-byte
# values) it loads N keys, runs SCALE_SECS seconds of writes at 64
# connections x 16 in flight over those keys, and prints one table row:
# load time; leader changes and failed requests during the run; p50, p99,
# p99.9 and max latency inside snapshot windows and outside them; snapshot
# duration and size; peak RSS per node and bytes per key; restart time of
# the whole cluster after kill -9 (to the first answered write); time for a
# follower whose data dir was emptied to be a voter again.
#
#   bench/scale.sh                       # N = 1M, 5M, 10M; 60 s runs
#   SCALE_SIZES="1000000" SCALE_SECS=20 bench/scale.sh
#   SCALE_SERVER_ARGS="--snapshot-entries 50000" bench/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="${SCALE_SIZES:-1000000 5000000 10000000}"
secs="${SCALE_SECS:-60}"
cargo build -q --release --bin kv-server --bin kv-bench
root="target/bench-scale"
source bench/lib.sh
declare -A pid client

start() {
  RUST_LOG=info target/release/kv-server --id "$1" --members "$members" --data-dir "$dir/node$1" \
    --max-connections 4096 ${SCALE_SERVER_ARGS:-} >/dev/null 2>>"$dir/node$1.log" &
  pid[$1]=$!
}
stop_all() { for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop_all EXIT

# One request on a fresh connection; prints the answer line.
ask() { python3 - "$1" "$2" <<'PY'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
try:
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall((sys.argv[2] + "\n").encode())
    print(s.makefile().readline().strip())
except OSError:
    print("down")
PY
}
leader() {
  for id in 1 2 3; do
    case "$(ask "${client[$id]}" "GET probe")" in VALUE*|NOT_FOUND) echo "$id"; return;; esac
  done
}
now() { date +%s.%N; }

echo "| keys | load s | leader changes | failed | p50 ms in / out | p99 ms in / out | p99.9 ms in / out | max ms in / out | snapshot s | snapshot MB | peak RSS MB per node | B/key | x raw | restart s | emptied follower s |"
echo "|---:|---:|---:|---:|---|---|---|---|---:|---:|---|---:|---:|---:|---:|"
for n in $sizes; do
  dir="$root/n$n"
  rm -rf "$dir"; mkdir -p "$dir"
  members=""; addrs=""
  for id in 1 2 3; do
    p=$(port); c=$(port)
    members="${members:+$members,}$id=127.0.0.1:$p/127.0.0.1:$c"
    client[$id]="127.0.0.1:$c"; addrs="${addrs:+$addrs,}127.0.0.1:$c"
  done
  for id in 1 2 3; do start "$id"; done
  sleep 1.5
  t0=$(now)
  target/release/kv-bench --addr "$addrs" --keys "$n" --load "$n" --load-batch 500 \
    --connections 16 --inflight 4 --duration 0 --quiet >"$dir/load.txt"
  load_s=$(echo "$(now) - $t0" | bc)
  sleep 5   # let the snapshots the load set off finish
  mark=$(wc -l <"$dir/node1.log")
  rss_log="$dir/rss.txt"; : >"$rss_log"
  ( while true; do
      for id in 1 2 3; do
        echo "$id $(awk '/VmRSS/ {print $2}' "/proc/${pid[$id]}/status" 2>/dev/null || echo 0)"
      done >>"$rss_log"; sleep 1
    done ) &
  sampler=$!
  run_start=$(date +%s%3N)
  target/release/kv-bench --addr "$addrs" --keys "$n" --connections 64 --inflight 16 \
    --duration "$secs" --seed "$n" --quiet --json --latency-log "$dir/latency.txt" >"$dir/run.json"
  run_end=$(date +%s%3N)
  kill "$sampler" 2>/dev/null || true
  stats=$(python3 bench/scale_stats.py "$dir" "$run_start" "$run_end" "$n")

  # Restart of the whole cluster after kill -9, to the first answered write.
  stop_all; pid=()
  t0=$(now)
  for id in 1 2 3; do start "$id"; done
  until [ "$(ask "${client[1]}" "SET restart-probe 1")" = OK ] ||
        [ "$(ask "${client[2]}" "SET restart-probe 1")" = OK ] ||
        [ "$(ask "${client[3]}" "SET restart-probe 1")" = OK ]; do sleep 0.05; done
  restart_s=$(echo "$(now) - $t0" | bc)

  # A follower whose data dir is emptied, back to voter.
  l=$(leader); f=$(( l % 3 + 1 ))
  kill -9 "${pid[$f]}"; wait "${pid[$f]}" 2>/dev/null || true
  rm -rf "$dir/node$f"
  before=$(grep -c "repaired by the leader" "$dir/node$f.log" || true)
  t0=$(now); start "$f"
  until [ "$(grep -c "repaired by the leader" "$dir/node$f.log" || true)" -gt "$before" ]; do sleep 0.1; done
  emptied_s=$(echo "$(now) - $t0" | bc)
  stop_all; pid=()

  printf "| %s | %.1f | %s | %.1f | %.1f |\n" "$n" "$load_s" "$stats" "$restart_s" "$emptied_s"
done
