#!/usr/bin/env bash
# Regenerates docs/dashboard.png: the dashboard's end-to-end test (real
# Claude Code sessions, real headless Chromium) takes the screenshot after
# its swap and writes it here, so the picture in the docs stays true.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_e2e
CLAUDE_FAILOVER_SCREENSHOT="$PWD/docs/dashboard.png" \
    cargo test --test dashboard the_page_shows -- --test-threads=1
echo "wrote docs/dashboard.png" >&2
