#!/bin/bash
# Runs inside the systemd-box container, as root, for tests/systemd-box-deb.sh: installs,
# runs, upgrades (a newer version over the running service), removes and purges the Debian
# package. One PASS/FAIL line per check; exits non-zero
# if any failed.
set -u
PORT=$1
UNIT=tokenkeeper.service
fail=0
pass() { echo "PASS: $*"; }
bad() { echo "FAIL: $*"; fail=1; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else bad "$what"; fi; }
introspect() {
  curl -s -X POST "http://127.0.0.1:$PORT/v1/oauth/introspect" \
    -H 'X-App-Id: dev-app-id' -H 'X-App-Token: dev-app-token' \
    --data-urlencode "access_token=$1"
}

echo "== $(systemctl --version | head -1)"
out=$(dpkg -i /root/tokenkeeper.deb 2>&1); rc=$?
check "dpkg -i installs the package (exit $rc)" test $rc = 0
[ $rc = 0 ] || echo "$out"
check "the binary is /usr/bin/tokenkeeper: $(/usr/bin/tokenkeeper --version)" test -x /usr/bin/tokenkeeper
check "user and group tokenkeeper exist" bash -c 'getent passwd tokenkeeper >/dev/null && getent group tokenkeeper >/dev/null'
check "the credentials folder is root's alone (0700)" test "$(stat -c %a /etc/tokenkeeper/credentials)" = 700
check "systemd knows the unit ($(systemctl show -P LoadState $UNIT))" test "$(systemctl show -P LoadState $UNIT)" = loaded
check "the install neither enabled ($(systemctl is-enabled $UNIT 2>&1)) nor started it" \
  test "$(systemctl is-enabled $UNIT 2>&1)" = disabled -a "$(systemctl is-active $UNIT)" = inactive
page=$(ls /usr/share/man/man1/tokenkeeper.1* 2>/dev/null | head -1)
check "man page tokenkeeper(1) installed ($page)" test -n "$page"
text=$(MANPAGER=cat MANWIDTH=100 man tokenkeeper 2>/dev/null)
check "man tokenkeeper shows the commands" bash -c 'for c in run check revoke once exec status; do grep -qw -- "$c" <<<"$1" || exit 1; done' _ "$text"
check "a page per subcommand (tokenkeeper-run(1))" bash -c 'ls /usr/share/man/man1/tokenkeeper-run.1* >/dev/null'
words=$(bash -c 'source /usr/share/bash-completion/completions/tokenkeeper
  COMP_WORDS=(tokenkeeper ""); COMP_CWORD=1; COMP_LINE="tokenkeeper "; COMP_POINT=12
  _tokenkeeper tokenkeeper "" tokenkeeper; echo "${COMPREPLY[*]}"')
check "tokenkeeper <TAB> completes the commands in bash ($words)" bash -c '[[ " $1 " == *" run "* && " $1 " == *" check "* && " $1 " == *" once "* ]]' _ "$words"
check "zsh and fish completions installed" test -f /usr/share/zsh/vendor-completions/_tokenkeeper -a -f /usr/share/fish/vendor_completions.d/tokenkeeper.fish
check "docs and examples under /usr/share/doc/tokenkeeper" test -f /usr/share/doc/tokenkeeper/README.md -a -f /usr/share/doc/tokenkeeper/examples/tokenkeeper.example.yaml

# ---- run it with keys in files: the shipped unit, unchanged
cp /root/tk-dev-provider.service /etc/systemd/system/
systemctl daemon-reload
systemctl start tk-dev-provider.service
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
install -d -m 0750 -g tokenkeeper /etc/tokenkeeper/keys
for k in app-id app-token; do install -m 0400 -o tokenkeeper -g tokenkeeper /root/$k /etc/tokenkeeper/keys/$k; done
install -m 0640 -o root -g tokenkeeper /root/config.yaml /etc/tokenkeeper/config.yaml
systemctl enable --now $UNIT 2>/dev/null; rc=$?
check "systemctl enable --now starts it (exit $rc, $(systemctl is-active $UNIT))" test $rc = 0 -a "$(systemctl is-active $UNIT)" = active
tok=$(cat /run/tokenkeeper/orders-sync.token 2>/dev/null)
check "the token file is written" test -n "$tok"
check "the token is live on the provider" grep -q '"active":true' <<<"$(introspect "$tok")"

# ---- upgrade: a newer package over the running service, a reader polling the file every
# millisecond as a legacy application that reads its token per request does
pid=$(systemctl show -P MainPID $UNIT)
issued_before=$(journalctl -u tk-dev-provider.service -o cat | grep -c "token issued")
tk_log() { journalctl -u $UNIT -o cat --no-pager; }
written_before=$(tk_log | grep -c "token written")
revoked_before=$(tk_log | grep -c "revoked")
rm -f /tmp/reader.stop /tmp/reader.gaps /tmp/reader.count
reader() {
  local t n=0
  while [ ! -e /tmp/reader.stop ]; do
    t=""
    read -r t < /run/tokenkeeper/orders-sync.token 2>/dev/null
    if [ -z "$t" ]; then echo "missing or empty" >> /tmp/reader.gaps
    elif [ "$t" != "$tok" ]; then echo "another token: ${t:0:8}" >> /tmp/reader.gaps; fi
    n=$((n + 1))
    sleep 0.001
  done
  echo $n > /tmp/reader.count
}
reader & rpid=$!
out=$(dpkg -i /root/tokenkeeper-newer.deb 2>&1); rc=$?
# A little more reading after the takeover, then the reader stops.
sleep 0.5; touch /tmp/reader.stop; wait $rpid
check "dpkg -i of a newer version upgrades the package (exit $rc): $(dpkg-query -W -f '${Version}' tokenkeeper)" test $rc = 0
[ $rc = 0 ] || echo "$out"
check "the service is still active ($(systemctl is-active $UNIT)), same PID ($(systemctl show -P MainPID $UNIT) = $pid)" \
  test "$(systemctl is-active $UNIT)" = active -a "$(systemctl show -P MainPID $UNIT)" = "$pid"
check "the new binary runs ($(readlink /proc/$pid/exe), inode $(stat -Lc %i /proc/$pid/exe) = $(stat -c %i /usr/bin/tokenkeeper))" \
  test "$(readlink /proc/$pid/exe)" = /usr/bin/tokenkeeper -a "$(stat -Lc %i /proc/$pid/exe)" = "$(stat -c %i /usr/bin/tokenkeeper)"
check "it took the tokens over ($(tk_log | grep -c 'taking over from the previous binary') takeover)" bash -c 'journalctl -u tokenkeeper.service -o cat | grep -q "taking over from the previous binary"'
check "the reader read the file $(cat /tmp/reader.count 2>/dev/null) times and never found it missing, empty or changed ($(sort /tmp/reader.gaps 2>/dev/null | uniq -c | tr '\n' ' '))" \
  test ! -s /tmp/reader.gaps -a "$(cat /tmp/reader.count 2>/dev/null || echo 0)" -gt 100
check "the token is unchanged and live on the provider" bash -c '[ "$(cat /run/tokenkeeper/orders-sync.token)" = "$1" ] && grep -q "\"active\":true" <<<"$2"' _ "$tok" "$(introspect "$tok")"
issued_after=$(journalctl -u tk-dev-provider.service -o cat | grep -c "token issued")
check "the provider issued nothing during the upgrade ($issued_before then $issued_after)" test "$issued_after" = "$issued_before" -a "$issued_before" -gt 0
check "tokenkeeper wrote no new token and revoked nothing during the upgrade" \
  test "$(tk_log | grep -c 'token written')" = "$written_before" -a "$(tk_log | grep -c revoked)" = "$revoked_before"

# ---- remove: stops the service, which revokes
out=$(dpkg -r tokenkeeper 2>&1); rc=$?
check "dpkg -r removes the package (exit $rc)" test $rc = 0
[ $rc = 0 ] || echo "$out"
check "the service is stopped ($(systemctl is-active $UNIT))" test "$(systemctl is-active $UNIT)" != active
check "the token is no longer live on the provider" grep -q '"active":false' <<<"$(introspect "$tok")"
check "the token file is gone" test ! -e /run/tokenkeeper/orders-sync.token
check "the binary is gone" test ! -e /usr/bin/tokenkeeper
out=$(dpkg -P tokenkeeper 2>&1); rc=$?
check "dpkg -P purges it (exit $rc)" test $rc = 0
check "dpkg no longer knows the package" bash -c '! dpkg -s tokenkeeper >/dev/null 2>&1'
check "the operator's config is left in place" test -f /etc/tokenkeeper/config.yaml
leaked=$(journalctl -u $UNIT --no-pager -o cat | grep -c -e "$tok" -e dev-app-token)
check "no token and no key in the unit's journal" test "$leaked" = 0

[ $fail = 0 ] && echo "SYSTEMD-BOX-DEB OK" || echo "SYSTEMD-BOX-DEB FAILED"
exit $fail
