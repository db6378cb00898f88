#!/usr/bin/env bash
# The store benchmark (docs/performance.md, "The store path"): builds tokenkeeper and the
# harness in release mode, then runs the same sets files only and files + a real OpenBao dev
# server, in the production layout (token files on a tmpfs, state on the disk), and prints
# their figures side by side with the store path's targets. Needs the `bao` the store tests
# install (run `cargo test --test store` once) or TOKENKEEPER_BAO. About 2 minutes.
#   BENCH_RUNS=3 BENCH_STORE_SETS=1000 BENCH_MOUNT_MAX_VERSIONS=2 BENCH_STATE_DIR=DIR BENCH_TOKENS_DIR=DIR
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins --examples
exec "${CARGO_TARGET_DIR:-target}/release/examples/bench" store
