#!/usr/bin/env bash
# The mutant catalogue: applies each sim/mutants/*.patch in turn to a
# scratch copy of HEAD (a git worktree under target/mutants, reset between
# mutants), runs the simulation sweep on 3- and 5-node clusters (seeds 1..N,
# stopping at the first failure) and prints one table: mutant, first failing
# seed per cluster size, wall time, and the checker's message. A mutant that
# survives N seeds is a hole in the simulation.
#
#   sim/mutants/run.sh                  # every mutant, N = 1000
#   MUTANT_SEEDS=200 sim/mutants/run.sh 04 07   # only mutants whose file names contain 04 or 07
#   MUTANT_BASE=<commit> sim/mutants/run.sh 14    # against an older simulation
#
# Not part of CI (a full run takes about an hour on 2 cores); its table,
# with the date and commit, is in the README.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
seeds="${MUTANT_SEEDS:-1000}"
jobs="${MADSIM_TEST_JOBS:-2}"
work="$root/target/mutants/work"
export CARGO_TARGET_DIR="$root/target/mutants/target"
export RUSTFLAGS="--cfg madsim"
head=$(git rev-parse "${MUTANT_BASE:-HEAD}")
mkdir -p "$root/target/mutants"
if [ ! -e "$work/.git" ]; then
  git worktree add --detach "$work" "$head" >/dev/null 2>&1
fi

patches=()
for p in sim/mutants/*.patch; do
  name=$(basename "$p" .patch)
  if [ $# -eq 0 ]; then patches+=("$p"); continue; fi
  for f in "$@"; do
    if [[ "$name" == *"$f"* ]]; then patches+=("$p"); break; fi
  done
done

# One sweep: prints "seed<TAB>message" of the first failure, or nothing.
sweep() { # nodes-word
  local log="$root/target/mutants/$name-$1.log"
  ( cd "$work" && MADSIM_TEST_SEED=1 MADSIM_TEST_NUM="$seeds" MADSIM_TEST_JOBS="$jobs" \
      timeout 1800 cargo test -q -p kv-sim --profile release-test --test simulation \
      "${1}_nodes_stay_linearizable_under_faults" -- --exact ) >"$log" 2>&1 || true
  if grep -q -E "^seed [0-9]+ FAILED: " "$log"; then
    grep -m1 -E "^seed [0-9]+ FAILED: " "$log" | sed -E 's/^seed ([0-9]+) FAILED: (.*)$/\1\t\2/'
  elif grep -q "MADSIM_TEST_SEED=" "$log"; then
    # A panic inside a node (an assertion of the core): madsim names the seed.
    local seed why
    seed=$(grep -m1 -oE "MADSIM_TEST_SEED=[0-9]+" "$log" | cut -d= -f2)
    why=$(grep -m1 -A1 "panicked at" "$log" | tail -1)
    printf '%s\tpanic: %s\n' "$seed" "$why"
  elif grep -q "panicked at" "$log"; then
    printf '?\tpanic: %s\n' "$(grep -m1 -A1 "panicked at" "$log" | tail -1)"
  fi
}

echo "Mutant catalogue at $(git rev-parse --short "$head"), $(date -u +%Y-%m-%d), up to $seeds seeds per cluster size"
echo
echo "| mutant | 3 nodes: first failing seed | 5 nodes: first failing seed | wall s | the checker's message |"
echo "|---|---:|---:|---:|---|"
for p in "${patches[@]}"; do
  name=$(basename "$p" .patch)
  git -C "$work" checkout -q --detach "$head"
  git -C "$work" reset -q --hard
  git -C "$work" clean -qfd
  if ! git -C "$work" apply "$root/$p"; then
    echo "| $name | does not apply | | | |"
    continue
  fi
  started=$(date +%s)
  if ! ( cd "$work" && cargo test -q -p kv-sim --profile release-test --test simulation --no-run ) \
      >"$root/target/mutants/$name-build.log" 2>&1; then
    echo "| $name | build failed | | | see target/mutants/$name-build.log |"
    continue
  fi
  built=$(date +%s)
  three=$(sweep three); five=$(sweep five)
  ended=$(date +%s)
  seed3=${three%%$'\t'*}; seed5=${five%%$'\t'*}
  msg=${three#*$'\t'}; [ -n "$three" ] || msg=${five#*$'\t'}
  [ -n "$three" ] || seed3="survived $seeds"
  [ -n "$five" ] || seed5="survived $seeds"
  [ -n "$three$five" ] || msg="-"
  msg=$(printf '%s' "$msg" | cut -c1-140 | sed 's/|/\\|/g')
  echo "| $name | $seed3 | $seed5 | $((ended - built)) | $msg |"
done
git -C "$work" reset -q --hard
