#!/usr/bin/env bash
# Runs the whole test suite, the end-to-end tests on the real Claude Code
# included. On a fresh machine it first installs what the suite needs:
# tmux (apt) and the pinned Claude Code (npm, into .cache/, reused after).
#
#   scripts/test.sh               # everything
#   scripts/test.sh --test e2e_claude   # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_VERSION=2.1.329
CACHE=.cache/claude-code
CLAUDE_BIN=$CACHE/node_modules/@anthropic-ai/claude-code-linux-x64/claude

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    echo "test.sh: installing $* with apt" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v tmux >/dev/null || apt_install tmux
command -v npm >/dev/null || apt_install nodejs npm

if ! [ -x "$CLAUDE_BIN" ] || ! "$CLAUDE_BIN" --version 2>/dev/null | grep -q "^$CLAUDE_VERSION"; then
    echo "test.sh: installing @anthropic-ai/claude-code@$CLAUDE_VERSION into $CACHE" >&2
    mkdir -p "$CACHE"
    # --ignore-scripts: the postinstall only links the native binary, which we call directly.
    npm install --prefix "$CACHE" --no-audit --no-fund --loglevel=error --ignore-scripts \
        "@anthropic-ai/claude-code@$CLAUDE_VERSION" >&2
fi
"$CLAUDE_BIN" --version >&2

export CLAUDE_FAILOVER_E2E=1
export CLAUDE_FAILOVER_CLAUDE_BIN="$PWD/$CLAUDE_BIN"
# Two test threads: the machine (and CI) has two cores, and every
# end-to-end test runs real Claude Code processes.
exec cargo test --all-targets "$@" -- --test-threads=2
