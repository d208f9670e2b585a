#!/usr/bin/env bash
# Fuzz the parsers that face the internet, each for a short while.
#
#   scripts/fuzz.sh [SECONDS]      SECONDS per target (default 20)
#
# Environment:
#   FUZZ_TARGETS="ws_decoder ..."   which targets (default: all three)
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
    # A debug build: it is a thin command-line wrapper, and this halves the
    # install time. Its own target dir, so it never touches the fuzz build.
    CARGO_TARGET_DIR=/tmp/target-cargo-fuzz-install \
        cargo install --locked --debug --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# --- build all targets at once (one cargo run, shared dependencies) -------------
# 16 codegen units instead of cargo-fuzz's 1: a much quicker build on 2
# cores, for a few percent of fuzzing speed.
say "building fuzz targets (sanitizer: $SANITIZER, into $CARGO_TARGET_DIR)"
cargo fuzz build --fuzz-dir fuzz --sanitizer "$SANITIZER" --codegen-units 16

# --- run ------------------------------------------------------------------------
failed=()
for target in $TARGETS; do
    seeds=fuzz/seeds/$target
    corpus=fuzz/corpus/$target        # scratch: grows at run time, git-ignored
    mkdir -p "$corpus"  # crashing inputs go to fuzz/artifacts/$target/ (git-ignored)
    [ -d "$seeds" ] || { echo "missing seed corpus $seeds" >&2; exit 2; }
    dict=()
    [ -f "fuzz/dict/$target.dict" ] && dict=("-dict=fuzz/dict/$target.dict")
    log=$CARGO_TARGET_DIR/fuzz-$target.log

    say "fuzzing $target for ${SECONDS_PER_TARGET}s"
    # New inputs go to the first corpus dir; the seeds dir is only read.
    # -timeout: an input taking over 10 s counts as a hang (a crash).
    status=0
    cargo fuzz run --fuzz-dir fuzz --sanitizer "$SANITIZER" --codegen-units 16 \
        "$target" "$corpus" "$seeds" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${dict[@]}" \
        >"$log" 2>&1 || status=$?
    grep -E '^#[0-9]+ +(INITED|DONE)' "$log" || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        echo "!! $target FAILED (exit $status); last lines of $log:" >&2
        tail -n 40 "$log" >&2
        crash=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | awk '{print $NF}')
        if [ -n "$crash" ]; then
            echo "!! crashing input: $crash" >&2
            echo "!! replay: CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo fuzz run --fuzz-dir fuzz --sanitizer $SANITIZER $target $crash" >&2
        fi
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    say "fuzzing FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
say "fuzzing passed: $TARGETS, ${SECONDS_PER_TARGET}s each"
