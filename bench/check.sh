#!/usr/bin/env bash
# `check` on configs of N sets, each with one mistake (an unknown key in its `file:`), as
# issue 31 measured it: the time and peak memory to name every problem with its line, at each
# size, and each size's time against the first. Prints figures; asserts nothing.
#   bench/check.sh [N ...]          (default: 2000 8000)
#   BENCH_BIN=path/to/tokenkeeper   (default: a release build made here)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(2000 8000)
bin=${BENCH_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --locked --bin tokenkeeper
  bin=target/release/tokenkeeper
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%-8s %-10s %-10s %-10s %s\n' sets problems seconds "peak KiB" "x first"
first=""
for n in "${sizes[@]}"; do
  cfg=$work/c$n.yaml
  {
    printf 'state_dir: %s/state\nproviders:\n  vf:\n    kind: voucherify\n' "$work"
    printf '    base_url: http://127.0.0.1:9\n    app_id: { env: BENCH_ID }\n    app_token: { env: BENCH_TOKEN }\nscope_sets:\n'
    for ((i = 0; i < n; i++)); do
      printf '  - name: s%d\n    provider: vf\n    scopes: [orders]\n    file: { path: %s/t/s%d.token, mdoe: "0600" }\n' "$i" "$work" "$i"
    done
  } > "$cfg"
  chmod 600 "$cfg"
  out=$work/out
  /usr/bin/time -f '%e %M' -o "$work/time" env BENCH_ID=a BENCH_TOKEN=b "$bin" check --offline -c "$cfg" > /dev/null 2> "$out" || true
  read -r secs kib < <(tail -1 "$work/time")
  # A problem counts when it carries its line: `FILE:LINE:COL: at: message`.
  located=$(grep -c "^error: $cfg:[0-9]*:[0-9]*: scope_sets\[" "$out" || true)
  [ -n "$first" ] || first=$secs
  ratio=$(awk -v a="$secs" -v b="$first" 'BEGIN { printf "%.1f", (b > 0 ? a / b : 0) }')
  printf '%-8s %-10s %-10s %-10s %s\n' "$n" "$located" "$secs" "$kib" "$ratio"
done
