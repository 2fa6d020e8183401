#!/usr/bin/env bash
# Herald's test command (the README's second command; .ci/run calls it too). On a Debian machine with only
# the Rust toolchain it first installs what the tests need and is missing — redis-server and redis-sentinel
# (the Redis half of the suite starts its own servers, and Sentinels for the failover tests), Chromium and
# Node.js (the real-browser tests), nginx, HAProxy and Caddy (tests/proxies.rs runs each in front of Herald),
# the pinned node packages of tests/browser — then runs `cargo test` with any arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v chromium >/dev/null 2>&1 || [ -n "${CHROMIUM:-}" ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# nginx and haproxy live in /usr/sbin, which a non-root PATH may lack.
for proxy in nginx haproxy caddy; do
    command -v "$proxy" >/dev/null 2>&1 || [ -x "/usr/sbin/$proxy" ] || missing+=("$proxy")
done
if ((${#missing[@]})); then
    echo "== installing ${missing[*]} (Debian packages)"
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "Node.js $(node --version) is too old for playwright-core: the browser tests need Node.js 20 or newer" >&2
    exit 1
fi

if [ ! -f tests/browser/node_modules/playwright-core/package.json ]; then
    echo "== npm ci (tests/browser: playwright-core, pinned)"
    (cd tests/browser && npm ci --no-audit --no-fund)
fi

echo "== cargo test $*"
exec cargo test "$@"
