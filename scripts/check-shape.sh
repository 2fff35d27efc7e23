#!/usr/bin/env bash
# The architecture rules that a grep can check (run by .ci/run):
#
# 1. A pure module (its first line is `//! Pure: ...`; every module of
#    src/decide/ is one) does no I/O and reads no clock outside its tests:
#    decisions take `now` and observations as inputs, and a thin shell (a
#    role in src/daemon/) carries out what they return.
# 2. Only the session watcher writes to tmux (starts, kills, types into or
#    pastes into a session); everyone else asks it (or only reads).
#
# A break prints the file, the line and the rule, and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
failed=0

# Every decision module is pure; a module elsewhere may be too (hook_event).
expected_pure="$(ls src/decide/*.rs | grep -v '/mod\.rs$') src/claude/hook_event.rs"
banned='std::fs|\bfs::|\bTmux\b|ureq|Instant::now|SystemTime::now|thread::sleep'

pure=$(grep -rl --include='*.rs' -m1 '^//! Pure:' src | sort)
for f in $expected_pure; do
    if ! grep -qx "$f" <<<"$pure"; then
        echo "check-shape: $f should be a pure module (first line \`//! Pure: ...\`) but is not (or is gone)"
        failed=1
    fi
done
for f in $pure; do
    [ "$(head -1 "$f" | cut -c1-9)" = "//! Pure:" ] || continue
    # Everything before the first #[cfg(test)] is the module proper.
    hits=$(awk '/^#\[cfg\(test\)\]/{exit} {print NR": "$0}' "$f" | grep -E "$banned" || true)
    if [ -n "$hits" ]; then
        while IFS= read -r line; do
            echo "check-shape: $f:$line: a pure module uses I/O or a clock (${banned//\\b/})"
        done <<<"$hits"
        failed=1
    fi
done

# tmux writes: the methods that change a session, called anywhere but the
# session watcher (and tmux.rs, which defines them).
writes='\.(kill_session|send_key|type_text|paste|new_session|kill_server|raw)\('
hits=$(grep -rnE --include='*.rs' "$writes" src | grep -vE '^src/(daemon/session_watcher|sys/tmux)\.rs:' || true)
if [ -n "$hits" ]; then
    while IFS= read -r line; do
        echo "check-shape: $line: only the session watcher writes to tmux"
    done <<<"$hits"
    failed=1
fi

if [ "$failed" = 0 ]; then
    echo "check-shape: ok ($(wc -w <<<"$pure") pure modules, tmux written only by the session watcher)"
fi
exit "$failed"
