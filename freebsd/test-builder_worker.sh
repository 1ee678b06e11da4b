#!/bin/sh
# Tests builder_worker.sh with stub zfs, zpool, jail, jexec, ifconfig and
# umount on PATH that record their calls: the order of the steps, the
# network set up once, and the clone destroyed after every job, including
# one that fails and one that is stopped by SIGTERM.
set -u

here=$(cd "$(dirname "$0")" && pwd)
launcher="$here/builder_worker.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

# --- stubs -----------------------------------------------------------------
mkdir -p "$tmp/bin"
stub() {
    # shellcheck disable=SC2016 # the stub expands it, not this script
    { echo '#!/bin/sh'; echo 'echo "$(basename "$0") $*" >> "$STUB_STATE/calls"'; cat; } > "$tmp/bin/$1"
    chmod +x "$tmp/bin/$1"
}
stub zpool <<'S'
echo zroot
S
stub ifconfig <<'S'
case "$*" in
    "lo create") echo lo1 ;;
    "lo1 name orb") touch "$STUB_STATE/orb"; echo orb ;;
    "orb") [ -e "$STUB_STATE/orb" ] ;;
    "orb destroy") rm -f "$STUB_STATE/orb" ;;
esac
S
stub zfs <<'S'
case "$1" in
    list) [ -e "$STUB_STATE/clone" ] ;;
    clone) mkdir -p "${2#-o mountpoint=}" 2>/dev/null
           mkdir -p "${3#mountpoint=}"; touch "$STUB_STATE/clone" ;;
    destroy) rm -f "$STUB_STATE/clone" ;;
esac
S
stub jail <<'S'
case "$3" in
    -c) exit "${STUB_JAIL_STATUS:-0}" ;;
esac
S
stub jexec <<'S'
case "${STUB_JEXEC:-ok}" in
    ok) exit 0 ;;
    fail) exit 3 ;;
    hang) echo $$ > "$STUB_STATE/jexec.pid"; exec sleep 60 ;;
esac
S
stub umount <<'S'
exit 0
S
printf '#!/bin/sh\n' > "$tmp/builder-worker"
chmod +x "$tmp/builder-worker"

# --- helpers -----------------------------------------------------------------
fresh() {
    export STUB_STATE="$tmp/state.$1"
    rm -rf "$STUB_STATE" "$tmp/jails"
    mkdir -p "$STUB_STATE" "$tmp/jails"
    : > "$STUB_STATE/calls"
}

launch() {
    (exec_launcher "$@") > "$STUB_STATE/out" 2>&1
}

# Runs the launcher itself (env execs sh), so that $! of a background call
# is the launcher's own pid.
exec_launcher() {
    exec env PATH="$tmp/bin:$PATH" BUILDER_WORKER_CONF=/nonexistent \
        JAILCONF=/usr/local/etc/builder/jail.conf SNAPSHOT=zroot/jails/base@clean \
        JAILS_DIR="$tmp/jails" BUILDER_WORKER="$tmp/builder-worker" \
        sh "$launcher" "$@"
}

fail() {
    echo "FAIL: $*"
    echo "  calls:"; sed 's/^/    /' "$STUB_STATE/calls"
    echo "  output:"; sed 's/^/    /' "$STUB_STATE/out"
    failures=$((failures + 1))
}

expect_calls() {
    name=$1
    printf '%s\n' "$2" > "$STUB_STATE/expected"
    if ! diff -u "$STUB_STATE/expected" "$STUB_STATE/calls" > "$STUB_STATE/diff"; then
        fail "$name: calls differ"; sed 's/^/    /' "$STUB_STATE/diff"
    fi
}

job_calls() {
    jail=$1 tail=$2
    cat <<C
zfs list -H -o name zroot/jails/$jail
zfs clone -o mountpoint=$tmp/jails/$jail zroot/jails/base@clean zroot/jails/$jail
jail -f /usr/local/etc/builder/jail.conf -c $jail$tail
C
}

jexec_call="jexec -l -U root worker1 /usr/local/libexec/builder-worker freebsd-14 --remote 127.0.2.1:1234"
stop_calls="jail -f /usr/local/etc/builder/jail.conf -r worker1
umount -f $tmp/jails/worker1/dev
zfs destroy -r -f zroot/jails/worker1"

# --- cases -------------------------------------------------------------------
fresh ok
launch build worker1; status=$?
[ "$status" -eq 0 ] || fail "build: status $status, expected 0"
expect_calls "build" "zpool list -H -o name
$(job_calls worker1 "")
$jexec_call
$stop_calls"
[ -x "$tmp/jails/worker1/usr/local/libexec/builder-worker" ] \
    || fail "build: the worker was not copied into the clone"

fresh worker-fails
STUB_JEXEC=fail launch build worker1; status=$?
[ "$status" -eq 3 ] || fail "failing worker: status $status, expected 3"
expect_calls "failing worker" "zpool list -H -o name
$(job_calls worker1 "")
$jexec_call
$stop_calls"

fresh jail-fails
STUB_JAIL_STATUS=1 launch build worker1; status=$?
[ "$status" -ne 0 ] || fail "failing jail: status 0"
expect_calls "failing jail" "zpool list -H -o name
$(job_calls worker1 "")
umount -f $tmp/jails/worker1/dev
zfs destroy -r -f zroot/jails/worker1"

fresh stale-clone
touch "$STUB_STATE/clone"
launch build worker1; status=$?
[ "$status" -eq 0 ] || fail "stale clone: status $status"
grep -c '^zfs destroy' "$STUB_STATE/calls" | grep -qx 2 \
    || fail "stale clone: expected it destroyed before the clone and the new one after"

fresh bad-name
launch build '../etc'; status=$?
[ "$status" -ne 0 ] || fail "bad jail name accepted"
[ ! -s "$STUB_STATE/calls" ] || fail "bad jail name: tools were called"
grep -q "bad jail name" "$STUB_STATE/out" || fail "bad jail name: no clear error"

fresh sigterm
(STUB_JEXEC=hang exec_launcher build worker1 > "$STUB_STATE/out" 2>&1) &
pid=$!
deadline=$(($(date +%s) + 20))
while [ ! -s "$STUB_STATE/jexec.pid" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
if [ ! -s "$STUB_STATE/jexec.pid" ]; then
    fail "sigterm: the worker never started"
    kill "$pid" 2>/dev/null
else
    kill -TERM "$pid"
    wait "$pid"; status=$?
    [ "$status" -eq 143 ] || fail "sigterm: status $status, expected 143"
    expect_calls "sigterm" "zpool list -H -o name
$(job_calls worker1 "")
$jexec_call
$stop_calls"
    if kill -0 "$(cat "$STUB_STATE/jexec.pid")" 2>/dev/null; then
        fail "sigterm: the worker process survived"
        kill "$(cat "$STUB_STATE/jexec.pid")"
    fi
fi

fresh loop
BUILDER_JOBS=2 launch loop worker1; status=$?
[ "$status" -eq 0 ] || fail "loop: status $status"
expect_calls "loop" "ifconfig orb
ifconfig lo create
ifconfig lo1 name orb
ifconfig orb inet 127.0.2.1/24 alias
zpool list -H -o name
$(job_calls worker1 "")
$jexec_call
$stop_calls
zpool list -H -o name
$(job_calls worker1 "")
$jexec_call
$stop_calls"

fresh loop-refused
BUILDER_REFUSED_PAUSE=0 BUILDER_JOBS=2 STUB_JEXEC=fail launch loop worker1; status=$?
[ "$status" -eq 0 ] || fail "loop after a final refusal: status $status"
[ "$(grep -c "refused the worker in worker1 for good.*next try in 0s" "$STUB_STATE/out")" -eq 2 ] \
    || fail "loop after a final refusal: no clear log line: $(cat "$STUB_STATE/out")"

fresh network
launch network_start && launch network_start; status=$?
[ "$status" -eq 0 ] || fail "network_start twice: status $status"
[ "$(grep -c 'lo create' "$STUB_STATE/calls")" -eq 1 ] || fail "network_start created the interface twice"

if [ "$failures" -ne 0 ]; then
    echo "test-builder_worker.sh: $failures failure(s)"
    exit 1
fi
echo "test-builder_worker.sh: all cases passed"
