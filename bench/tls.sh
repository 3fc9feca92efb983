#!/usr/bin/env bash
# What mutual TLS costs: two 3-node clusters on loopback, one plain and one
# with mutual TLS on both ports (throwaway certificates from
# `kv-server dev-certs`), measured by kv-bench in the same run, level by
# level, alternating (16-byte keys over 100,000, 100-byte values; durable
# writes and linearizable reads at 1 and 64 connections). Prints one
# table with the TLS/plain ratio.
#
#   bench/tls.sh                 # 5 s per measurement
#   BENCH_SECS=10 bench/tls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${BENCH_SECS:-5}"
cargo build -q --release --bin kv-server --bin kv-bench
root="target/bench-tls"
rm -rf "$root"
mkdir -p "$root"
target/release/kv-server dev-certs --out "$root/certs" --nodes 3 >/dev/null
source bench/lib.sh
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
declare -A addrs
for mode in plain tls; do
  members=""; list=""
  for id in 1 2 3; do
    p=$(port); c=$(port)
    members="${members:+$members,}$id=127.0.0.1:$p/127.0.0.1:$c"
    list="${list:+$list,}127.0.0.1:$c"
  done
  addrs[$mode]="$list"
  for id in 1 2 3; do
    tls=()
    if [ "$mode" = tls ]; then
      tls=(--tls-cert "$root/certs/node-$id.pem" --tls-key "$root/certs/node-$id-key.pem" --tls-ca "$root/certs/ca.pem")
    fi
    RUST_LOG=warn target/release/kv-server --id "$id" --members "$members" \
      --data-dir "$root/$mode/node$id" "${tls[@]}" 2>"$root/$mode-node$id.log" &
    pids+=($!)
  done
done
sleep 1
client_tls=(--tls-ca "$root/certs/ca.pem" --tls-cert "$root/certs/client.pem" --tls-key "$root/certs/client-key.pem")

bench() { # mode, extra kv-bench args...
  local mode=$1; shift
  local tls=()
  if [ "$mode" = tls ]; then tls=("${client_tls[@]}"); fi
  target/release/kv-bench --addr "${addrs[$mode]}" --protocol binary \
    --key-size 16 --value-size 100 --json "${tls[@]}" "$@"
}
# Reads need the key written first, on each cluster.
for mode in plain tls; do bench "$mode" --keys 1 --count 10 >/dev/null; done

echo "| workload | connections | plain req/s | TLS req/s | TLS/plain | plain p50 ms | TLS p50 ms | plain p99 ms | TLS p99 ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for kind in w r; do
  extra=()
  if [ "$kind" = r ]; then extra=(--reads 1.0 --keys 1); else extra=(--reads 0.0 --keys 100000); fi
  for c in 1 64; do
    plain=$(bench plain --duration "$secs" --connections "$c" "${extra[@]}")
    tls=$(bench tls --duration "$secs" --connections "$c" "${extra[@]}")
    python3 - "$kind" "$c" "$plain" "$tls" <<'PY'
import json, sys
kind, c, p, t = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
name = "durable write" if kind == "w" else "linearizable read"
for j in (p, t):
    assert j["errors"] == 0, j
print(f"| {name} | {c} | {p['rps']:,.0f} | {t['rps']:,.0f} | {t['rps']/p['rps']:.2f} | {p['p50_ms']:.2f} | {t['p50_ms']:.2f} | {p['p99_ms']:.2f} | {t['p99_ms']:.2f} |")
PY
  done
done
