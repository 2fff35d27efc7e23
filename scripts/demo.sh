#!/usr/bin/env bash
# The two-minute tour: builds claude-failover and the demo (the testkit
# crate's `claude-failover-demo`, which runs the product binary built next to
# it) and runs the demo, a self-contained sandbox (the local Anthropic API stand-in, two made-up
# accounts, a private tmux server, the real Claude Code) that shows sessions
# starting, tasks running, the first account crossing its quota threshold and
# every session failing over to the second one. It cleans up after itself.
#
#   scripts/demo.sh                 # 6 tasks on 3 sessions
#   scripts/demo.sh --keep          # leave it running afterwards, to look around
#   scripts/demo.sh --tasks 9 --sessions 2
#
# On a fresh machine it first installs tmux (apt) and, when no `claude` is on
# PATH, the pinned Claude Code (npm, into .cache/, reused after).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_tmux
given=""
for arg in "$@"; do
    case "$arg" in --claude|--claude=*) given=1 ;; esac
done
claude_args=()
if [ -z "$given" ]; then
    if claude_path=$(command -v claude); then
        :
    else
        ensure_claude
        claude_path="$PWD/$CLAUDE_BIN"
    fi
    claude_args=(--claude "$claude_path")
fi
# Both from this checkout, into the same folder: the demo finds the product
# binary (the daemon and the hook) next to itself. Two builds, not one: the
# product alone is exactly the default `cargo build --release` (the one
# scripts/check-no-fakes.sh checks), with no features unified from the
# testkit's dependencies, so neither script rebuilds the other's binary.
cargo build --release --quiet -p claude-failover --bin claude-failover
cargo build --release --quiet -p claude-failover-testkit --bin claude-failover-demo
release=$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)
# The one just built, whatever $CLAUDE_FAILOVER_BIN said before.
export CLAUDE_FAILOVER_BIN="$release/claude-failover"
exec "$release/claude-failover-demo" ${claude_args[@]+"${claude_args[@]}"} "$@"
