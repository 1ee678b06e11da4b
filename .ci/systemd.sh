#!/bin/sh
# The .deb under a real systemd (run by .ci/ops.sh):
#   .ci/systemd.sh [PATH.deb]       (default: build it with create_package.sh)
#
# A minimal Debian 12 (bookworm) with systemd, debootstrapped from Debian's
# packages and cached as target/ci-cache/bookworm-systemd.tar (a second run
# skips the download), is `docker import`ed and booted with systemd as
# PID 1. In it the .deb is installed and:
#   1. builder.service and builder-worker-host.service are enabled; a job
#      (the shipped examples/hello.sh) runs and its record is stored;
#   2. the server is stopped for 60 s and started again: the worker unit,
#      never failed, runs a job again within seconds of the server's return;
#   3. `systemctl stop builder` with a build running drains it: its record
#      is stored and the unit ends with Result=success, status 0;
#   4. `systemd-analyze security builder.service` prints its exposure score;
#   5. the journal has the start-up line once per start, without ANSI.
#
# Needs root on a Debian machine: debootstrap and docker.io are installed
# with apt-get when missing, and a temporary dockerd (no bridge, no
# iptables) is started when none answers; all of it is removed on exit.
# Settings: DEBIAN_MIRROR (default: this machine's Debian mirror from
# /etc/apt/sources.list*), BUILDER_CI_CACHE (default target/ci-cache).
set -eu

cd "$(dirname "$0")/.."
repo=$(pwd)
started=$(date +%s)
cache=${BUILDER_CI_CACHE:-$repo/target/ci-cache}
tarball=$cache/bookworm-systemd.tar
image=builder-ci-systemd:bookworm
container=builder-ci-systemd-$$
tmp=$(mktemp -d)
dockerd_pid=''
imported=''

say() { echo "systemd.sh: $*"; }
die() {
    echo "systemd.sh: FAIL: $*" >&2
    if [ -n "${in_container:-}" ]; then
        echo "--- journal (last 80 lines) ---" >&2
        docker exec "$container" journalctl --no-pager -n 80 >&2 || true
    fi
    exit 1
}

cleanup() {
    set +e
    if [ -n "${in_container:-}" ]; then
        docker rm --force "$container" >/dev/null 2>&1
    fi
    if [ -n "$imported" ]; then docker image rm --force "$image" >/dev/null 2>&1; fi
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null
        # dockerd unmounts its layers on the way out; wait for it.
        n=0
        while kill -0 "$dockerd_pid" 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
        kill -KILL "$dockerd_pid" 2>/dev/null
        wait "$dockerd_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
    say "took $(($(date +%s) - started)) s"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls COMMAND every 0.2 s until it succeeds; fails after SECS seconds.
wait_for() {
    secs=$1; shift
    deadline=$(($(date +%s) + secs))
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

need_root() { [ "$(id -u)" = 0 ] || die "needs root (debootstrap, dockerd)"; }

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "$1 is missing and there is no apt-get to install it"
    say "installing $1 from Debian's packages"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "$1" >/dev/null; } || die "apt-get install $1 failed"
}

# This machine's Debian mirror: the first URI of a source for a Debian
# suite (deb822 `URIs:` or one-line `deb URI SUITE`), else deb.debian.org.
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -n 's|^URIs:[[:space:]]*\([^[:space:]]*/debian\)/*$|\1|p; s|^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*/debian\)/*[[:space:]].*|\2|p' \
        | head -n 1)
    echo "${m:-http://deb.debian.org/debian}"
}

# --- the root file system, cached ------------------------------------------------
need_root
if [ -s "$tarball" ]; then
    say "using the cached root $tarball ($(du -h "$tarball" | cut -f1))"
else
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    mirror=$(debian_mirror)
    say "debootstrapping bookworm from $mirror (cached afterwards in $tarball)"
    t0=$(date +%s)
    rootfs="$tmp/rootfs"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
        bookworm "$rootfs" "$mirror" > "$tmp/debootstrap.log" 2>&1 \
        || { tail -n 30 "$tmp/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    # A container has no consoles, no udev and no clock to set.
    for unit in getty@tty1.service console-getty.service systemd-timesyncd.service \
        systemd-udevd.service systemd-firstboot.service; do
        ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
    done
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    mkdir -p "$cache"
    tar --numeric-owner -C "$rootfs" -cf "$tarball.partial" . \
        && mv "$tarball.partial" "$tarball"
    rm -rf "$rootfs"
    say "root made in $(($(date +%s) - t0)) s: $tarball ($(du -h "$tarball" | cut -f1))"
fi

# --- the package -------------------------------------------------------------------
deb=${1:-}
if [ -z "$deb" ]; then
    deb=$(packaging/debian/create_package.sh) || die "create_package.sh failed"
fi
[ -s "$deb" ] || die "no package at $deb"

# --- a Docker daemon ---------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    say "starting dockerd on a temporary data root"
    mkdir -p "$tmp/docker"
    DOCKER_HOST="unix://$tmp/docker/sock"
    export DOCKER_HOST
    # No bridge and no iptables: the container needs no network (its
    # loopback is enough), and another dockerd may own docker0.
    dockerd --data-root "$tmp/docker/root" --exec-root "$tmp/docker/exec" \
        --pidfile "$tmp/docker/pid" --host "$DOCKER_HOST" --bridge none --iptables=false \
        > "$tmp/docker/log" 2>&1 &
    dockerd_pid=$!
    if ! wait_for 60 docker info >/dev/null 2>&1; then
        tail -n 20 "$tmp/docker/log" >&2
        die "dockerd does not start on this machine (log above)"
    fi
fi

docker import "$tarball" "$image" >/dev/null || die "docker import failed"
imported=1

# --- boot ----------------------------------------------------------------------------
# (--privileged does not work here: systemd then fails to mount its cgroups.)
docker run --detach --name "$container" --network none \
    --cap-add SYS_ADMIN --security-opt seccomp=unconfined \
    --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup \
    --env container=docker "$image" /lib/systemd/systemd >/dev/null \
    || die "docker run failed"
in_container=1
inside() { docker exec "$container" "$@"; }
booted() {
    state=$(inside systemctl is-system-running 2>/dev/null) || true
    [ "$state" = running ] || [ "$state" = degraded ]
}
wait_for 60 booted || die "systemd did not finish booting (state: ${state:-?})"
say "systemd is up ($(inside systemctl --version | head -n 1), state $state)"
if [ "$state" = degraded ]; then inside systemctl --failed --no-pager || true; fi

docker cp "$deb" "$container:/root/builder.deb" || die "docker cp failed"
inside dpkg -i /root/builder.deb > "$tmp/dpkg.log" 2>&1 \
    || { cat "$tmp/dpkg.log" >&2; die "dpkg -i failed"; }
say "installed $(basename "$deb")"

# --- 1. a job through the units ---------------------------------------------------------
client() { inside builder-client "$@"; }
records() { inside sh -c "ls /var/lib/builder/$1/*/full 2>/dev/null | wc -l"; }
has_records() { [ "$(records "$1")" -ge "$2" ]; }
listening() { [ "$(inside journalctl -u builder.service -o cat --no-pager | grep -c 'builder-server listening')" -ge "$1" ]; }
starts=0

inside systemctl enable --now builder.service builder-worker-host.service 2>/dev/null \
    || die "systemctl enable --now failed"
starts=$((starts + 1))
wait_for 30 listening $starts || die "builder.service did not log its start-up line"
example=/usr/share/doc/builder/examples/hello.sh
inside test -s "$example" || die "$example is not in the package"
client schedule hello debian-12 "$example" --period never || die "schedule failed"
wait_for 30 has_records hello 1 || die "no record of hello"
record=$(inside sh -c 'ls /var/lib/builder/hello/*/full | head -n 1')
inside builder-inspect "$record" --console | sed 's/^/  | /'
say "1. PASS: the host worker unit ran hello; its record is $record"

# --- 2. a 60 s server outage -------------------------------------------------------------
worker_active() { [ "$(inside systemctl is-active builder-worker-host.service)" = active ]; }
# The worker restarts after its job, connects and waits for the next one.
wait_for 30 worker_active || die "the worker unit is not active after its job"
restarts() { inside systemctl show -p NRestarts --value builder-worker-host.service; }
before=$(restarts)
inside systemctl stop builder.service
say "2. server stopped; waiting 60 s"
sleep 60
worker_active || die "the worker unit did not survive 60 s without its server: $(inside systemctl show -p Result,NRestarts builder-worker-host.service | tr '\n' ' ')"
# The worker waited in-process: systemd did not have to restart it once.
[ "$(restarts)" = "$before" ] || die "the worker unit was restarted during the outage ($before -> $(restarts) restarts)"
inside systemctl start builder.service
back=$(date +%s)
starts=$((starts + 1))
wait_for 30 listening $starts || die "builder.service did not start again"
client execute hello >/dev/null || die "execute failed"
wait_for 30 has_records hello 2 || die "no job ran after the server came back"
say "2. PASS: a job ran again $(($(date +%s) - back)) s after the server's return; worker unit: $(inside systemctl show -p Result,NRestarts builder-worker-host.service | tr '\n' ' ')"
inside journalctl -u builder-worker-host.service -o cat --no-pager \
    | grep -E 'retrying every|still cannot reach|server is back' | sed 's/^/  | /'

# --- 3. a stop drains a running build -----------------------------------------------------
printf '#!/bin/sh\necho "sleeping"\nsleep 5\necho "slept"\n' > "$tmp/sleeper.sh"
docker cp "$tmp/sleeper.sh" "$container:/root/sleeper.sh"
client schedule sleeper debian-12 /root/sleeper.sh --period never || die "schedule sleeper failed"
# `info` lists the running builds between "running (N):" and the next
# section.
sleeper_running() { client info 2>/dev/null | sed -n '/^running (/,/^[a-z]/p' | grep -q ' sleeper '; }
wait_for 30 sleeper_running || die "sleeper did not start"
t0=$(date +%s)
inside systemctl stop builder.service || die "systemctl stop builder failed"
result=$(inside systemctl show -p Result,ExecMainStatus builder.service | tr '\n' ' ')
say "3. systemctl stop took $(($(date +%s) - t0)) s: $result"
case "$result" in *Result=success*ExecMainStatus=0*|*ExecMainStatus=0*Result=success*) ;;
    *) die "the server did not stop cleanly: $result" ;; esac
has_records sleeper 1 || die "the drained build has no record (requeued instead?)"
srecord=$(inside sh -c 'ls /var/lib/builder/sleeper/*/full | head -n 1')
inside builder-inspect "$srecord" --console | grep -q slept || die "the drained build did not finish"
inside journalctl -u builder.service -o cat --no-pager | grep -E 'draining|drained' | sed 's/^/  | /'
say "3. PASS: the stop drained the running build and stored its record"

# --- 4. exposure ------------------------------------------------------------------------------
inside systemd-analyze security --no-pager builder.service > "$tmp/security" 2>&1 \
    || { cat "$tmp/security" >&2; die "systemd-analyze security failed"; }
score=$(grep 'Overall exposure level' "$tmp/security") || { cat "$tmp/security" >&2; die "no exposure score"; }
say "4. systemd-analyze security builder.service: $score"

# --- 5. the journal ------------------------------------------------------------------------------
inside journalctl -u builder.service -o cat --no-pager > "$tmp/journal"
inside journalctl -u builder-worker-host.service -o cat --no-pager >> "$tmp/journal"
n=$(grep -c 'builder-server listening' "$tmp/journal" || true)
[ "$n" -eq "$starts" ] || die "$n start-up lines for $starts starts"
esc=$(printf '\033')
if grep -q "$esc" "$tmp/journal"; then
    grep "$esc" "$tmp/journal" | head -n 3 | cat -v >&2
    die "ANSI escapes in the journal"
fi
grep 'builder-server listening' "$tmp/journal" | head -n 1 | sed 's/^/  | /'
say "5. PASS: the start-up line once per start ($starts), no ANSI escapes"
say "PASS"
