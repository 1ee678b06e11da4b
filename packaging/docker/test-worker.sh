#!/bin/sh
# The Docker worker test: builds the image with build-image.sh, starts a
# builder-server on Docker's bridge, runs the worker with the command line
# of systemd/builder-worker.service's ExecStart (its variables filled in),
# and checks that the job ran inside the container (it sees /.dockerenv),
# that its record arrived, and that the container is gone afterwards.
#
# Needs root (or a docker group member) and a running dockerd; without one
# it installs docker.io (apt-get) if dockerd is missing and starts dockerd
# on a temporary data root, removed afterwards. Where dockerd cannot run it
# fails loudly; BUILDER_ALLOW_NO_DOCKER=1 turns that into a loud skip.
#
# Settings: BUILDER_BIN_DIR (release binaries, default target/release of
# this checkout).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${BUILDER_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}
tag=builder-worker:ci-test
tmp=$(mktemp -d)
dockerd_pid='' server_pid=''

say() { echo "test-worker.sh: $*"; }
die() { echo "test-worker.sh: FAIL: $*" >&2; exit 1; }

cleanup() {
    set +e
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
    docker rm --force builder-worker >/dev/null 2>&1
    docker image rm --force "$tag" >/dev/null 2>&1
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null
        # dockerd unmounts its layers on the way out; wait for it.
        n=0
        while kill -0 "$dockerd_pid" 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
        kill -KILL "$dockerd_pid" 2>/dev/null
        wait "$dockerd_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

no_docker() {
    echo "################################################################" >&2
    echo "# THE DOCKER WORKER TEST DID NOT RUN: $*" >&2
    echo "################################################################" >&2
    if [ "${BUILDER_ALLOW_NO_DOCKER:-}" = 1 ]; then
        echo "# BUILDER_ALLOW_NO_DOCKER=1: skipped, NOT passed." >&2
        exit 0
    fi
    echo "# (set BUILDER_ALLOW_NO_DOCKER=1 to skip it on such a machine)" >&2
    exit 1
}

# Polls CONDITION (a command) every 0.1 s until it succeeds or SECS pass.
wait_for() {
    secs=$1; shift
    deadline=$(($(date +%s) + secs))
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# --- a Docker daemon ----------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null 2>&1; then
        say "dockerd missing: installing docker.io from Debian's packages"
        command -v apt-get >/dev/null 2>&1 || no_docker "no dockerd and no apt-get to install it"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends docker.io >/dev/null; } || no_docker "apt-get install docker.io failed"
    fi
    say "starting dockerd on a temporary data root"
    mkdir -p "$tmp/docker"
    DOCKER_HOST="unix://$tmp/docker/sock"
    export DOCKER_HOST
    dockerd --data-root "$tmp/docker/root" --exec-root "$tmp/docker/exec" \
        --pidfile "$tmp/docker/pid" --host "$DOCKER_HOST" > "$tmp/docker/log" 2>&1 &
    dockerd_pid=$!
    if ! wait_for 60 docker info >/dev/null 2>&1; then
        tail -n 20 "$tmp/docker/log" >&2
        no_docker "dockerd does not start on this machine (log above)"
    fi
fi
say "docker: $(docker version --format '{{.Server.Version}}')"

# --- the image -------------------------------------------------------------------
for b in builder-server builder-worker builder-client builder-inspect; do
    [ -x "$bin/$b" ] || die "$bin/$b missing: cargo build --release first"
done
BUILDER_WORKER_BIN="$bin/builder-worker" sh "$here/build-image.sh" "$tag" >/dev/null \
    || die "build-image.sh failed"
say "image $tag built"

# --- a server on Docker's bridge -----------------------------------------------------
gateway=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}') \
    || die "no Docker bridge network"
if [ -z "$gateway" ]; then
    # Docker 20.10 leaves the default bridge's gateway out: ask the interface.
    bridge=$(docker network inspect bridge --format '{{index .Options "com.docker.network.bridge.name"}}')
    gateway=$(ip -4 -o addr show dev "${bridge:-docker0}" | awk '{sub("/.*", "", $4); print $4; exit}')
fi
[ -n "$gateway" ] || die "cannot find the address of Docker's bridge"
echo client-secret > "$tmp/client.token"
echo worker-secret > "$tmp/worker.token"
mkdir -p "$tmp/state" "$tmp/conf"
"$bin/builder-server" --ip "$gateway" --port 0 --dir "$tmp/state" --config-dir "$tmp/conf" \
    --client-token-file "$tmp/client.token" --worker-token-file "$tmp/worker.token" \
    > "$tmp/server.log" 2>&1 &
server_pid=$!
listening() { grep -q 'builder-server listening' "$tmp/server.log"; }
wait_for 30 listening || { cat "$tmp/server.log" >&2; die "the server did not start"; }
remote=$(sed -n 's/.*builder-server listening.*address=\([^ ]*\).*/\1/p; s/.*address=\([^ ]*\).*builder-server listening.*/\1/p' "$tmp/server.log" | head -n 1)
[ -n "$remote" ] || { cat "$tmp/server.log" >&2; die "no address in the server's log"; }
say "server listening on $remote"

client() { "$bin/builder-client" --remote "$remote" --token-file "$tmp/client.token" "$@"; }
cat > "$tmp/job.sh" <<'JOB'
#!/bin/sh
if [ -e /.dockerenv ]; then
    echo "in a container: /.dockerenv exists"
else
    echo "NOT in a container: no /.dockerenv"
    exit 1
fi
echo "uid $(id -u)"
echo made-in-docker > artifact.txt
JOB
client schedule dockerjob debian-12 "$tmp/job.sh" --period never >/dev/null || die "schedule failed"
client execute dockerjob >/dev/null || die "execute failed"

# --- the worker, exactly as builder-worker.service runs it ----------------------------
unit="$root/systemd/builder-worker.service"
line=$(sed -n 's/^ExecStart=//p' "$unit")
[ -n "$line" ] || die "no ExecStart in $unit"
BUILDER_PLATFORM=debian-12 BUILDER_IMAGE=$tag BUILDER_REMOTE=$remote BUILDER_DOCKER_FLAGS=
BUILDER_TOKEN=worker-secret
export BUILDER_TOKEN
# systemd's expansion: ${VAR} is one word, $VAR splits on whitespace.
cmd=$(printf '%s\n' "$line" | sed \
    -e "s|\${BUILDER_PLATFORM}|$BUILDER_PLATFORM|g" -e "s|\${BUILDER_IMAGE}|$BUILDER_IMAGE|g" \
    -e "s|\${BUILDER_REMOTE}|$BUILDER_REMOTE|g" -e "s|\$BUILDER_DOCKER_FLAGS|$BUILDER_DOCKER_FLAGS|g")
case "$cmd" in *'$'*|*%*) die "unexpanded variable in: $cmd" ;; esac
say "running: $cmd"
# shellcheck disable=SC2086 # split into words, as systemd does
set -- $cmd
[ -x "$1" ] || die "$1 (the unit's docker) is not installed"
status=0
timeout 300 "$@" > "$tmp/worker.log" 2>&1 || status=$?
[ "$status" -eq 0 ] || { cat "$tmp/worker.log" >&2; die "the worker's docker run exited with status $status"; }

# --- the checks -------------------------------------------------------------------------
record=''
find_record() { record=$(find "$tmp/state" -name full -type f | head -n 1); [ -n "$record" ]; }
wait_for 30 find_record || { cat "$tmp/server.log" >&2; die "no build record arrived"; }
console=$("$bin/builder-inspect" "$record" --console) || die "builder-inspect failed"
printf '%s\n' "$console" | grep '/.dockerenv' || true
printf '%s\n' "$console" | grep -q 'in a container: /.dockerenv exists' \
    || { printf '%s\n' "$console" >&2; die "the job did not run in a container"; }
printf '%s\n' "$console" | grep -q 'uid 497' || die "the job did not run as the unprivileged builder user"
"$bin/builder-inspect" "$record" --output "$tmp/artifacts" >/dev/null 2>&1 || die "builder-inspect --output failed"
[ "$(cat "$tmp/artifacts/artifact.txt" 2>/dev/null)" = made-in-docker ] || die "the artifact did not arrive"
left=$(docker ps --all --quiet --filter name='^/builder-worker$')
[ -z "$left" ] || die "the container is still there: $left"
say "PASS: the job ran in a container as uid 497, its record and artifact arrived, the container is gone"
