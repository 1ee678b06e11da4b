#!/bin/sh
# builder_worker.sh: runs builder workers in FreeBSD jails cloned from a ZFS
# snapshot, one fresh clone per job (the reference ships it as load.sh).
#
#   builder_worker.sh network_start   create the "orb" interface (once)
#   builder_worker.sh network_stop    remove it
#   builder_worker.sh build JAIL      one job: clone, start the jail, run the
#                                     worker in it, wait, destroy the clone
#   builder_worker.sh loop JAIL       network_start once, then build JAIL
#                                     again and again (rc.d uses this)
#
# The clone is destroyed whatever happens: when the worker or the jail
# fails, and when this script is stopped by SIGTERM/SIGINT/SIGHUP.
#
# Settings (environment, or /usr/local/etc/builder/builder_worker.conf,
# a sh fragment read first):
#   JAILCONF          jail.conf with a block per JAIL
#                     (/usr/local/etc/builder/jail.conf)
#   POOL              the ZFS pool (the first one `zpool list` shows)
#   SNAPSHOT          the clean jail snapshot
#                     (${POOL}/poudriere/jails/14-2-release@clean)
#   JAILS_DIR         where clones are mounted (/jails); the clone of JAIL
#                     is ${POOL}/jails/JAIL mounted at ${JAILS_DIR}/JAIL
#   BUILDER_PLATFORM  the platform the worker serves (freebsd-14)
#   BUILDER_REMOTE    the server (127.0.2.1:1234)
#   BUILDER_WORKER    the worker binary copied into every clone
#                     (/usr/local/libexec/builder-worker)
#   BUILDER_TOKEN_FILE  the worker token, copied into the clone (optional)
#   BUILDER_JAIL_USER the user the worker runs as inside the jail (root);
#                     it must exist in the snapshot
#   BUILDER_JOBS      with loop: stop after this many jobs (0: never)
#   BUILDER_REFUSED_PAUSE  with loop: seconds to wait after the server
#                     refused the worker for good (exit status 3: bad token,
#                     dropped platform) before the next jail (60)
#   ORB_IF, ORB_NET   the interface and the server's address on it
#                     (orb, 127.0.2.1/24)

set -u

CONF=${BUILDER_WORKER_CONF:-/usr/local/etc/builder/builder_worker.conf}
# shellcheck disable=SC1090
[ -r "$CONF" ] && . "$CONF"

: "${JAILCONF:=/usr/local/etc/builder/jail.conf}"
: "${JAILS_DIR:=/jails}"
: "${BUILDER_PLATFORM:=freebsd-14}"
: "${BUILDER_REMOTE:=127.0.2.1:1234}"
: "${BUILDER_WORKER:=/usr/local/libexec/builder-worker}"
: "${BUILDER_TOKEN_FILE:=}"
: "${BUILDER_JAIL_USER:=root}"
: "${BUILDER_JOBS:=0}"
: "${BUILDER_REFUSED_PAUSE:=60}"
: "${ORB_IF:=orb}"
: "${ORB_NET:=127.0.2.1/24}"

log() {
    echo "$(date '+%Y-%m-%dT%H:%M:%S') builder_worker: $*"
}

die() {
    echo "builder_worker: error: $*" >&2
    exit 1
}

pool() {
    if [ -z "${POOL:-}" ]; then
        POOL=$(zpool list -H -o name | head -n 1)
        [ -n "$POOL" ] || die "no ZFS pool found; set POOL"
    fi
    : "${SNAPSHOT:=${POOL}/poudriere/jails/14-2-release@clean}"
}

network_start() {
    if ifconfig "$ORB_IF" >/dev/null 2>&1; then
        log "interface $ORB_IF exists"
        return 0
    fi
    iface=$(ifconfig lo create) || die "cannot create a loopback interface"
    ifconfig "$iface" name "$ORB_IF" >/dev/null || die "cannot rename $iface to $ORB_IF"
    ifconfig "$ORB_IF" inet "$ORB_NET" alias || die "cannot add $ORB_NET to $ORB_IF"
    log "interface $ORB_IF up with $ORB_NET"
}

network_stop() {
    if ifconfig "$ORB_IF" >/dev/null 2>&1; then
        ifconfig "$ORB_IF" destroy || die "cannot destroy $ORB_IF"
    fi
}

# Removes the jail and its clone; safe to call twice and on a half-made job.
cleanup() {
    jail_name=$1
    if [ -n "${child:-}" ]; then
        kill -TERM "$child" 2>/dev/null || true
        child=''
    fi
    if [ -n "${started:-}" ]; then
        jail -f "$JAILCONF" -r "$jail_name" >/dev/null 2>&1 || true
        started=''
    fi
    umount -f "$JAILS_DIR/$jail_name/dev" 2>/dev/null || true
    if [ -n "${cloned:-}" ]; then
        if zfs destroy -r -f "$POOL/jails/$jail_name"; then
            log "clone of $jail_name destroyed"
        else
            log "cannot destroy $POOL/jails/$jail_name: remove it by hand"
        fi
        cloned=''
    fi
}

build() {
    jail_name=$1
    case "$jail_name" in
        ''|*[!A-Za-z0-9_-]*) die "bad jail name '$jail_name'" ;;
    esac
    pool
    [ -x "$BUILDER_WORKER" ] || die "$BUILDER_WORKER is not an executable"
    cloned='' started='' child=''
    trap 'cleanup "$jail_name"' EXIT
    trap 'log "stopped"; exit 143' TERM
    trap 'exit 130' INT
    trap 'exit 129' HUP

    # A clone left by a crash (power loss, kill -9) would block this job.
    if zfs list -H -o name "$POOL/jails/$jail_name" >/dev/null 2>&1; then
        log "destroying a stale clone of $jail_name"
        zfs destroy -r -f "$POOL/jails/$jail_name" || die "cannot destroy the stale clone"
    fi
    log "cloning $SNAPSHOT for $jail_name"
    zfs clone -o mountpoint="$JAILS_DIR/$jail_name" "$SNAPSHOT" "$POOL/jails/$jail_name" \
        || die "cannot clone $SNAPSHOT"
    cloned=1
    root="$JAILS_DIR/$jail_name"
    mkdir -p "$root/etc" "$root/usr/local/libexec" || die "cannot prepare $root"
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    # The host's worker, so that upgrading the package upgrades the jails.
    cp "$BUILDER_WORKER" "$root/usr/local/libexec/builder-worker" || die "cannot copy the worker"
    token_arg=
    if [ -n "$BUILDER_TOKEN_FILE" ]; then
        cp "$BUILDER_TOKEN_FILE" "$root/etc/builder-worker.token" || die "cannot copy $BUILDER_TOKEN_FILE"
        chmod 0444 "$root/etc/builder-worker.token"
        token_arg="--token-file /etc/builder-worker.token"
    fi

    log "starting jail $jail_name"
    jail -f "$JAILCONF" -c "$jail_name" || die "cannot start jail $jail_name"
    started=1
    log "running the $BUILDER_PLATFORM worker in $jail_name"
    # The worker serves one job and exits; run it in the background and
    # wait, so that a TERM reaches the trap while the job still runs.
    # shellcheck disable=SC2086
    jexec -l -U "$BUILDER_JAIL_USER" "$jail_name" /usr/local/libexec/builder-worker \
        "$BUILDER_PLATFORM" --remote "$BUILDER_REMOTE" $token_arg &
    child=$!
    wait "$child"
    status=$?
    child=''
    log "worker in $jail_name exited with status $status"
    cleanup "$jail_name"
    trap - EXIT TERM INT HUP
    return "$status"
}

loop() {
    network_start
    jobs=0 job='' stopping=''
    # Pass a stop on to the running job, which then cleans up after itself.
    trap 'stopping=1; [ -n "$job" ] && kill -TERM "$job" 2>/dev/null' TERM INT HUP
    while [ -z "$stopping" ]; do
        # Each job in a subshell: its traps and cleanup are its own.
        ( build "$1" ) &
        job=$!
        # wait returns early when a signal arrives: wait again for the
        # job's own cleanup before leaving.
        wait "$job"
        status=$?
        if [ -n "$stopping" ]; then
            wait "$job" 2>/dev/null
            status=$?
        fi
        job=''
        [ "$status" -eq 0 ] || log "job in $1 failed with status $status"
        [ -z "$stopping" ] || break
        # 3: the server refused the worker for good (bad token, dropped
        # platform, other protocol version): a new jail every second cannot
        # fix that, and exiting would only have daemon -r restart us. (The
        # worker itself waits out an unreachable server.)
        pause=1
        if [ "$status" -eq 3 ]; then
            pause=$BUILDER_REFUSED_PAUSE
            log "the server refused the worker in $1 for good (reason above); next try in ${pause}s: fix the setting (token, platform)"
        fi
        jobs=$((jobs + 1))
        if [ "$BUILDER_JOBS" -gt 0 ] && [ "$jobs" -ge "$BUILDER_JOBS" ]; then
            return 0
        fi
        # Not a busy loop when jobs fail at once; a stop ends the wait.
        sleep "$pause" &
        pause_pid=$!
        wait "$pause_pid" 2>/dev/null || kill "$pause_pid" 2>/dev/null || true
    done
    log "stopped"
}

case "${1:-}" in
    network_start) network_start ;;
    network_stop) network_stop ;;
    build)
        [ $# -eq 2 ] || die "usage: builder_worker.sh build JAIL"
        build "$2"
        ;;
    loop)
        [ $# -eq 2 ] || die "usage: builder_worker.sh loop JAIL"
        loop "$2"
        ;;
    *)
        echo "usage: builder_worker.sh network_start | network_stop | build JAIL | loop JAIL" >&2
        exit 2
        ;;
esac
