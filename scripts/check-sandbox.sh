#!/usr/bin/env bash
# Builds claude-failover, creates a throw-away sandbox (two made-up accounts
# with credentials, onboarding and folder trust, a shared root, a pool and a
# project) and runs `claude-failover check` on it with the pinned Claude Code
# (installed into .cache/ if missing). The sandbox is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_tmux
ensure_claude
cargo build --quiet --example sandbox --bin claude-failover
dir=$(mktemp -d -t claude-failover-sandbox.XXXXXX)
trap 'rm -rf "$dir"' EXIT
config=$(target/debug/examples/sandbox "$dir" "$PWD/$CLAUDE_BIN")
echo "sandbox config: $config" >&2
target/debug/claude-failover --config "$config" check
