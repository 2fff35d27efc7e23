#!/usr/bin/env bash
# Builds claude-failover, creates a throw-away sandbox (two made-up accounts
# with credentials, onboarding and folder trust, a shared root, a pool and a
# project) and runs `claude-failover check` on it. Uses the pinned Claude
# Code from .cache/ (installed by scripts/test.sh) or `claude` on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec target/release/claude-failover sandbox-check "$@"
