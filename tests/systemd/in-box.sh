#!/bin/bash
# Runs inside the systemd-box container (systemd as PID 1), as root, after the host script
# copied in the binary, the shipped unit, the test drop-in and the files below. Prints one
# PASS/FAIL/SKIP line per check and exits non-zero if any check failed.
set -u
PORT=$1
UNIT=tokenkeeper.service
CFG=/etc/tokenkeeper/config.yaml
RUN=/run/tokenkeeper
fail=0
pass() { echo "PASS: $*"; }
bad() { echo "FAIL: $*"; fail=1; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else bad "$what"; fi; }
mainpid() { systemctl show -P MainPID $UNIT; }
introspect() {  # prints the provider's answer for token $1
  curl -s -X POST "http://127.0.0.1:$PORT/v1/oauth/introspect" \
    -H 'X-App-Id: dev-app-id' -H 'X-App-Token: dev-app-token' \
    --data-urlencode "access_token=$1"
}
fingerprint() { printf %s "$1" | sha256sum | cut -c1-8; }

echo "== $(systemctl --version | head -1)"

# ---- install, as docs/operator.md tells an operator to
systemd-sysusers >/dev/null
systemd-tmpfiles --create tokenkeeper.conf
chown root:tokenkeeper $CFG; chmod 0640 $CFG   # the daemon reads it, nobody else
chmod 0600 /etc/tokenkeeper/credentials/*
install -d -m 0775 -g tokenkeeper /var/lib/node_exporter/textfile_collector
check "sysusers made user and group tokenkeeper" bash -c 'getent passwd tokenkeeper >/dev/null && getent group tokenkeeper >/dev/null'
check "credentials folder is root's alone (0700)" test "$(stat -c %a /etc/tokenkeeper/credentials)" = 700

# ---- the unit as shipped
out=$(systemd-analyze verify /etc/systemd/system/$UNIT 2>&1)
check "systemd-analyze verify is clean${out:+: $out}" test -z "$out"
score=$(systemd-analyze security --offline=yes --no-pager /etc/systemd/system/$UNIT 2>/dev/null \
        | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
echo "   exposure (systemd-analyze security --offline=yes, shipped unit): $score"
check "exposure $score <= 1.5" awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.5) }'
online=$(systemd-analyze security --no-pager $UNIT 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
echo "   exposure (loaded unit with the test drop-in): $online"

# ---- the fake provider
systemctl start tk-dev-provider.service
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done

# ---- start: returns only once every token file exists
systemctl start $UNIT; rc=$?
files_now="$(ls $RUN 2>&1)"
check "systemctl start returned 0" test $rc = 0
check "token files exist the moment start returns ($files_now)" \
  test -s $RUN/orders-sync.token -a -s $RUN/reports.json
pid=$(mainpid)
check "runs as the static user tokenkeeper" test "$(ps -o user= -p "$pid")" = tokenkeeper
check "token file is 0640 tokenkeeper:tokenkeeper" \
  test "$(stat -c '%a %U:%G' $RUN/orders-sync.token)" = "640 tokenkeeper:tokenkeeper"
st=$(systemctl show -P StatusText $UNIT)
check "STATUS= says how the tokens are ($st)" bash -c "[[ '$st' == '2 tokens fresh, next refresh in '* ]]"
tok=$(cat $RUN/orders-sync.token)
check "the token is live on the provider" grep -q '"active":true' <<<"$(introspect "$tok")"

# ---- a consumer gets read access through the group, and only through it
check "consumer with SupplementaryGroups=tokenkeeper reads the token" \
  bash -c "systemd-run --quiet --wait --pipe -p DynamicUser=yes -p SupplementaryGroups=tokenkeeper \
    cat $RUN/orders-sync.token >/dev/null"
check "consumer without the group cannot" \
  bash -c "! systemd-run --quiet --wait --pipe -p DynamicUser=yes cat $RUN/orders-sync.token 2>/dev/null"

# ---- the API key arrived by LoadCredential=, never by the environment
env_of=$(tr '\0' '\n' < /proc/$pid/environ)
check "CREDENTIALS_DIRECTORY is set for the daemon" \
  grep -qx "CREDENTIALS_DIRECTORY=/run/credentials/$UNIT" <<<"$env_of"
# The unit loads the whole folder under the ID tokenkeeper: systemd names each file
# tokenkeeper_FILE, which is where { credential: FILE } finds it.
check "the key is in the credentials directory, loaded with its folder" \
  test "$(cat /run/credentials/$UNIT/tokenkeeper_voucherify-app-token)" = dev-app-token
check "no Environment= in the unit and no key in the daemon's environment" \
  bash -c "[ -z \"\$(systemctl show -P Environment $UNIT)\" ] && ! tr '\\0' '\\n' < /proc/$pid/environ | grep -q dev-app-token"

# ---- tokenkeeper status, metrics, watchdog
st_out=$(tokenkeeper status -c $CFG); rc=$?
echo "$st_out" | sed 's/^/   | /'
check "tokenkeeper status exits 0 while running" test $rc = 0
check "status lists both sets fresh" bash -c "tokenkeeper status -c $CFG --json | python3 -c 'import json,sys; v=json.load(sys.stdin); assert v[\"running\"] and [s[\"state\"] for s in v[\"sets\"]]==[\"fresh\",\"fresh\"], v'"
prom=/var/lib/node_exporter/textfile_collector/tokenkeeper.prom
check "metrics textfile for node_exporter (0644) has the expiry" \
  bash -c "[ \"\$(stat -c %a $prom)\" = 644 ] && grep -q '^tokenkeeper_token_expiry_timestamp_seconds{set=\"orders-sync\",provider=\"dev\"}' $prom"
w1=$(systemctl show -P WatchdogTimestampMonotonic $UNIT); sleep 3
w2=$(systemctl show -P WatchdogTimestampMonotonic $UNIT)
check "WATCHDOG=1 pings arrive (WatchdogTimestamp $w1 -> $w2)" test "$w2" -gt "$w1"

# ---- reload: a new set without a restart; a broken config leaves it running on the old one
cp $CFG /root/config.orig
cat >> $CFG <<EOC
  - name: added
    provider: dev
    scopes: [api]
    file: { path: $RUN/added.token }
EOC
systemctl reload $UNIT
sleep 1
if journalctl -u $UNIT -o cat --no-pager | grep -q 'reloading the configuration is not supported'; then
  echo "SKIP: reload checks: this build does not reload on SIGHUP yet (tracker issue 4); they run once it does"
  echo "SKIP: - a new set appears without a restart"
  echo "SKIP: - a broken config leaves the daemon running on the old one"
  cp /root/config.orig $CFG
else
  check "reload added the new set's file" bash -c "for i in \$(seq 50); do [ -s $RUN/added.token ] && exit 0; sleep 0.2; done; exit 1"
  check "reload kept the same MainPID ($pid)" test "$(mainpid)" = "$pid"
  check "reload kept the unchanged set's token" test "$(cat $RUN/orders-sync.token)" = "$tok"
  echo 'scope_sets: [ this is not: valid' > $CFG
  systemctl reload $UNIT; sleep 1
  check "a broken config on reload leaves it active" systemctl is-active -q $UNIT
  check "... with the same MainPID" test "$(mainpid)" = "$pid"
  check "... and the old files in place" test -s $RUN/orders-sync.token -a -s $RUN/added.token
  cp /root/config.orig $CFG
  systemctl reload $UNIT; sleep 1
fi

# ---- journal: structured fields, no secret
journalctl --sync
fp=$(fingerprint "$tok")
check "journalctl -u tokenkeeper SET=orders-sync finds its lines" \
  bash -c "journalctl -u $UNIT SET=orders-sync -o cat --no-pager | grep -q 'token written'"
check "token-written record has SET, PROVIDER, FINGERPRINT=$fp, EXPIRES_AT" \
  bash -c "journalctl -u $UNIT -o json --no-pager | python3 -c '
import json, sys
recs = [json.loads(l) for l in sys.stdin]
ok = [r for r in recs if r.get(\"MESSAGE\") == \"token written\" and r.get(\"SET\") == \"orders-sync\"
      and r.get(\"PROVIDER\") == \"dev\" and r.get(\"FINGERPRINT\") == \"$fp\" and r.get(\"EXPIRES_AT\")]
sys.exit(0 if ok else 1)'"
tokens=("$tok" "$(python3 -c 'import json; print(json.load(open("/run/tokenkeeper/reports.json"))["access_token"])')")
[ -s $RUN/added.token ] && tokens+=("$(cat $RUN/added.token)")

# ---- stop: every token revoked (asked of the provider), files removed
systemctl stop $UNIT
journalctl --sync
check "stop exited cleanly (Result=$(systemctl show -P Result $UNIT), status $(systemctl show -P ExecMainStatus $UNIT))" \
  test "$(systemctl show -P Result $UNIT)" = success -a "$(systemctl show -P ExecMainStatus $UNIT)" = 0
for t in "${tokens[@]}"; do
  check "token $(fingerprint "$t") is no longer live on the provider" \
    grep -q '"active":false' <<<"$(introspect "$t")"
done
check "journal: stopped after revoking every token" \
  bash -c "journalctl -u $UNIT -o cat --no-pager | grep -q 'stopped: revoked .* tokens across'"
check "token files removed" test ! -e $RUN/orders-sync.token -a ! -e $RUN/reports.json
journal=$(journalctl -u $UNIT -o json --no-pager)
leaked=0
for t in "${tokens[@]}" dev-app-token; do grep -qF -- "$t" <<<"$journal" && leaked=1; done
check "no token and no API key anywhere in the unit's journal" test $leaked = 0
out=$(tokenkeeper status -c $CFG); rc=$?
check "tokenkeeper status exits 3 after stop: $(head -1 <<<"$out")" test $rc = 3

# ---- a bad config is not restarted into (RestartPreventExitStatus=78)
cp $CFG /root/config.good
echo 'scope_sets: []' > $CFG
systemctl start $UNIT 2>/dev/null
sleep 6   # longer than RestartSec=5s
check "bad config: exit 78, failed, not restarted (NRestarts=$(systemctl show -P NRestarts $UNIT))" \
  test "$(systemctl show -P ExecMainStatus $UNIT)" = 78 -a "$(systemctl show -P NRestarts $UNIT)" = 0 \
       -a "$(systemctl is-active $UNIT)" = failed
cp /root/config.good $CFG

# ---- the unit unchanged, for keys in files of the operator's choosing and an empty
# credentials folder: nothing in it names a vendor's files
systemctl reset-failed $UNIT
install -d -m 0750 -g tokenkeeper /etc/tokenkeeper/keys
for k in app-id app-token; do
  mv /etc/tokenkeeper/credentials/voucherify-$k /etc/tokenkeeper/keys/$k
  chown tokenkeeper:tokenkeeper /etc/tokenkeeper/keys/$k; chmod 0400 /etc/tokenkeeper/keys/$k
done
sed -i 's|{ credential: voucherify-app-id }|{ file: /etc/tokenkeeper/keys/app-id }|; s|{ credential: voucherify-app-token }|{ file: /etc/tokenkeeper/keys/app-token }|' $CFG
check "the credentials folder is empty now" test -z "$(ls -A /etc/tokenkeeper/credentials)"
systemctl start $UNIT
check "keys in files, empty credentials folder: the unit starts (active)" \
  test "$(systemctl is-active $UNIT)" = active
check "... and writes the token files" test -s /run/tokenkeeper/orders-sync.token
systemctl stop $UNIT
check "... and stops cleanly (Result=$(systemctl show -P Result $UNIT))" \
  test "$(systemctl show -P Result $UNIT)" = success
cp /root/config.good $CFG

echo "== journalctl -u tokenkeeper (short)"
journalctl -u $UNIT --no-pager -o short-precise | tail -25
[ $fail = 0 ] && echo "SYSTEMD-BOX OK" || echo "SYSTEMD-BOX FAILED"
exit $fail
