#!/usr/bin/env bash
# Kept in the repository (from the team's shared tools, unchanged below this note) so that
# tests/systemd-box.sh and CI need nothing outside it.
# systemd-box.sh - run a REAL systemd (PID 1) in a throw-away systemd-nspawn
# container on a host whose own PID 1 is not systemd, copy files in, run one
# command inside (systemctl/journalctl work normally), then power off cleanly.
#
# USAGE (as root):
#   systemd-box.sh [run] [options] [FILE[:DEST]]... -- COMMAND [ARGS...]
#   systemd-box.sh build        # only install tools + build/reuse the rootfs
#   systemd-box.sh selftest     # Type=notify demo: start/reload/stop/journal,
#                               # LoadCredential, DynamicUser, RuntimeDirectory,
#                               # TimeoutStopSec escalation to SIGKILL
#   systemd-box.sh clean        # unmount/remove stale runs and cached rootfs
#
#   FILE[:DEST]  copied into the container before boot. Default DEST:
#                *.service|*.socket|*.timer|*.target|*.path|*.mount|*.slice|
#                *.automount -> /etc/systemd/system/ (drop-ins: give DEST, e.g.
#                ./o.conf:/etc/systemd/system/x.service.d/), anything else ->
#                /usr/local/bin/ (mode kept). FILE may be a directory.
#                DEST ending in "/" is a directory; parent dirs are created.
#   COMMAND      exec'd inside the booted container as root (via nsenter), after
#                `systemctl daemon-reload`. Use `bash -c '...'` for a script.
#                stdout/stderr stream to the caller; its exit code is returned
#                (124 = timed out).
#
# OPTIONS
#   -t, --timeout SEC       limit for COMMAND (default $SDBOX_TIMEOUT or 300)
#   -j, --save-journal FILE write the container's full journal (short-precise)
#                           to FILE on the host before shutdown
#   -k, --keep              keep the run dir (overlay upper dir, journal files
#                           under upper/var/log/journal, console.log)
#   -n, --nspawn-arg ARG    extra systemd-nspawn argument (repeatable), e.g.
#                           -n --bind-ro=/srv/data:/data  -n --setenv=X=1
#   -q, --quiet             less chatter on stderr
#
# ENVIRONMENT
#   SDBOX_DIR       cache dir (default /var/tmp/sdbox): rootfs-<key>/, runs/
#   SDBOX_SUITE     Debian suite (default: host VERSION_CODENAME, e.g. bookworm)
#   SDBOX_MIRROR    mirror (default: first Debian URI in host apt sources)
#   SDBOX_PACKAGES  comma list for debootstrap --include (see DEFAULT_PACKAGES)
#   SDBOX_EXTRA_PACKAGES  appended to SDBOX_PACKAGES (changes the cache key)
#   SDBOX_BOOT_TIMEOUT (60)  SDBOX_STOP_TIMEOUT (30)  SDBOX_TIMEOUT (300)
#
# EXAMPLES
#   systemd-box.sh myapp.service ./myapp -- bash -c '
#       systemctl start myapp && systemctl reload myapp && systemctl stop myapp
#       journalctl -u myapp --no-pager'
#   systemd-box.sh -k ./x.service:/etc/systemd/system/ ./cfg:/etc/x/cfg -- systemctl start x
#
# NOTES
#   * Network namespace is SHARED with the host (127.0.0.1 is the host's):
#     ports used in the box collide with host/other boxes.
#   * Every run boots a fresh copy-on-write overlay of the cached rootfs, so runs
#     are independent and the cache stays pristine. Concurrent runs are OK.
#   * Host has no systemd/machined, so nspawn runs with --register=no
#     --keep-unit, inside a private cgroup per run; `machinectl`/`systemd-run -M`
#     do NOT work - commands get in with nsenter instead.
#   * Box runs Debian 12's systemd 252 on cgroup v1/hybrid ("tainted: cgroupsv1"
#     in the journal, harmless). No Type=notify-reload (needs 253+); use
#     ExecReload=/bin/kill -HUP $MAINPID. A shell unit that calls
#     `systemd-notify --ready` needs NotifyAccess=all.
set -Eeuo pipefail

DEFAULT_PACKAGES="systemd,systemd-sysv,dbus,libnss-systemd,procps,python3,iproute2,curl,ca-certificates"
SDBOX_DIR=${SDBOX_DIR:-/var/tmp/sdbox}
SDBOX_BOOT_TIMEOUT=${SDBOX_BOOT_TIMEOUT:-60}
SDBOX_STOP_TIMEOUT=${SDBOX_STOP_TIMEOUT:-30}
SDBOX_TIMEOUT=${SDBOX_TIMEOUT:-300}
QUIET=0

log() { [ "$QUIET" = 1 ] || printf '[sdbox %(%T)T] %s\n' -1 "$*" >&2; }
die() { printf '[sdbox] ERROR: %s\n' "$1" >&2; exit "${2:-1}"; }
usage() { sed -n '2,/^set -Eeuo/{/^set -Eeuo/d;s/^# \{0,1\}//;p}' "$0"; }

[ "$(id -u)" = 0 ] || die "must run as root" 2

# ---------------------------------------------------------------- install
ensure_tools() {
  local need=()
  command -v systemd-nspawn >/dev/null || need+=(systemd-container)
  command -v debootstrap    >/dev/null || need+=(debootstrap)
  command -v nsenter        >/dev/null || need+=(util-linux)
  command -v flock          >/dev/null || need+=(util-linux)
  [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$SDBOX_DIR"; local alog=$SDBOX_DIR/apt.log
  { timeout 300 apt-get update -qq && timeout 600 apt-get install -y -qq \
      --no-install-recommends "${need[@]}"; } >"$alog" 2>&1 \
    || { tail -20 "$alog" >&2; die "apt-get install ${need[*]} failed (log: $alog)" 3; }
}

# ---------------------------------------------------------------- rootfs
host_suite() { . /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-bookworm}"; }

host_mirror() {   # first non-security Debian URI from the host's apt config
  local f u
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    u=$(awk 'tolower($1)=="uris:" {print $2; exit}' "$f")
    case "$u" in *debian-security*|"") ;; *debian*) echo "$u"; return;; esac
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    u=$(awk '$1=="deb" && $0 !~ /security/ { for(i=2;i<=NF;i++) if ($i ~ /^(http|https|file):/) {print $i; exit} }' "$f")
    [ -n "$u" ] && { echo "$u"; return; }
  done
  echo http://deb.debian.org/debian
}

SUITE=${SDBOX_SUITE:-$(host_suite)}
PACKAGES=${SDBOX_PACKAGES:-$DEFAULT_PACKAGES}${SDBOX_EXTRA_PACKAGES:+,$SDBOX_EXTRA_PACKAGES}
KEY=$(printf '%s|%s|v1' "$SUITE" "$PACKAGES" | sha1sum | cut -c1-12)
ROOTFS=$SDBOX_DIR/rootfs-$SUITE-$KEY

build_rootfs() {
  mkdir -p "$SDBOX_DIR/runs"
  exec 8>"$SDBOX_DIR/.build.lock"
  flock -w 1200 8 || die "timeout waiting for build lock" 3
  if [ -f "$ROOTFS/.sdbox-ok" ]; then flock -u 8; exec 8>&-; return 0; fi
  local mirror=${SDBOX_MIRROR:-$(host_mirror)} tmp=$ROOTFS.tmp t0=$SECONDS
  rm -rf "$tmp"
  log "debootstrap $SUITE from $mirror (+ $PACKAGES) -> $ROOTFS"
  if ! timeout 1200 debootstrap --variant=minbase --include="$PACKAGES" \
        "$SUITE" "$tmp" "$mirror" >"$SDBOX_DIR/debootstrap.log" 2>&1; then
    tail -20 "$SDBOX_DIR/debootstrap.log" >&2; rm -rf "$tmp"
    die "debootstrap failed (log: $SDBOX_DIR/debootstrap.log)" 3
  fi
  # --- make it a quiet, fast-booting, journal-friendly box
  echo sdbox > "$tmp/etc/hostname"
  printf '%s\n' "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" > "$tmp/etc/machine-id"
  mkdir -p "$tmp/var/log/journal" "$tmp/etc/systemd/journald.conf.d" "$tmp/etc/systemd/system.conf.d"
  printf '[Journal]\nStorage=persistent\nRateLimitBurst=0\nRateLimitIntervalSec=0\n' \
    > "$tmp/etc/systemd/journald.conf.d/sdbox.conf"
  printf '[Manager]\nDefaultTimeoutStartSec=30s\nDefaultTimeoutStopSec=15s\n' \
    > "$tmp/etc/systemd/system.conf.d/sdbox.conf"
  local u
  for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
           e2scrub_all.timer e2scrub_reap.service systemd-tmpfiles-clean.timer \
           console-getty.service getty@tty1.service; do
    ln -sf /dev/null "$tmp/etc/systemd/system/$u"
  done
  ln -sf /lib/systemd/system/multi-user.target "$tmp/etc/systemd/system/default.target"
  date -u +%FT%TZ > "$tmp/.sdbox-ok"
  rm -rf "$ROOTFS"; mv -T "$tmp" "$ROOTFS"
  log "rootfs built in $((SECONDS - t0))s ($(du -sh "$ROOTFS" | cut -f1))"
  flock -u 8; exec 8>&-
}

# ---------------------------------------------------------------- cgroups
cg_roots() {   # hierarchies nspawn cares about (hybrid or pure v2)
  [ -d /sys/fs/cgroup/unified ] && echo /sys/fs/cgroup/unified
  [ -d /sys/fs/cgroup/systemd ] && echo /sys/fs/cgroup/systemd
  [ -f /sys/fs/cgroup/cgroup.controllers ] && echo /sys/fs/cgroup
  return 0
}
cg_pids() { local r; for r in $(cg_roots); do [ -d "$r/$1" ] && find "$r/$1" -name cgroup.procs -exec cat {} + 2>/dev/null; done | sort -un; }
cg_remove() { local r; for r in $(cg_roots); do [ -d "$r/$1" ] && find "$r/$1" -depth -type d -exec rmdir {} \; 2>/dev/null; done; return 0; }

# ---------------------------------------------------------------- run
SELF=$(readlink -f "$0")
RUN_ID="" RUN_DIR="" NSPAWN_PID="" INIT_PID="" CMD_PID="" WATCHDOG_PID="" KEEP=0 MOUNTED=0

cg_join() {   # move the calling (sub)shell into sdbox-<run>/<leaf> in every hierarchy
  local r; for r in $(cg_roots); do mkdir -p "$r/sdbox-$RUN_ID/$1"; echo $BASHPID > "$r/sdbox-$RUN_ID/$1/cgroup.procs"; done
}
kill_cmd() {  # end everything started via in_box/exec (tracked by the 'exec' cgroup)
  # Signal the in-box processes (NSpid has 2 levels) before nsenter itself, so
  # nsenter reaps them: a zombie whose parent is outside the box would make the
  # box's systemd-shutdown wait ~10s for it.
  local p i sig
  for sig in TERM KILL; do
    for p in $(cg_pids "sdbox-$RUN_ID/exec"); do
      [ "$(awk '/^NSpid:/{print NF}' "/proc/$p/status" 2>/dev/null)" = 3 ] && kill -s $sig "$p" 2>/dev/null  || true
    done
    for i in $(seq 1 15); do [ -z "$(cg_pids "sdbox-$RUN_ID/exec")" ] && return 0; sleep 0.2; done
  done
  for p in $(cg_pids "sdbox-$RUN_ID/exec"); do kill -KILL "$p" 2>/dev/null || true; done
}

IN_BOX_PREFIX=""
in_box() {  # run argv inside the container's namespaces with a clean env
  $IN_BOX_PREFIX nsenter -t "$INIT_PID" -m -u -i -p -C -r -w \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat \
    SYSTEMD_URLIFY=0 "$@"
}

shutdown_box() {
  [ -n "$RUN_ID" ] || return 0
  local deadline p
  kill_cmd
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    log "powering off"
    if [ -n "$INIT_PID" ]; then kill -s SIGRTMIN+4 "$INIT_PID" 2>/dev/null || true   # systemd: poweroff
    else kill -TERM "$NSPAWN_PID" 2>/dev/null || true; fi
    deadline=$((SECONDS + SDBOX_STOP_TIMEOUT))
    while kill -0 "$NSPAWN_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$NSPAWN_PID" 2>/dev/null; then
      log "clean poweroff timed out; terminating nspawn $NSPAWN_PID"
      kill -TERM "$NSPAWN_PID" 2>/dev/null || true; sleep 1
      kill -TERM "$NSPAWN_PID" 2>/dev/null || true; sleep 2   # 2nd TERM = immediate
    fi
  fi
  # anything still in this run's cgroups was started by this run: kill by PID
  for p in $(cg_pids "sdbox-$RUN_ID"); do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "$NSPAWN_PID" ]; then
    local nsrc=0; wait "$NSPAWN_PID" 2>/dev/null || nsrc=$?
    log "container stopped (nspawn exit $nsrc)"; NSPAWN_PID=""
  fi
  if [ -n "$WATCHDOG_PID" ]; then kill -TERM "$WATCHDOG_PID" 2>/dev/null || true; wait "$WATCHDOG_PID" 2>/dev/null || true; WATCHDOG_PID=""; fi
  sleep 0.2; cg_remove "sdbox-$RUN_ID"
  rm -rf "/run/systemd/nspawn/propagate/sdbox-$RUN_ID" 2>/dev/null || true
  if [ "$MOUNTED" = 1 ]; then umount "$RUN_DIR/merged" 2>/dev/null || umount -l "$RUN_DIR/merged" || true; MOUNTED=0; fi
  if [ "$KEEP" = 1 ]; then log "kept $RUN_DIR (journal: journalctl -D $RUN_DIR/upper/var/log/journal)"
  else rm -rf "$RUN_DIR"; fi
  RUN_ID=""
}

clean_stale_runs() {
  local d pid
  for d in "$SDBOX_DIR"/runs/*/; do
    [ -d "$d" ] || continue
    pid=$(cat "$d/nspawn.pid" 2>/dev/null || echo)
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd-nspawn ]; then continue; fi
    [ -n "$pid" ] || [ "$(find "$d" -maxdepth 0 -mmin +60)" ] || continue  # being set up
    if mountpoint -q "$d/merged"; then umount -l "$d/merged" || true; fi
    cg_remove "sdbox-$(basename "$d")"
    [ -f "$d/keep" ] || rm -rf "$d"
  done
}

do_run() {
  local timeout=$SDBOX_TIMEOUT journal_out="" files=() nsargs=()
  while [ $# -gt 0 ]; do
    case "$1" in
      -t|--timeout) timeout=$2; shift 2;;
      -j|--save-journal) journal_out=$2; shift 2;;
      -k|--keep) KEEP=1; shift;;
      -n|--nspawn-arg) nsargs+=("$2"); shift 2;;
      -q|--quiet) QUIET=1; shift;;
      -h|--help) usage; exit 0;;
      --) shift; break;;
      -*) die "unknown option $1 (see --help)" 2;;
      *) files+=("$1"); shift;;
    esac
  done
  [ $# -gt 0 ] || die "no COMMAND given after -- (see --help)" 2
  local f src dest
  for f in "${files[@]}"; do src=${f%%:*}; [ -f "$src" ] || [ -d "$src" ] || die "no such file: $src" 2; done

  ensure_tools
  build_rootfs
  clean_stale_runs

  RUN_ID=$(date +%s)-$$; RUN_DIR=$SDBOX_DIR/runs/$RUN_ID
  trap 'shutdown_box' EXIT
  trap 'log "got SIGINT";  exit 130' INT
  trap 'log "got SIGTERM"; exit 143' TERM
  trap 'log "got SIGHUP";  exit 129' HUP
  mkdir -p "$RUN_DIR"/{upper,work,merged}
  [ "$KEEP" = 1 ] && touch "$RUN_DIR/keep"
  if mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$RUN_DIR/upper,workdir=$RUN_DIR/work" "$RUN_DIR/merged" 2>/dev/null; then
    MOUNTED=1
  else
    log "overlayfs unavailable; copying rootfs (slower)"
    rmdir "$RUN_DIR/merged" "$RUN_DIR/upper"; cp -a --reflink=auto "$ROOTFS" "$RUN_DIR/merged"
    ln -s merged "$RUN_DIR/upper"
  fi
  local M=$RUN_DIR/merged
  for f in "${files[@]}"; do
    src=${f%%:*}; dest=""; [ "$f" != "$src" ] && dest=${f#*:}
    if [ -z "$dest" ]; then
      case "$src" in
        *.service|*.socket|*.timer|*.target|*.path|*.mount|*.slice|*.automount) dest=/etc/systemd/system/;;
        *) dest=/usr/local/bin/;;
      esac
    fi
    case "$dest" in */) dest=$dest$(basename "$src");; esac
    mkdir -p "$M$(dirname "$dest")"
    cp -a --no-preserve=ownership "$src" "$M$dest"
    log "copied $src -> $dest"
  done

  # boot: own cgroup per run so nspawn's payload/supervisor cgroups don't collide
  log "booting (run $RUN_ID)"
  # (own session: a Ctrl-C / group TERM aimed at us must not reach nspawn, we power off ourselves)
  (
    cg_join nspawn
    exec setsid systemd-nspawn -q -D "$M" --machine="sdbox-$RUN_ID" --register=no --keep-unit \
      --console=pipe --link-journal=no --settings=no "${nsargs[@]}" -b
  ) </dev/null >"$RUN_DIR/console.log" 2>&1 &
  NSPAWN_PID=$!; echo "$NSPAWN_PID" > "$RUN_DIR/nspawn.pid"
  # watchdog (own session): if this script dies without cleaning up (e.g. SIGKILL),
  # it stops the box, unmounts and removes the run dir; we stop it when we're done.
  setsid bash "$SELF" __watchdog $$ "$NSPAWN_PID" "$RUN_ID" "$RUN_DIR" </dev/null >/dev/null 2>&1 &
  WATCHDOG_PID=$!

  local deadline=$((SECONDS + SDBOX_BOOT_TIMEOUT)) c state
  while [ -z "$INIT_PID" ] && [ $SECONDS -lt $deadline ]; do
    kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$RUN_DIR/console.log" >&2; die "nspawn exited during boot" 4; }
    for c in $(pgrep -P "$NSPAWN_PID" || true); do
      [ "$(awk '/^NSpid:/{print $NF}' "/proc/$c/status" 2>/dev/null)" = 1 ] && INIT_PID=$c
    done
    [ -n "$INIT_PID" ] || sleep 0.1
  done
  [ -n "$INIT_PID" ] || die "container init not found within ${SDBOX_BOOT_TIMEOUT}s" 4
  until in_box test -S /run/systemd/private 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "systemd in box not up within ${SDBOX_BOOT_TIMEOUT}s" 4; sleep 0.1
  done
  state=$(timeout $((deadline - SECONDS + 1)) nsenter -t "$INIT_PID" -m -p -r -w \
          systemctl is-system-running --wait 2>/dev/null || true)
  case "$state" in
    running) log "booted: system running (init pid $INIT_PID on host)";;
    degraded) log "booted: system DEGRADED; failed units:"; in_box systemctl --failed --no-legend >&2 || true;;
    *) cat "$RUN_DIR/console.log" >&2; die "boot did not finish in ${SDBOX_BOOT_TIMEOUT}s (state: ${state:-?})" 4;;
  esac
  in_box systemctl daemon-reload

  log "running: $* (timeout ${timeout}s)"
  local rc=0
  exec 9<&0   # background job keeps our stdin only if redirected explicitly
  # own session too: a group signal aimed at us must not kill nsenter before its
  # in-box children (see kill_cmd); our INT/TERM trap ends the command instead.
  ( cg_join exec; IN_BOX_PREFIX=setsid; in_box timeout -k 5 "$timeout" "$@" ) <&9 &
  CMD_PID=$!
  wait "$CMD_PID" || rc=$?   # 'wait' lets INT/TERM traps run immediately
  CMD_PID=""; exec 9<&-
  [ $rc = 124 ] && log "command timed out after ${timeout}s"
  log "command exit code: $rc"
  if [ -n "$journal_out" ]; then
    in_box journalctl --no-pager -o short-precise > "$journal_out" 2>&1 || true
    log "journal saved to $journal_out"
  fi
  shutdown_box
  trap - EXIT
  return $rc
}

do_watchdog() {   # internal: __watchdog MAINPID NSPAWNPID RUN_ID RUN_DIR
  set +e; local main=$1 ns=$2 i; RUN_ID=$3; RUN_DIR=$4; QUIET=1
  local sl=""
  trap '[ -n "$sl" ] && kill "$sl" 2>/dev/null; exit 0' TERM
  while kill -0 "$main" 2>/dev/null; do sleep 1 & sl=$!; wait $sl; sl=""; done
  trap '' TERM
  [ "$(cat "/proc/$ns/comm" 2>/dev/null)" = systemd-nspawn ] || ns=""
  if [ -n "$ns" ]; then
    kill_cmd
    kill -TERM "$ns"          # nspawn: 1st TERM = clean halt of the box
    for i in $(seq 1 75); do kill -0 "$ns" 2>/dev/null || break; sleep 0.2; done
    kill -TERM "$ns" 2>/dev/null; sleep 1; kill -KILL "$ns" 2>/dev/null
  fi
  for i in $(cg_pids "sdbox-$RUN_ID"); do kill -KILL "$i" 2>/dev/null; done
  sleep 0.3; cg_remove "sdbox-$RUN_ID"
  rm -rf "/run/systemd/nspawn/propagate/sdbox-$RUN_ID"
  mountpoint -q "$RUN_DIR/merged" && umount -l "$RUN_DIR/merged"
  [ -f "$RUN_DIR/keep" ] || rm -rf "$RUN_DIR"
  exit 0
}

# ---------------------------------------------------------------- selftest
do_selftest() {
  local d; d=$(mktemp -d /tmp/sdbox-selftest.XXXXXX)
  cat > "$d/demo.sh" <<'EOF'
#!/bin/bash
# Type=notify demo: READY after 2s, SIGHUP=reload, SIGTERM=marker+exit (unless STUBBORN)
echo "demo: starting pid=$$ user=$(id -un) uid=$(id -u)"
echo "demo: CREDENTIALS_DIRECTORY=${CREDENTIALS_DIRECTORY:-unset} RUNTIME_DIRECTORY=${RUNTIME_DIRECTORY:-unset}"
[ -n "${CREDENTIALS_DIRECTORY:-}" ] && echo "demo: credential token=$(cat "$CREDENTIALS_DIRECTORY/token")"
[ -n "${RUNTIME_DIRECTORY:-}" ] && { echo $$ > "$RUNTIME_DIRECTORY/pid"; ls -ld "$RUNTIME_DIRECTORY"; }
EV=/srv/markers/$(id -un).events   # one file per (dynamic) user
trap 'echo "demo: got SIGHUP (reload)"; echo hup >> $EV; systemd-notify --status=reloaded' HUP
if [ -n "${STUBBORN:-}" ]; then trap 'echo "demo: ignoring SIGTERM"; echo term-ignored >> $EV' TERM
else trap 'echo "demo: got SIGTERM, exiting"; echo term >> $EV; exit 0' TERM; fi
sleep 2
echo "demo: ready"
systemd-notify --ready --status=serving
while :; do sleep 0.2 & wait $!; done
EOF
  chmod +x "$d/demo.sh"
  cat > "$d/demo.service" <<'EOF'
[Unit]
Description=sdbox demo (Type=notify)
[Service]
Type=notify
NotifyAccess=all
ExecStart=/usr/local/bin/demo.sh
ExecReload=/bin/kill -HUP $MAINPID
TimeoutStopSec=5
DynamicUser=yes
RuntimeDirectory=demo
LoadCredential=token:/etc/demo/token
ReadWritePaths=/srv/markers
EOF
  sed -e 's/(Type=notify)/stubborn/' -e 's/^TimeoutStopSec=.*/TimeoutStopSec=3\nEnvironment=STUBBORN=1/' \
      "$d/demo.service" > "$d/stubborn.service"
  echo s3cret > "$d/token"
  cat > "$d/test.sh" <<'EOF'
#!/bin/bash
set -u; fail=0
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
check() { if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; fail=1; fi; }
chmod 600 /etc/demo/token; mkdir -p /srv/markers; chmod 1777 /srv/markers
echo "== systemd: $(systemctl --version | head -1); PID1=$(cat /proc/1/comm)"
t=$(date +%s%N); systemctl start demo.service; rc=$?; st=$(ms $t)
check "start rc=0 and waited for READY (${st}ms >= 1900)" "[ $rc = 0 ] && [ $st -ge 1900 ]"
check "active + StatusText=serving" "systemctl is-active -q demo && [ \"\$(systemctl show -P StatusText demo)\" = serving ]"
check "DynamicUser (uid >= 61184)" "[ \$(systemctl show -P UID demo) -ge 61184 ]"
check "RuntimeDirectory /run/demo exists" "[ -f /run/demo/pid ]"
systemctl reload demo.service; sleep 0.5
check "reload -> SIGHUP delivered" "grep -qx hup /srv/markers/demo.events"
t=$(date +%s%N); systemctl stop demo.service; st=$(ms $t)
check "stop -> SIGTERM marker (${st}ms)" "grep -qx term /srv/markers/demo.events"
check "RuntimeDirectory removed on stop" "[ ! -e /run/demo ]"
t=$(date +%s%N); systemctl start stubborn.service; systemctl stop stubborn.service; st=$(ms $t)
check "TimeoutStopSec=3 -> SIGKILL (start+stop ${st}ms, result=$(systemctl show -P Result stubborn))" \
      "grep -qx term-ignored /srv/markers/stubborn.events && [ $st -ge 4500 ] && [ \"\$(systemctl show -P Result stubborn)\" = timeout ]"
journalctl --sync
echo "== journalctl -u demo.service"; journalctl -u demo.service --no-pager -o short-precise
check "journal has credential + reload + SIGTERM lines" \
  "journalctl -u demo -o cat | grep -q 'credential token=s3cret' && journalctl -u demo -o cat | grep -q 'got SIGHUP' && journalctl -u demo -o cat | grep -q 'got SIGTERM'"
echo "== journalctl -u stubborn.service (tail)"; journalctl -u stubborn.service --no-pager -o short-precise | tail -5
[ $fail = 0 ] && echo "SELFTEST OK" || echo "SELFTEST FAILED"
exit $fail
EOF
  chmod +x "$d/test.sh"
  local rc=0
  do_run "$@" "$d/demo.sh" "$d/demo.service" "$d/stubborn.service" "$d/token:/etc/demo/token" \
         "$d/test.sh:/root/test.sh" -- /root/test.sh || rc=$?
  rm -rf "$d"; return $rc
}

do_clean() {
  clean_stale_runs
  local d; for d in "$SDBOX_DIR"/runs/*/; do [ -d "$d" ] && log "still running or kept: $d"; done
  log "removing cached rootfs dirs under $SDBOX_DIR"
  rm -rf "$SDBOX_DIR"/rootfs-* "$SDBOX_DIR/debootstrap.log"
}

case "${1:-}" in
  ""|-h|--help|help) usage; exit 0;;
  build) shift; ensure_tools; build_rootfs; echo "$ROOTFS";;
  selftest) shift; do_selftest "$@";;
  clean) shift; do_clean;;
  run) shift; do_run "$@";;
  __watchdog) shift; do_watchdog "$@";;
  *) do_run "$@";;
esac
