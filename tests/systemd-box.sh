#!/usr/bin/env bash
# tokenkeeper under a real systemd (PID 1 in a throw-away nspawn container, via
# tests/tools/systemd-box.sh): the shipped unit, unchanged, with test specifics only in a
# drop-in; the built binary; a config pointing at `tokenkeeper dev-provider` on 127.0.0.1.
# The checks themselves are in tests/systemd/in-box.sh.
#
# Usage (as root; the first run builds a cached root file system in about 75 s):
#   cargo build && tests/systemd-box.sh [BINARY]      # default BINARY: target/debug/tokenkeeper
# Environment: SYSTEMD_BOX (path to systemd-box.sh), SDBOX_* (see systemd-box.sh --help).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
box=${SYSTEMD_BOX:-$root/tests/tools/systemd-box.sh}
bin=${1:-$root/target/debug/tokenkeeper}
[ -x "$bin" ] || { echo "no binary at $bin: run cargo build first" >&2; exit 2; }
[ -f "$box" ] || { echo "no systemd-box.sh at $box" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The box shares the host's network namespace: take a port nobody holds right now.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# Test specifics, as an operator would add them: start after the fake provider, a short
# watchdog so pings show within seconds, and the metrics textfile folder writable.
cat > "$work/test.conf" <<EOC
[Unit]
Requires=tk-dev-provider.service
After=tk-dev-provider.service

[Service]
WatchdogSec=4s
ReadWritePaths=/var/lib/node_exporter/textfile_collector
EOC

cat > "$work/tk-dev-provider.service" <<EOC
[Unit]
Description=fake Voucherify provider for the tokenkeeper systemd test

[Service]
ExecStart=/usr/local/bin/tokenkeeper dev-provider --listen 127.0.0.1:$port --lifetime 300s
DynamicUser=yes
EOC

cat > "$work/config.yaml" <<EOC
state_dir: /var/lib/tokenkeeper
shutdown_timeout: 20s
metrics:
  textfile: /var/lib/node_exporter/textfile_collector/tokenkeeper.prom
providers:
  dev:
    kind: voucherify
    base_url: http://127.0.0.1:$port
    app_id: { credential: voucherify-app-id }
    app_token: { credential: voucherify-app-token }
scope_sets:
  - name: orders-sync
    provider: dev
    scopes: [orders, customers]
    file: { path: /run/tokenkeeper/orders-sync.token }
  - name: reports
    provider: dev
    scopes: [vouchers]
    file: { path: /run/tokenkeeper/reports.json, format: json }
EOC
printf dev-app-id > "$work/app-id"
printf dev-app-token > "$work/app-token"

exec bash "$box" run -t 240 \
  "$bin:/usr/local/bin/tokenkeeper" \
  "$root/systemd/tokenkeeper.service:/etc/systemd/system/tokenkeeper.service" \
  "$root/systemd/tokenkeeper.sysusers:/usr/lib/sysusers.d/tokenkeeper.conf" \
  "$root/systemd/tokenkeeper.tmpfiles:/usr/lib/tmpfiles.d/tokenkeeper.conf" \
  "$work/test.conf:/etc/systemd/system/tokenkeeper.service.d/test.conf" \
  "$work/tk-dev-provider.service:/etc/systemd/system/tk-dev-provider.service" \
  "$work/config.yaml:/etc/tokenkeeper/config.yaml" \
  "$work/app-id:/etc/tokenkeeper/credentials/voucherify-app-id" \
  "$work/app-token:/etc/tokenkeeper/credentials/voucherify-app-token" \
  "$root/tests/systemd/in-box.sh:/root/in-box.sh" \
  -- /root/in-box.sh "$port"
