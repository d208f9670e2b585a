#!/usr/bin/env bash
# The test command: installs and starts everything the tests need, then runs
# every test. Safe to run on a fresh machine (as root or with sudo for apt).
#
#   scripts/test.sh            all tests
#   SKIP_AUTOBAHN=1 scripts/test.sh   skip the WebSocket conformance run
#
# Steps: redis-server (Debian's package) when missing; a virtualenv with
# SecantusDB (a MongoDB-wire server) and the Python test client; Rust unit and integration tests (debug profile, built once, run on
# both the io_uring and the epoll driver), the Python end-to-end tests, the
# browser client and demo page in headless Chromium, cargo-fuzz on the three
# parsers that face the network (stable Rust, no sanitizer; see fuzz/README.md),
# and the Autobahn|Testsuite conformance cases against /ws/echo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${HUBBUB_SHARED:-$ROOT/../shared}
VENV=${HUBBUB_TEST_VENV:-$ROOT/target/test-venv}

say() { printf '\n==> %s\n' "$*"; }

# --- 1. Tools -----------------------------------------------------------------
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 2; }
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    say "installing python3-venv"
    apt-get update -qq && apt-get install -y -qq python3-venv
fi

# Redis for the cluster tests, which start their own servers on free ports.
if ! command -v redis-server >/dev/null; then
    say "installing redis-server"
    apt-get update -qq && apt-get install -y -qq redis-server
fi

say "python virtualenv for the end-to-end tests ($VENV)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt \
    -r tests/backends-requirements.txt
# The MongoDB-wire server the store tests start and stop themselves.
export HUBBUB_TEST_MONGO_PYTHON="$VENV/bin/python"

# --- 2. Rust tests ------------------------------------------------------------
# fault-injection lets one test make a connection task panic on purpose.
say "cargo test (io_uring driver where the kernel allows it, epoll otherwise)"
cargo test --workspace --locked --features fault-injection

say "integration tests again on the epoll driver"
HUBBUB_TEST_DRIVER=epoll cargo test --locked --features fault-injection \
    --test chat --test bad_input --test hardening --test mongo --test operations \
    --test cluster

# --- 3. Python client ---------------------------------------------------------
say "python websockets end-to-end tests"
HUBBUB_BIN="$ROOT/target/debug/hubbub" "$VENV/bin/python" -m pytest -q tests/python

# --- 4. Browser ----------------------------------------------------------------
say "browser client and demo page (Node and headless Chromium)"
HUBBUB_BIN="$ROOT/target/debug/hubbub" bash tests/browser/run.sh

# --- 5. Fuzzing ------------------------------------------------------------------
say "fuzzing the frame decoder, the upgrade parser and the protocol parser (20 s each)"
bash scripts/fuzz.sh 20

# --- 6. WebSocket conformance ---------------------------------------------------
if [ "${SKIP_AUTOBAHN:-0}" = 1 ]; then
    say "Autobahn skipped (SKIP_AUTOBAHN=1)"
    exit 0
fi
if [ ! -x "$SHARED/tools/autobahn/run.sh" ] && [ ! -f "$SHARED/tools/autobahn/run.sh" ]; then
    echo "Autobahn suite not found at $SHARED/tools/autobahn (set HUBBUB_SHARED)" >&2
    exit 2
fi
say "Autobahn|Testsuite on /ws/echo (default cases)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATA=$(mktemp -d)
target/debug/hubbub --listen "127.0.0.1:$PORT" --data-dir "$DATA" --echo-endpoint \
    --workers 2 --log warn &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    sleep 0.1
done
bash "$SHARED/tools/autobahn/run.sh" "ws://127.0.0.1:$PORT/ws/echo"
