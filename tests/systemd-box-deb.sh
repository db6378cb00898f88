#!/usr/bin/env bash
# The Debian package under a real systemd (tests/tools/systemd-box.sh): `dpkg -i` the .deb
# `cargo deb` built, check what it installed (user, folders, man pages, bash completion) and
# that it neither enabled nor started the service, start it with a config whose keys are in
# files, install a newer version over it (a restart in place: every token kept, no file ever
# missing), then `dpkg -r` (which stops it: every token revoked) and `dpkg -P`.
# The checks are in tests/systemd/in-box-deb.sh.
#
# Usage (as root): tests/systemd-box-deb.sh [PACKAGE.deb NEWER.deb]
#   default: both built here with `cargo deb --profile dev`, as versions 0.3.0~box1 and
#   0.3.0~box2. The postinst restarts in place only from 0.3.0 on (its pre-releases too):
#   the daemon before cannot, so a package built as 0.2.0 would be restarted instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
box=${SYSTEMD_BOX:-$root/tests/tools/systemd-box.sh}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ $# -ge 2 ]; then
  deb=$1 newer=$2
else
  for v in box1 box2; do
    (cd "$root" && cargo deb --profile dev --deb-version "0.3.0~$v" --output "$work/tokenkeeper-$v.deb") >&2
  done
  deb=$work/tokenkeeper-box1.deb newer=$work/tokenkeeper-box2.deb
fi
# Exit 1, not 2: 2 to 4 are the box's "this machine cannot host it", which CI skips.
[ -f "$deb" ] && [ -f "$newer" ] || { echo "no packages: give two, or let cargo deb build them" >&2; exit 1; }

# man-db in the box, so the check reads `man tokenkeeper` as an operator would (a second
# cached root file system; the first run builds it in about two minutes).
export SDBOX_EXTRA_PACKAGES=${SDBOX_EXTRA_PACKAGES:-man-db}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cat > "$work/tk-dev-provider.service" <<EOC
[Unit]
Description=fake Voucherify provider for the tokenkeeper package test

[Service]
ExecStart=/usr/bin/tokenkeeper dev-provider --listen 127.0.0.1:$port --lifetime 300s
# Each token it issues is logged, so the upgrade's check can count them.
Environment=RUST_LOG=debug
DynamicUser=yes
EOC

cat > "$work/config.yaml" <<EOC
state_dir: /var/lib/tokenkeeper
providers:
  dev:
    kind: voucherify
    base_url: http://127.0.0.1:$port
    app_id: { file: /etc/tokenkeeper/keys/app-id }
    app_token: { file: /etc/tokenkeeper/keys/app-token }
scope_sets:
  - name: orders-sync
    provider: dev
    scopes: [orders]
    file: { path: /run/tokenkeeper/orders-sync.token }
EOC
printf dev-app-id > "$work/app-id"
printf dev-app-token > "$work/app-token"

exec bash "$box" run -t 240 \
  "$deb:/root/tokenkeeper.deb" \
  "$newer:/root/tokenkeeper-newer.deb" \
  "$work/tk-dev-provider.service:/root/tk-dev-provider.service" \
  "$work/config.yaml:/root/config.yaml" \
  "$work/app-id:/root/app-id" \
  "$work/app-token:/root/app-token" \
  "$root/tests/systemd/in-box-deb.sh:/root/in-box-deb.sh" \
  -- /root/in-box-deb.sh "$port"
