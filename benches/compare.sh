#!/usr/bin/env bash
# hubbub against the benchmark peers, in one run, on this machine.
#
# Starts hubbub and each peer in turn on 127.0.0.1, pinned to the server cores, drives each
# with the same hubbub-loadgen command pinned to the other cores, and prints one table per
# offered load plus an idle-memory table. See docs/benchmarks.md for how to read it.
#
#   benches/compare.sh [options]
#
# Options (each also settable by the environment variable in brackets):
#   --duration D       time per load run, ramp included            [DURATION=15s]
#   --clients N        clients of the classroom scenario            [CLIENTS=620]
#   --room-size N      students per room (+1 teacher)               [ROOM_SIZE=30]
#   --rates LIST       per-client messages/s, one load level each   [RATES=1,2,4,6]
#   --size N           bytes of message content                     [SIZE=64]
#   --idle-clients N   connections of the idle run (0 skips it)     [IDLE_CLIENTS=5000]
#   --servers LIST     what to run, in order                        [SERVERS=hubbub,bun,node-ws,go-gorilla,rust-tokio]
#   --server-cpus L    taskset list for the server under test       [SERVER_CPUS=0]
#   --loadgen-cpus L   taskset list for the load generator          [LOADGEN_CPUS=1]
#   --out DIR          results (JSON per run, logs, table.md)       [OUT=/tmp/hubbub-compare-<time>]
#   --setup            rerun every peer's setup.sh even when it looks installed
#   --no-build         use the binaries already in $CARGO_TARGET_DIR
#   --sched S          how server and generator are shielded from other jobs on the machine:
#                      rr (SCHED_RR priority 10, needs root), nice (nice -n -10, needs root)
#                      or none                                      [SCHED=rr as root, else none]
#
# Environment: CARGO_TARGET_DIR (/tmp/target-bench), PEERS_SRC (the shared peers folder,
# default ../shared/peers beside the repo), BENCH_HOME (/tmp/hubbub-bench: the writable copy of
# the peers), CHAT_JWT_SECRET (bench-secret), BASE_PORT (18300), HUBBUB_ARGS (extra hubbub flags,
# for example "--history-batch-age-ms 5"; none by default), DATA_PARENT (where hubbub's
# --data-dir is made, $BENCH_HOME by default: put it on the disk you mean to measure).
#
# Default runtime: 4 levels x 5 servers x ~20 s + 5 idle runs x ~20 s, about 8 minutes, plus the
# first build and peer setup (minutes; the Rust peer's LTO build is the longest).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-15s}"
CLIENTS="${CLIENTS:-620}"
ROOM_SIZE="${ROOM_SIZE:-30}"
RATES="${RATES:-1,2,4,6}"
SIZE="${SIZE:-64}"
IDLE_CLIENTS="${IDLE_CLIENTS:-5000}"
SERVERS="${SERVERS:-hubbub,bun,node-ws,go-gorilla,rust-tokio}"
SERVER_CPUS="${SERVER_CPUS:-0}"
LOADGEN_CPUS="${LOADGEN_CPUS:-1}"
OUT="${OUT:-/tmp/hubbub-compare-$(date +%Y%m%d-%H%M%S)}"
SETUP=0
BUILD=1
if [ "$(id -u)" = 0 ]; then SCHED="${SCHED:-rr}"; else SCHED="${SCHED:-none}"; fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/target-bench}"
PEERS_SRC="${PEERS_SRC:-$REPO/../shared/peers}"
BENCH_HOME="${BENCH_HOME:-/tmp/hubbub-bench}"
export CHAT_JWT_SECRET="${CHAT_JWT_SECRET:-bench-secret}"
BASE_PORT="${BASE_PORT:-18300}"

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --clients) CLIENTS="$2"; shift 2 ;;
    --room-size) ROOM_SIZE="$2"; shift 2 ;;
    --rates) RATES="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --idle-clients) IDLE_CLIENTS="$2"; shift 2 ;;
    --servers) SERVERS="$2"; shift 2 ;;
    --server-cpus) SERVER_CPUS="$2"; shift 2 ;;
    --loadgen-cpus) LOADGEN_CPUS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --setup) SETUP=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --sched) SCHED="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# The number of CPUs in a taskset list such as "0", "0,1" or "0-3".
count_cpus() {
  python3 -c 'import sys
n = 0
for part in sys.argv[1].split(","):
    a, _, b = part.partition("-")
    n += int(b or a) - int(a) + 1
print(n)' "$1"
}
WORKERS="$(count_cpus "$SERVER_CPUS")"
LOADGEN_THREADS="$(count_cpus "$LOADGEN_CPUS")"
ALL_CPUS="$(python3 -c 'import sys
s = set()
for l in sys.argv[1:]:
    for part in l.split(","):
        a, _, b = part.partition("-")
        s.update(range(int(a), int(b or a) + 1))
print(",".join(map(str, sorted(s))))' "$SERVER_CPUS" "$LOADGEN_CPUS")"

# Real-time round robin keeps other jobs (builds) on a shared machine from taking the measured
# cores; the kernel's RT throttling still leaves them 5% of each core. Every run is bounded.
case "$SCHED" in
  rr) PRIO=(chrt -r 10) ;;
  nice) PRIO=(nice -n -10) ;;
  none) PRIO=(env) ;;
  *) echo "--sched must be rr, nice or none" >&2; exit 2 ;;
esac

mkdir -p "$OUT"
LOG="$OUT/logs"
mkdir -p "$LOG"
echo "results in $OUT"

# Servers and the generator hold thousands of sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- build and setup -----------------------------------------------------------------------

if [ "$BUILD" = 1 ]; then
  echo "building hubbub and hubbub-loadgen (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$REPO" && cargo build --release -p hubbub -p hubbub-loadgen --bins) > "$LOG/build.log" 2>&1 \
    || { tail -30 "$LOG/build.log"; echo "build failed (full log: $LOG/build.log)" >&2; exit 1; }
fi
HUBBUB="$CARGO_TARGET_DIR/release/hubbub"
LOADGEN="$CARGO_TARGET_DIR/release/hubbub-loadgen"
[ -x "$HUBBUB" ] && [ -x "$LOADGEN" ] || { echo "missing $HUBBUB or $LOADGEN" >&2; exit 1; }

# What a peer's setup leaves behind; setup.sh runs when it is missing (or with --setup).
peer_artifact() {
  case "$1" in
    bun) echo "$BENCH_HOME/peers/bun/node_modules/.bin/bun" ;;
    node-ws) echo "$BENCH_HOME/peers/node-ws/node_modules/ws/package.json" ;;
    go-gorilla) echo "$BENCH_HOME/peers/go-gorilla/build/go-gorilla-peer" ;;
    rust-tokio) echo "$BENCH_HOME/peers/rust-tokio/target/release/chat-peer-rust-tokio" ;;
  esac
}

IFS=, read -r -a SERVER_LIST <<< "$SERVERS"
for s in "${SERVER_LIST[@]}"; do
  [ "$s" = hubbub ] && continue
  if [ ! -d "$BENCH_HOME/peers/$s" ]; then
    [ -d "$PEERS_SRC/$s" ] || { echo "no peer $s in $PEERS_SRC (set PEERS_SRC)" >&2; exit 1; }
    mkdir -p "$BENCH_HOME/peers"
    cp -r "$PEERS_SRC/$s" "$BENCH_HOME/peers/"
  fi
  if [ "$SETUP" = 1 ] || [ ! -e "$(peer_artifact "$s")" ]; then
    echo "setting up peer $s (log: $LOG/setup-$s.log)"
    # The peers' own target dir: their Cargo.toml is a workspace of its own.
    (cd "$BENCH_HOME/peers/$s" && env -u CARGO_TARGET_DIR ./setup.sh) > "$LOG/setup-$s.log" 2>&1 \
      || { tail -20 "$LOG/setup-$s.log"; echo "setup of $s failed" >&2; exit 1; }
  fi
done

# ---- one server run --------------------------------------------------------------------------

SERVER_PID=""
DATA_DIR=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
  if [ -n "$DATA_DIR" ]; then rm -rf "$DATA_DIR"; DATA_DIR=""; fi
}
trap stop_server EXIT INT TERM

wait_healthy() {  # port: up to 20 s
  for _ in $(seq 200); do
    if curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$1/health"; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

start_server() {  # name port logfile
  local name="$1" port="$2" log="$3"
  case "$name" in
    hubbub)
      DATA_DIR="$(mktemp -d "${DATA_PARENT:-$BENCH_HOME}/hubbub-data.XXXXXX")"
      # Default durable embedded history (redb, fsync per batch). Rate limits raised far above
      # the offered load so that no request is refused; everything else at its default.
      "${PRIO[@]}" taskset -c "$SERVER_CPUS" "$HUBBUB" --listen "127.0.0.1:$port" --data-dir "$DATA_DIR" \
        --jwt-secret "$CHAT_JWT_SECRET" --workers "$WORKERS" --log warn \
        --messages-per-sec 1000 --message-burst 1000 --user-messages-per-sec 1000 \
        --typing-per-sec 1000 --joins-per-sec 1000 \
        --connections-per-ip-per-sec 100000 --max-conns-per-user 100 ${HUBBUB_ARGS:-} > "$log" 2>&1 &
      ;;
    *)
      CHAT_HOST=127.0.0.1 "${PRIO[@]}" taskset -c "$SERVER_CPUS" "$BENCH_HOME/peers/$name/run.sh" "$port" > "$log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  if ! wait_healthy "$port"; then
    echo "$name did not become healthy on port $port; log:" >&2
    tail -20 "$log" >&2
    stop_server
    return 1
  fi
  sleep 1  # let start-up work (JIT, page cache) settle before the baseline RSS is read
}

# run_one LEVEL LABEL MODE NAME PORT LOADGEN-ARGS...
run_one() {
  local level="$1" label="$2" mode="$3" name="$4" port="$5"; shift 5
  local result="$OUT/$mode-$level-$name.json"
  echo "== $mode level $level ($label): $name  [load average $(cut -d' ' -f1-3 /proc/loadavg)]"
  if ! start_server "$name" "$port" "$LOG/$mode-$level-$name.server.log"; then
    echo "{\"name\":\"$name\",\"mode\":\"$mode\",\"level\":$level,\"label\":\"$label\",\"error\":\"server did not start\"}" > "$result"
    return 0
  fi
  python3 "$REPO/benches/compare.py" measure --name "$name" --server-pid "$SERVER_PID" \
    --mode "$mode" --out "$result" --cpus "$ALL_CPUS" --level "$level" --label "$label" -- \
    "${PRIO[@]}" taskset -c "$LOADGEN_CPUS" "$LOADGEN" "$@" --url "ws://127.0.0.1:$port/ws/chat" \
    --secret "$CHAT_JWT_SECRET" --threads "$LOADGEN_THREADS" --json "$result.loadgen" \
    2> "$LOG/$mode-$level-$name.loadgen.log" || echo "   (load generator exited non-zero; see $LOG)"
  stop_server
  python3 - "$result" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lg = r.get("loadgen")
if not lg:
    print("   failed:", r.get("error")); sys.exit()
lat = lg.get("latency_us") or {}
if r["mode"] == "idle":
    print(f"   held {r.get('held')}  {r.get('kib_per_conn') or 0:.2f} KiB/conn")
else:
    print(f"   delivered {lg['delivered_per_sec']:.0f}/s  p50 {lat.get('p50')} us  p99 {lat.get('p99')} us  "
          f"server {r['server_cpu_pct']:.0f}% ({r['server_us_per_delivery'] or 0:.2f} us/delivery)  "
          f"loadgen {r['loadgen_cpu_pct']:.0f}%  other {r['other_cpu_pct']:.0f}%  lost {lg['lost']}")
EOF
}

# ---- the runs ----------------------------------------------------------------------------------

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "kernel: $(uname -r)"
  echo "rustc: $(rustc -V)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc)"
  echo "server cpus: $SERVER_CPUS (hubbub --workers $WORKERS); load generator cpus: $LOADGEN_CPUS (--threads $LOADGEN_THREADS); scheduling: $SCHED"
  echo "scenario: classroom --clients $CLIENTS --room-size $ROOM_SIZE --rate {$RATES} --teacher-rate = rate --no-typing --size $SIZE --duration $DURATION"
  echo "idle: --clients $IDLE_CLIENTS"
} | tee "$OUT/machine.txt"

port="$BASE_PORT"
level=0
IFS=, read -r -a RATE_LIST <<< "$RATES"
for rate in "${RATE_LIST[@]}"; do
  level=$((level + 1))
  for s in "${SERVER_LIST[@]}"; do
    port=$((port + 1))
    # Typing frames are left out: the peers drop them while hubbub relays them, so with
    # them the servers would not do the same work.
    run_one "$level" "classroom, $CLIENTS clients, $rate msg/s each" load "$s" "$port" \
      classroom --clients "$CLIENTS" --room-size "$ROOM_SIZE" --rate "$rate" --teacher-rate "$rate" \
      --no-typing --size "$SIZE" --duration "$DURATION" --ramp 1000
  done
done

if [ "$IDLE_CLIENTS" -gt 0 ]; then
  for s in "${SERVER_LIST[@]}"; do
    port=$((port + 1))
    run_one 0 "idle, $IDLE_CLIENTS clients" idle "$s" "$port" \
      idle --clients "$IDLE_CLIENTS" --room-size "$ROOM_SIZE" --duration 15s --ramp 2000
  done
fi

python3 "$REPO/benches/compare.py" table "$OUT" --order "$SERVERS" | tee "$OUT/table.md"
echo "results in $OUT (table.md, one JSON per run, logs/)"
