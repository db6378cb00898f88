#!/usr/bin/env bash
# The performance benchmark (docs/performance.md): builds tokenkeeper and the harness in release
# mode, then measures in the production layout (token files on a tmpfs it mounts as root at
# /run/tkbench-PID; the state directory on the disk, under target/bench-state) and says so: the
# fake provider's ceiling, 10 sets idle, and a scaling table for 1,000, 10,000 and 100,000
# sets, each beside its target.
# About 10 minutes with the defaults.
#   BENCH_RUNS=3 BENCH_LARGE_RUNS=1 BENCH_IDLE_SECS=60 BENCH_SCALES=1000,10000,100000
#   BENCH_STATE_DIR=DIR BENCH_TOKENS_DIR=DIR
#   BENCH_BASELINE_BIN=path/to/another/tokenkeeper   # its figures in the same run, beside
#   BENCH_BASELINE_SCALES=1000,10000                 # the sizes for that one (default: the same)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins --examples
exec target/release/examples/bench run
