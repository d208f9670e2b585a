#!/usr/bin/env bash
# hubbub with its production backends at steady offered loads: batched history writes to a
# MongoDB-wire server (documents per insert_many, messages stored per second, ack latency),
# and the same load on a cluster of nodes sharing one Redis (delivery latency, loss, order).
# A benchmark, not a test: it prints numbers and asserts nothing.
#
#   benches/backends.sh [--rates 1,4] [--nodes 1,2] [--clients 620] [--duration 20s] [--no-build]
#
# For each node count and each rate, a fresh set of hubbub processes (release build,
# --workers 1 each) runs with --mongo-url against a fresh SecantusDB (`python -m secantus`,
# journaled with --sync-on-commit), plus --redis-url to one redis-server when there is more
# than one node. SecantusDB is a single-process Python server: on a small machine it, not
# hubbub, sets the commit latency, so compare rows with each other, not with a real MongoDB. `hubbub-loadgen classroom` (rooms of 30 plus a teacher, --rate messages/s
# per client, no typing frames) spreads its clients over the nodes in turn, so every room
# spans every node. The writers' counters are read from each node's /health before and after.
#
# Environment: MONGO_PYTHON (a python with secantusdb; default: a virtualenv made under
# target/bench-venv), KEEP=1 (keep the logs and loadgen JSON), HUBBUB_ARGS (extra hubbub flags, e.g. "--history-batch-age-ms 5"),
# CARGO_TARGET_DIR (./target).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
RATES=1,4
NODES=1,2
CLIENTS=620
DURATION=20s
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) RATES="$2"; shift 2 ;;
    --nodes) NODES="$2"; shift 2 ;;
    --clients) CLIENTS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
SECRET=bench-secret
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
  until python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null
  do sleep 0.2; done
}

if [ "$BUILD" = 1 ]; then
  cargo build --release -p hubbub -p hubbub-loadgen
fi
if ! command -v redis-server >/dev/null; then
  echo "redis-server not found (apt-get install redis-server)" >&2
  exit 2
fi
if [ -z "${MONGO_PYTHON:-}" ]; then
  VENV="$REPO/target/bench-venv"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/backends-requirements.txt
  MONGO_PYTHON="$VENV/bin/python"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "logs and JSON kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --loglevel warning >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$REDIS_PORT"

# The sum over nodes of one of the writers' counters in /health.
counter() {
  local field=$1; shift
  local total=0
  for port in "$@"; do
    n=$(curl -fs "http://127.0.0.1:$port/health" | python3 -c \
      "import json,sys; print(json.load(sys.stdin)['backends']['history']['$field'])")
    total=$((total + n))
  done
  echo "$total"
}

printf '\n| nodes | offered msg/s | sent msg/s | stored msg/s | insert_many calls | docs per call |'
printf ' ack p50 / p99 ms | delivered/s | delivery p50 / p99 ms | lost | out of order |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
IFS=, read -ra NODE_COUNTS <<< "$NODES"
IFS=, read -ra LEVELS <<< "$RATES"
run=0
for nodes in "${NODE_COUNTS[@]}"; do
  for rate in "${LEVELS[@]}"; do
    run=$((run + 1))
    # A fresh MongoDB-wire server per run: SecantusDB slows down as its data
    # grows, which would make later runs look slower than earlier ones.
    MONGO_PORT=$(free_port)
    "$MONGO_PYTHON" -m secantus --host 127.0.0.1 --port "$MONGO_PORT" \
      --storage-path "$WORK/mongo-$run" --log-level WARNING --sync-on-commit >/dev/null 2>&1 &
    MONGO=$!
    PIDS+=("$MONGO")
    wait_port "$MONGO_PORT"
    PORTS=()
    HUBS=()
    URLS=""
    for i in $(seq "$nodes"); do
      port=$(free_port)
      cluster=()
      if [ "$nodes" -gt 1 ]; then
        cluster=(--redis-url "redis://127.0.0.1:$REDIS_PORT/" --node-id "bench$run-$i")
      fi
      # shellcheck disable=SC2086
      "$TARGET/release/hubbub" --listen "127.0.0.1:$port" --jwt-secret "$SECRET" --log warn \
        --workers 1 --mongo-url "mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true" \
        --mongo-db "bench$run" "${cluster[@]}" \
        --messages-per-sec 1000 --message-burst 1000 --user-messages-per-sec 1000 \
        --connections-per-ip-per-sec 100000 ${HUBBUB_ARGS:-} \
        >"$WORK/hubbub-$run-$i.log" 2>&1 &
      HUBS+=($!)
      PIDS+=($!)
      PORTS+=("$port")
      URLS="${URLS:+$URLS,}ws://127.0.0.1:$port/ws/chat"
    done
    for port in "${PORTS[@]}"; do
      until curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1; do sleep 0.2; done
    done

    stored0=$(counter stored "${PORTS[@]}")
    batches0=$(counter batches "${PORTS[@]}")
    start=$(date +%s.%N)
    "$TARGET/release/hubbub-loadgen" classroom --url "$URLS" \
      --secret "$SECRET" --clients "$CLIENTS" --rate "$rate" --duration "$DURATION" \
      --ramp 1000 --no-typing --json "$WORK/load-$run.json" >"$WORK/load-$run.log" 2>&1
    end=$(date +%s.%N)
    stored1=$(counter stored "${PORTS[@]}")
    batches1=$(counter batches "${PORTS[@]}")
    for hub in "${HUBS[@]}"; do kill "$hub"; wait "$hub" 2>/dev/null || true; done
    kill "$MONGO"; wait "$MONGO" 2>/dev/null || true

    python3 - "$WORK/load-$run.json" "$nodes" "$CLIENTS" "$rate" "$stored0" "$stored1" \
      "$batches0" "$batches1" "$start" "$end" <<'EOF'
import json, sys
path, nodes, clients, rate, s0, s1, b0, b1, t0, t1 = sys.argv[1:]
load = json.load(open(path))
stored, batches = int(s1) - int(s0), int(b1) - int(b0)
secs = float(t1) - float(t0)
def ms(block):
    p = load.get(block) or {}
    f = lambda v: f"{v / 1000:.1f}" if isinstance(v, (int, float)) else "?"
    return f"{f(p.get('p50'))} / {f(p.get('p99'))}"
per_call = stored / batches if batches else 0
print(f"| {nodes} | {int(clients) * float(rate):.0f} | {load.get('sent_per_sec', 0):.0f} "
      f"| {stored / secs:.0f} | {batches} | {per_call:.1f} | {ms('ack_latency_us')} "
      f"| {load.get('delivered_per_sec', 0):.0f} | {ms('latency_us')} "
      f"| {load.get('lost', '?')} | {load.get('out_of_order', '?')} |")
EOF
  done
done
echo
echo "stored msg/s and insert_many calls cover the whole loadgen run (ramp and drain included);"
echo "sent and delivered per second are loadgen's steady-window rates."
