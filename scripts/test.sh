#!/usr/bin/env bash
# Runs the whole test suite, the end-to-end tests on the real Claude Code
# included. On a fresh machine it first installs what the suite needs:
# tmux and Chromium (apt) and the pinned Claude Code (npm, into .cache/,
# reused after).
#
#   scripts/test.sh                     # everything
#   scripts/test.sh --test e2e_claude   # extra arguments go to `cargo test`
#   CLAUDE_VERSION=2.1.332 scripts/test.sh   # on another Claude Code (drift)
#
# `--workspace`: the testkit crate's own tests (the stand-in's, the demo's)
# run too, and cargo builds every binary, the product's and the demo's,
# before any test starts.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# What the fleet's count needs first, so that its ten minutes start as
# early as they can; Chromium (the dashboard's test) after.
ensure_tmux
ensure_redis
ensure_claude
export_e2e
# The fleet's ten-minute poll count (tests/fleet_polls.rs: two idle
# daemons and a redis-server, little CPU) runs in the background beside the
# rest of the suite rather than adding ten minutes to it; only on a whole
# run (no arguments).
soak_pid=
if [ $# -eq 0 ]; then
    soak_bin=$(cargo test --no-run --test fleet_polls 2>&1 |
        sed -n 's/.*Executable tests\/fleet_polls.rs (\(.*\))$/\1/p' | tail -n 1)
    [ -x "$soak_bin" ] || { echo "cannot build tests/fleet_polls.rs" >&2; exit 1; }
    mkdir -p target
    CLAUDE_FAILOVER_FLEET_SOAK=1 "$soak_bin" --test-threads=1 --nocapture >target/fleet-soak.log 2>&1 &
    soak_pid=$!
    trap '[ -n "$soak_pid" ] && kill "$soak_pid" 2>/dev/null' EXIT
fi
ensure_chromium
export_e2e
# Two test threads: the machine (and CI) has two cores, and every
# end-to-end test runs real Claude Code processes.
rc=0
# --no-fail-fast: one run names every failing test, not only the first binary's.
cargo test --workspace --no-fail-fast "$@" -- --test-threads=2 || rc=$?
if [ -n "$soak_pid" ]; then
    soak_rc=0
    wait "$soak_pid" || soak_rc=$?
    soak_pid=
    echo "--- tests/fleet_polls.rs (ten minutes, beside the suite): exit $soak_rc ---"
    grep -E "usage requests|stalest|panicked|test result|assert" target/fleet-soak.log || tail -n 40 target/fleet-soak.log
    [ "$soak_rc" = 0 ] || rc=$soak_rc
fi
exit "$rc"
