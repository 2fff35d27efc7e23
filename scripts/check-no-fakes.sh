#!/usr/bin/env bash
# Fails when the product binary carries the fakes: the API stand-in (it
# signs every answer with its marker, `ANSWER_PREFIX` in
# crates/testkit/src/standin.rs) or the sandbox's made-up OAuth tokens
# (`token_for` in crates/testkit/src/sandbox.rs). They live in the dev-only
# testkit crate; a default `cargo build --release` of the product must not
# link them.
#
#   scripts/check-no-fakes.sh           # builds the release product binary and checks it
#   scripts/check-no-fakes.sh BINARY    # checks BINARY instead (no build)
set -euo pipefail
cd "$(dirname "$0")/.."

markers=(
    "STANDIN-ANSWER"         # the stand-in's answer marker
    "sk-ant-oat01-sandbox-"  # the sandbox's made-up token prefix
)

if [ $# -gt 0 ]; then
    binary=$1
else
    cargo build --release --quiet -p claude-failover --bin claude-failover
    binary="${CARGO_TARGET_DIR:-target}/release/claude-failover"
fi
[ -f "$binary" ] || { echo "check-no-fakes: no binary at $binary" >&2; exit 2; }

found=0
for marker in "${markers[@]}"; do
    if count=$(grep -c -a -F -- "$marker" "$binary"); then
        echo "check-no-fakes: FAILED: $binary contains \"$marker\" ($count lines): the fakes are in it" >&2
        found=1
    fi
done
if [ "$found" != 0 ]; then
    echo "check-no-fakes: the stand-in and the sandbox belong to crates/testkit, a dev-dependency only" >&2
    exit 1
fi
echo "check-no-fakes: OK: $binary contains none of: ${markers[*]}"
