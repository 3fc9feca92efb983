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

sim_seeds="${SIM_SEEDS:-1000}"
# Sweeps longer than CI's are never killed for taking long (see .config/nextest.toml).
sim_profile=sim
if [ "$sim_seeds" -gt 1000 ]; then sim_profile=sim-long; fi
echo "== deterministic simulation (RUSTFLAGS=--cfg madsim, target/sim): $sim_seeds seeds per cluster size"
MADSIM_TEST_SEED="${SIM_FIRST_SEED:-1}" MADSIM_TEST_NUM="$sim_seeds" \
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim \
  cargo nextest run -p kv-sim --profile "$sim_profile" --cargo-profile release-test
