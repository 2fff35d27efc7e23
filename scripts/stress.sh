#!/usr/bin/env bash
# Runs the whole test suite, the end-to-end tests on the real Claude Code
# included, N times in a row from a fresh clone of the current HEAD, with
# one core kept busy by a CPU burner, and prints how often each test passed.
#
#   scripts/stress.sh            # 5 runs
#   scripts/stress.sh 1          # one run
#
# Environment:
#   STRESS_RUN_TIMEOUT=SECONDS   each run's bound (default 3600); a run cut by
#                                it counts its unfinished tests as missing
#   STRESS_TARGET_DIR=DIR        cargo's target folder (default: inside the
#                                temp folder, so the first run builds from
#                                scratch; point it at a kept folder to reuse)
#   STRESS_KEEP=1                keep the temp folder (logs, clone) at the end
#
# Only committed work is tested: the clone is of HEAD, not the work tree.
# Every tmux server the tests start lives under the run's own TMUX_TMPDIR
# and is killed after each run, so a run cut by its timeout leaves nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

runs=${1:-5}
case $runs in '' | *[!0-9]* | 0)
    echo "usage: scripts/stress.sh [RUNS]  (RUNS a positive number, default 5)" >&2
    exit 2
    ;;
esac
run_timeout=${STRESS_RUN_TIMEOUT:-3600}
src=$PWD
head=$(git rev-parse HEAD)
if ! git diff --quiet HEAD -- 2>/dev/null; then
    echo "note: uncommitted changes are not tested; testing HEAD $head" >&2
fi

ensure_tmux
ensure_claude

work=$(mktemp -d "${TMPDIR:-/tmp}/cf-stress.XXXXXX")
burner=
cleanup() {
    if [ -n "$burner" ]; then kill "$burner" 2>/dev/null || true; fi
    kill_test_tmux
    if [ "${STRESS_KEEP:-0}" = 1 ]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
}
# The tests' tmux servers: all of them under this script's TMUX_TMPDIR.
kill_test_tmux() {
    local sock
    for sock in "$work"/tmux/tmux-*/*; do
        [ -S "$sock" ] && tmux -S "$sock" kill-server 2>/dev/null || true
    done
}
trap cleanup EXIT

echo "cloning $head into $work/clone" >&2
git clone --quiet --no-checkout "$src" "$work/clone"
git -C "$work/clone" checkout --quiet --detach "$head"
# The pinned Claude Code is not in git: share the one installed here.
ln -s "$src/.cache" "$work/clone/.cache"
mkdir -p "$work/tmux"

# One core kept busy for the whole stress run.
if ! command -v stress-ng >/dev/null; then
    apt_install stress-ng || echo "stress-ng unavailable: using a shell busy loop" >&2
fi
if command -v stress-ng >/dev/null; then
    stress-ng --cpu 1 --quiet &
    burner=$!
    echo "CPU burner: stress-ng --cpu 1 (pid $burner)" >&2
else
    (while :; do :; done) &
    burner=$!
    echo "CPU burner: shell busy loop (pid $burner)" >&2
fi

cd "$work/clone"
export_e2e
export CARGO_TARGET_DIR=${STRESS_TARGET_DIR:-$work/target}
export TMUX_TMPDIR=$work/tmux
results=$work/results.txt
: >"$results"
failed_runs=0
for i in $(seq 1 "$runs"); do
    log=$work/run-$i.log
    echo "run $i/$runs (timeout ${run_timeout}s), log $log" >&2
    started=$(date +%s)
    set +e
    timeout --kill-after=30 "$run_timeout" \
        cargo test --workspace --no-fail-fast -- --test-threads=2 >"$log" 2>&1
    rc=$?
    set -e
    kill_test_tmux
    echo "run $i: exit $rc after $(($(date +%s) - started))s" >&2
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "run $i: cut by its timeout" >&2; fi
    [ "$rc" = 0 ] || failed_runs=$((failed_runs + 1))
    # `Running tests/x.rs (…)` names the binary; `test NAME ... ok|FAILED` a result.
    awk -v run="$i" '
        /^ *Running / {
            bin = ($2 == "unittests") ? $3 : $2
            sub(/^(tests|src)\//, "", bin); sub(/\.rs$/, "", bin)
        }
        /^ *Doc-tests / { bin = "doc:" $2 }
        /^test .* \.\.\. (ok|FAILED)$/ {
            line = $0; result = $NF
            sub(/^test /, "", line); sub(/ \.\.\. (ok|FAILED)$/, "", line)
            gsub(/ /, "_", line)
            print run, bin "::" line, result
        }' "$log" >>"$results"
done

echo
echo "per-test results over $runs run(s) of HEAD $head, one core busy:"
printf "%-90s %6s %6s %7s\n" test passed failed missing
awk -v runs="$runs" '
    { seen[$2] = 1; if ($3 == "ok") ok[$2]++; else bad[$2]++ }
    END {
        for (k in seen)
            printf "%-90s %6d %6d %7d\n", k, ok[k], bad[k], runs - ok[k] - bad[k]
    }' "$results" | sort
awk -v runs="$runs" -v failed_runs="$failed_runs" '
    { seen[$2] = 1; if ($3 == "ok") ok[$2]++; else bad[$2]++ }
    END {
        for (k in seen) {
            n++; p += ok[k]; f += bad[k]; m += runs - ok[k] - bad[k]
            if (ok[k] == runs) always++
        }
        printf "%d tests, %d passed in every run; %d passes, %d failures, %d missing; %d of %d runs exited non-zero\n", n, always, p, f, m, failed_runs, runs
    }' "$results"
# Exit status: 0 only when every run passed.
[ "$failed_runs" = 0 ]
