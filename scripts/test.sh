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

prepare_e2e
# Two test threads: the machine (and CI) has two cores, and every
# end-to-end test runs real Claude Code processes.
exec cargo test --workspace "$@" -- --test-threads=2
