#!/usr/bin/env bash
# Regenerates the man pages and shell completions that packages ship, from the clap definitions
# of the binary given (default: a fresh debug build). tests/packaging.rs fails when the files
# here are not what the binary prints, naming this script.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --quiet --bin tokenkeeper
  bin=target/debug/tokenkeeper
fi
rm -rf packaging/man packaging/completions
mkdir -p packaging/man packaging/completions
"$bin" manpage --dir packaging/man
"$bin" completions bash > packaging/completions/tokenkeeper.bash
"$bin" completions zsh > packaging/completions/_tokenkeeper
"$bin" completions fish > packaging/completions/tokenkeeper.fish
echo "regenerated packaging/man and packaging/completions"
