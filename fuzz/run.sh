#!/usr/bin/env bash
# Run every fuzz target for a bounded time and report the executions each one did.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET]      (default 60)
#
# Exit status: 0 when no target crashed; 1 when one did (its input is in
# fuzz/artifacts/TARGET/); 2 when cargo-fuzz could not be installed or the targets could not
# be built, so that a broken setup never passes for a clean run.
#
# Needs only the stable toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer and
# friends) to rustc, which RUSTC_BOOTSTRAP=1 lets a stable rustc accept. Set
# FUZZ_SANITIZER=none to build without AddressSanitizer.
set -uo pipefail
cd "$(dirname "$0")"

seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

# The version this script was written and run with; a newer one is used if already installed.
cargo_fuzz_version=0.13.2
sanitizer=${FUZZ_SANITIZER:-address}
# A slow input is a bug too (a config that takes seconds to parse stalls a reload); 25 s
# is far above any real input's time even under ASAN on a loaded two-core machine.
per_input_timeout=25

loud() {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! FUZZING DID NOT RUN: $*"
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $cargo_fuzz_version"
    if ! cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"; then
        loud "cargo install cargo-fuzz failed"
        exit 2
    fi
fi

export RUSTC_BOOTSTRAP=1
# The same flags for build and run, or `cargo fuzz run` would build everything again.
flags=(--sanitizer "$sanitizer")

echo "== cargo fuzz build (sanitizer: $sanitizer)"
if ! cargo fuzz build "${flags[@]}"; then
    loud "cargo fuzz build failed"
    exit 2
fi

mapfile -t targets < <(cargo fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
    loud "cargo fuzz list found no targets"
    exit 2
fi

mkdir -p logs
summary=()
crashed=0
for t in "${targets[@]}"; do
    # corpus/T gathers what libFuzzer finds (not committed); seeds/T is read only.
    mkdir -p "corpus/$t" "seeds/$t"
    log="logs/$t.log"
    echo "== $t: ${seconds}s (log: fuzz/$log)"
    cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout="$per_input_timeout" -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    execs=$(awk '/^stat::number_of_executed_units:/ { n = $2 } END { print n }' "$log")
    if [ -z "$execs" ]; then
        # No final stats (libFuzzer died before printing them): the last #N line is the count.
        execs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
    fi
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        result="CRASHED (exit $rc)"
        crashed=$((crashed + 1))
        echo "-- $t: what went wrong (whole log: fuzz/$log)"
        # The panic message or sanitizer report, without the long backtraces after them.
        grep -E -A 2 'panicked at|ERROR: |SUMMARY: |Failing input' "$log" | head -n 30
        for a in artifacts/"$t"/*; do
            [ -e "$a" ] && echo "-- reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $t fuzz/$a"
        done
    fi
    summary+=("$(printf '%-24s %6ss %12s executions  %s' "$t" "$seconds" "${execs:-?}" "$result")")
done

echo
echo "== fuzz summary"
printf 'fuzz: %s\n' "${summary[@]}"
echo "fuzz: ${#targets[@]} targets, $crashed crashed"
[ "$crashed" -eq 0 ] || exit 1
