# Shared by the bench scripts (sourced).

# A free loopback port, never one this script was already given: a port
# freed by the kernel can come back from the next bind, and two nodes on
# one port fail to start.
mkdir -p target
KV_BENCH_PORTS_TAKEN="target/bench-ports.$$"
: >"$KV_BENCH_PORTS_TAKEN"
port() {
  python3 - "$KV_BENCH_PORTS_TAKEN" <<'PY'
import socket, sys
taken_file = sys.argv[1]
taken = set(open(taken_file).read().split())
while True:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = str(s.getsockname()[1])
    s.close()
    if p not in taken:
        open(taken_file, "a").write(p + "\n")
        print(p)
        break
PY
}


# Processes the scripts started, killed when the script exits.
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Starts a 3-node cluster of $KV_SERVER (default target/release/kv-server)
# on loopback, data and logs under DIR (node1..node3), with any further
# kv-server flags. Sets
# `members`, `addrs` (the client addresses, comma-separated), `kv_port[id]`
# (client ports) and `kv_pid[id]`, and adds the pids to `pids`.
start_cluster() { # DIR [kv-server flags...]
  local dir=$1 id p c
  shift
  members=""
  addrs=""
  for id in 1 2 3; do
    p=$(port); c=$(port)
    members="${members:+$members,}$id=127.0.0.1:$p/127.0.0.1:$c"
    addrs="${addrs:+$addrs,}127.0.0.1:$c"
    kv_port[id]=$c
  done
  for id in 1 2 3; do
    RUST_LOG=warn "${KV_SERVER:-target/release/kv-server}" --id "$id" --members "$members" \
      --data-dir "$dir/node$id" "$@" 2>"$dir/node$id.log" &
    pids+=($!)
    kv_pid[id]=$!
  done
}

# Client port of the node whose status says it leads (0 if none yet).
leader_port() {
  local id
  id=$(target/release/kv-cli --addr "$addrs" status --json 2>/dev/null |
    python3 -c 'import json, sys; print(*[n["id"] for n in json.load(sys.stdin) if n["role"] == "leader"][:1])' \
    2>/dev/null || true)
  echo "${kv_port[${id:-0}]:-0}"
}
