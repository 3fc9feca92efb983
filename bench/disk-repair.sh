#!/usr/bin/env bash
# How long a follower takes to be a voter again after its storage is damaged,
# in a 3-node cluster on loopback whose log has taken REPAIR_WRITES writes
# (default 1,000,000; 100-byte values over 100,000 keys, snapshots every
# 100,000 entries as by default):
#   1. a byte flipped in the middle of its newest WAL segment;
#   2. its data directory emptied (a replaced disk).
# Each time is from the restart of the process to its "repaired by the
# leader" log line; every acknowledged write is then read back from a
# cluster of the leader and the repaired node alone.
#
#   bench/disk-repair.sh
#   REPAIR_WRITES=200000 bench/disk-repair.sh
set -euo pipefail
cd "$(dirname "$0")/.."
writes="${REPAIR_WRITES:-1000000}"
cargo build -q --release --bin kv-server --bin kv-bench
dir="target/bench-repair"
rm -rf "$dir"
mkdir -p "$dir"
source bench/lib.sh
members=""
declare -A client
for id in 1 2 3; do
  p=$(port); c=$(port)
  members="${members:+$members,}$id=127.0.0.1:$p/127.0.0.1:$c"
  client[$id]="127.0.0.1:$c"
done
addrs="${client[1]},${client[2]},${client[3]}"
declare -A pid
start() {
  RUST_LOG=info target/release/kv-server --id "$1" --members "$members" \
    --data-dir "$dir/node$1" >/dev/null 2>>"$dir/node$1.log" &
  pid[$1]=$!
}
cleanup() { for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
for id in 1 2 3; do start "$id"; done
sleep 1

# Asks one node for a key: its first answer word (REDIRECT on a follower).
ask() { python3 - "$1" "$2" <<'PY'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=5)
s.sendall(("GET %s\n" % sys.argv[2]).encode())
print(s.makefile().readline().strip())
PY
}
leader() {
  for id in 1 2 3; do
    [ -n "${pid[$id]:-}" ] || continue
    case "$(ask "${client[$id]}" probe 2>/dev/null || true)" in
      VALUE*|NOT_FOUND) echo "$id"; return;;
    esac
  done
}

echo "loading $writes writes..."
target/release/kv-bench --addr "$addrs" --connections 32 --inflight 32 \
  --count "$writes" --keys 100000 --value-size 100 >"$dir/load.txt" 2>&1
tail -n 3 "$dir/load.txt"
L=$(leader)
F=$(( L % 3 + 1 ))
echo "leader n$L; damaging follower n$F"

# Restarts n$F and sets `took` to the seconds until it is a voter again.
time_to_voter() {
  local log="$dir/node$F.log" before t0
  before=$(grep -c "repaired by the leader" "$log" || true)
  t0=$(date +%s.%N)
  start "$F"
  until [ "$(grep -c "repaired by the leader" "$log" || true)" -gt "$before" ]; do
    sleep 0.02
    if [ "$(echo "$(date +%s.%N) - $t0 > 120" | bc)" = 1 ]; then took="timeout"; return; fi
  done
  took=$(echo "$(date +%s.%N) - $t0" | bc)
}

kill -9 "${pid[$F]}"; wait "${pid[$F]}" 2>/dev/null || true
newest=$(ls "$dir/node$F"/wal-*.log | sort | tail -n 1)
python3 - "$newest" <<'PY'
import sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
data[len(data) // 2] ^= 0x55
open(path, "wb").write(data)
PY
target/release/kv-server check --data-dir "$dir/node$F" >"$dir/check-damaged.txt" || true
entries=$(grep '^log' "$dir/check-damaged.txt" | sed 's/^log *//')
time_to_voter; rot=$took

kill -9 "${pid[$F]}"; wait "${pid[$F]}" 2>/dev/null || true
rm -rf "$dir/node$F"
time_to_voter; wiped=$took

# Only the leader and the repaired follower: every write must read back.
O=$(( F % 3 + 1 )); [ "$O" = "$L" ] && O=$(( O % 3 + 1 ))
kill -9 "${pid[$O]}"; unset "pid[$O]"
missing=$(python3 - "$addrs" <<'PY'
import socket, sys
addrs = sys.argv[1].split(",")
def get(key):
    for _ in range(200):
        for a in addrs:
            host, port = a.rsplit(":", 1)
            try:
                s = socket.create_connection((host, int(port)), timeout=2)
                s.sendall(("GET %s\n" % key).encode())
                r = s.makefile().readline().strip()
            except OSError:
                continue
            if r.startswith("VALUE") or r == "NOT_FOUND":
                return r
    return "UNREACHABLE"
keys = [("k%015d" % i) for i in range(0, 100000, 997)]
print(sum(1 for k in keys if not get(k).startswith("VALUE")))
PY
)

echo
echo "| damage (follower of a cluster after $writes writes) | time to voter again (s) |"
echo "|---|---:|"
echo "| byte flipped mid newest WAL segment ($entries) | $rot |"
echo "| data directory emptied | $wiped |"
echo
echo "keys sampled from the leader and the repaired node alone, not found: $missing"
