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

