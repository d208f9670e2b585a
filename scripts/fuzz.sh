#!/usr/bin/env bash
# Fuzz the parsers that face the internet, each for a short while.
#
#   scripts/fuzz.sh [SECONDS]      SECONDS per target (default 20)
#
# Environment:
#   FUZZ_TARGETS="ws_decoder ..."   which targets (default: all three)
#   FUZZ_PARALLEL=0                 run the targets one after the other
#                                   (default: all at the same time)
#   FUZZ_SANITIZER=address          build with AddressSanitizer (default none;
#                                   needs RUSTC_BOOTSTRAP=1, set here, because
#                                   -Zsanitizer is a nightly flag)
#   CARGO_TARGET_DIR                build directory (default /tmp/target-fuzz,
#                                   with -address appended for ASan)
#
# Works on stable Rust: cargo-fuzz's default AddressSanitizer needs nightly,
# but `--sanitizer none` uses only stable rustc flags and libFuzzer still gets
# full coverage feedback (see fuzz/README.md). Installs a pinned cargo-fuzz
# when missing. Exits non-zero when a target crashes, and prints the input
# that did it and how to replay it.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-20}
[[ $SECONDS_PER_TARGET =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
TARGETS=${FUZZ_TARGETS:-ws_decoder http_head protocol_parse}
SANITIZER=${FUZZ_SANITIZER:-none}
CARGO_FUZZ_VERSION=0.13.2

if [ "$SANITIZER" = none ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-fuzz}
else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-fuzz}-$SANITIZER
    export RUSTC_BOOTSTRAP=1
fi

say() { printf '\n==> %s\n' "$*"; }

# --- cargo-fuzz ---------------------------------------------------------------
installed=$(cargo fuzz --version 2>/dev/null || true)
if [ "$installed" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION (found: ${installed:-none})"
    # A debug build: it is a thin command-line wrapper, and this saves ~40% of
    # install time. Its own target dir, so it never touches the fuzz build.
    CARGO_TARGET_DIR=/tmp/target-cargo-fuzz-install \
        cargo install --locked --debug --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
    rm -rf /tmp/target-cargo-fuzz-install
fi

# --- build all targets at once (one cargo run, shared dependencies) -------------
# 16 codegen units instead of cargo-fuzz's 1: a much quicker build on 2
# cores, for a little fuzzing speed.
say "building fuzz targets (sanitizer: $SANITIZER, into $CARGO_TARGET_DIR) at ${SECONDS}s"
cargo fuzz build --fuzz-dir fuzz --sanitizer "$SANITIZER" --codegen-units 16

# --- run ------------------------------------------------------------------------
# All targets at once by default (FUZZ_PARALLEL=0: one after the other): on
# 2 cores that turns 3 x SECONDS into SECONDS of wall time.
run_target() {
    local target=$1 log=$2 dict=()
    [ -f "fuzz/dict/$target.dict" ] && dict=("-dict=fuzz/dict/$target.dict")
    # New inputs go to the first corpus dir (scratch, git-ignored); the seeds
    # dir is only read. Crashes go to fuzz/artifacts/<target>/ (git-ignored).
    # -timeout: an input that takes over 10 s counts as a hang, i.e. a crash.
    mkdir -p "fuzz/corpus/$target"
    cargo fuzz run --fuzz-dir fuzz --sanitizer "$SANITIZER" --codegen-units 16 \
        "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${dict[@]}" >"$log" 2>&1
}

declare -A pid status
for target in $TARGETS; do
    [ -d "fuzz/seeds/$target" ] || { echo "missing seed corpus fuzz/seeds/$target" >&2; exit 2; }
done
say "fuzzing $TARGETS for ${SECONDS_PER_TARGET}s each (at ${SECONDS}s)"
for target in $TARGETS; do
    log=$CARGO_TARGET_DIR/fuzz-$target.log
    if [ "${FUZZ_PARALLEL:-1}" = 1 ]; then
        run_target "$target" "$log" &
        pid[$target]=$!
    else
        status[$target]=0
        run_target "$target" "$log" || status[$target]=$?
    fi
done
for target in "${!pid[@]}"; do
    status[$target]=0
    wait "${pid[$target]}" || status[$target]=$?
done

failed=()
for target in $TARGETS; do
    log=$CARGO_TARGET_DIR/fuzz-$target.log
    echo "--- $target (log: $log)"
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$log" || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$log" || true
    if [ "${status[$target]}" -ne 0 ]; then
        failed+=("$target")
        echo "!! $target FAILED (exit ${status[$target]}); end of its log:" >&2
        tail -n 40 "$log" >&2
        crash=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | awk '{print $NF}')
        if [ -n "$crash" ]; then
            echo "!! crashing input: $crash" >&2
            echo "!! replay: CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo fuzz run" \
                "--fuzz-dir fuzz -s $SANITIZER --codegen-units 16 $target $crash" >&2
        fi
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    say "fuzzing FAILED: ${failed[*]} (crashing inputs under fuzz/artifacts/) after ${SECONDS}s"
    exit 1
fi
say "fuzzing passed: $TARGETS, ${SECONDS_PER_TARGET}s each; ${SECONDS}s in all"
