#!/usr/bin/env bash
# Runs every test of the project: unit and integration tests (normal build),
# then the deterministic simulation (madsim build, its own target dir).
#
#   ./test.sh                 CI-sized seed counts (a few minutes)
#   SIM_SEEDS=10000 RAFT_SEEDS=100000 ./test.sh    long sweeps
set -euo pipefail
cd "$(dirname "$0")"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest (once)"
  cargo install cargo-nextest --locked
fi

echo "== unit, integration and process-level tests (seeded Raft network: ${RAFT_SEEDS:-5000} seeds)"
RAFT_SEEDS="${RAFT_SEEDS:-5000}" cargo nextest run --workspace --profile ci --cargo-profile release-test

echo "== deterministic simulation (RUSTFLAGS=--cfg madsim, target/sim): ${SIM_SEEDS:-1000} seeds per cluster size"
MADSIM_TEST_SEED="${SIM_FIRST_SEED:-1}" MADSIM_TEST_NUM="${SIM_SEEDS:-1000}" \
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim \
  cargo nextest run -p kv-sim --profile sim --cargo-profile release-test
