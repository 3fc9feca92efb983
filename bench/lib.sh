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

# The three nodes of a bench cluster share this machine's cores: each gets
# a third of them as worker threads (at least one), unless
# KV_WORKER_THREADS says otherwise. On 2 cores one thread a node gave
# 15-25% more writes/s at 256 clients than a thread per core (2026-12-06).
cores=$(nproc)
export KV_WORKER_THREADS="${KV_WORKER_THREADS:-$(( cores / 3 > 0 ? cores / 3 : 1 ))}"
