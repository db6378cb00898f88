#!/usr/bin/env bash
# The performance benchmark (docs/performance.md): builds tokenkeeper and the harness in
# release mode, then runs every scenario BENCH_RUNS times (default 3) against a local fake
# provider and prints the median of each figure beside its target. About 4 minutes.
#   BENCH_RUNS=5 BENCH_IDLE_SECS=60 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins --examples
exec target/release/examples/bench run
