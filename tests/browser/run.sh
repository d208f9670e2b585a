#!/usr/bin/env bash
# End-to-end tests of the JS client (clients/js/hubbub.js) and the demo page
# (src/demo/index.html) in headless Chromium, against target/debug/hubbub.
#
#   tests/browser/run.sh                       uses ../../target/debug/hubbub
#   HUBBUB_BIN=/path/to/hubbub tests/browser/run.sh
#
# Installs what is missing (Debian's chromium, the npm packages pinned in
# package-lock.json), builds nothing, type-checks the client's declarations
# and the React hook example with tsc, and runs `node --test`.
set -euo pipefail
cd "$(dirname "$0")"

export HUBBUB_BIN=${HUBBUB_BIN:-$PWD/../../target/debug/hubbub}
if [ ! -x "$HUBBUB_BIN" ]; then
    echo "hubbub binary not found at $HUBBUB_BIN: run 'cargo build --bin hubbub' (or cargo test) first" >&2
    exit 2
fi

command -v node >/dev/null || { echo "node not found (Node.js 20 or newer is needed)" >&2; exit 2; }
command -v npm >/dev/null || { echo "npm not found" >&2; exit 2; }

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
if [ ! -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ]; then
    echo "==> installing Debian's chromium"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# npm ci only when node_modules is missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "==> npm ci (playwright-core, ws, typescript and type packages)"
    npm ci --no-audit --no-fund --loglevel=error
fi

echo "==> tsc: the client's type declarations and the React hook example"
npx tsc -p tsconfig.json

echo "==> node --test (client in Node, demo page in $("${CHROMIUM_BIN:-/usr/bin/chromium}" --version 2>/dev/null || echo chromium))"
exec node --test client.test.js demo.test.js
