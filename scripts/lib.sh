# Shared by the scripts: install what the project needs on a fresh machine.
# Sourced, not run.

# The pinned Claude Code (src/claude/facts.rs PINNED_VERSION says the same).
# `CLAUDE_VERSION=2.1.332 scripts/test.sh` runs the suite on another one,
# installed beside it in .cache/claude-code-<version>.
PINNED_CLAUDE_VERSION=2.1.332
CLAUDE_VERSION=${CLAUDE_VERSION:-$PINNED_CLAUDE_VERSION}
if [ "$CLAUDE_VERSION" = "$PINNED_CLAUDE_VERSION" ]; then
    CLAUDE_CACHE=.cache/claude-code
else
    CLAUDE_CACHE=.cache/claude-code-$CLAUDE_VERSION
fi
CLAUDE_BIN=$CLAUDE_CACHE/node_modules/@anthropic-ai/claude-code-linux-x64/claude

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    echo "installing $* with apt" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_tmux() { command -v tmux >/dev/null || apt_install tmux; }

# Debian's Chromium, for the dashboard's test (headless, DevTools protocol).
ensure_chromium() { command -v chromium >/dev/null || apt_install chromium; }

# Debian's Redis server, for the fleet's tests (each starts its own on a free port).
ensure_redis() { command -v redis-server >/dev/null || apt_install redis-server; }

# Installs the pinned Claude Code into .cache/ unless it is already there.
ensure_claude() {
    command -v npm >/dev/null || apt_install nodejs npm
    if ! [ -x "$CLAUDE_BIN" ] || ! "$CLAUDE_BIN" --version 2>/dev/null | grep -q "^$CLAUDE_VERSION"; then
        echo "installing @anthropic-ai/claude-code@$CLAUDE_VERSION into $CLAUDE_CACHE" >&2
        mkdir -p "$CLAUDE_CACHE"
        # --ignore-scripts: the postinstall only links the native binary, which we call directly.
        npm install --prefix "$CLAUDE_CACHE" --no-audit --no-fund --loglevel=error --ignore-scripts \
            "@anthropic-ai/claude-code@$CLAUDE_VERSION" >&2
    fi
    "$CLAUDE_BIN" --version >&2
}

# Everything the end-to-end suite needs, installed when missing, and its
# environment: what scripts/test.sh and scripts/screenshot.sh run first.
prepare_e2e() {
    ensure_tmux
    ensure_claude
    ensure_chromium
    ensure_redis
    export_e2e
}

# The environment that turns the end-to-end suite on, with the pinned binary.
export_e2e() {
    export CLAUDE_FAILOVER_E2E=1
    export CLAUDE_FAILOVER_CHROMIUM="${CLAUDE_FAILOVER_CHROMIUM:-$(command -v chromium || true)}"
    export CLAUDE_FAILOVER_CLAUDE_BIN="$PWD/$CLAUDE_BIN"
}
