#!/bin/sh
# Builds the Docker image of the builder worker OFFLINE, with no registry:
#   build-image.sh [TAG]                     (default builder-worker:latest)
#
# It assembles a small root filesystem from this machine -- the worker
# binary, /bin/sh and the few tools a job needs, with the shared libraries
# they use -- and `docker import`s it. The worker runs in it as the
# unprivileged user builder (uid 497), with /tmp as its scratch space.
#
# Settings:
#   BUILDER_WORKER_BIN  the worker binary (default: target/release/builder-worker
#                       of this checkout, else builder-worker on PATH, as
#                       installed by the .deb)
#   BUILDER_IMAGE_TOOLS extra programs from this host to put in the image
#                       (space-separated names on PATH)
#   DOCKER              the docker command (default: docker)
#
# Operators with a registry can use the Dockerfile next to this script.
set -eu

tag=${1:-builder-worker:latest}
here=$(cd "$(dirname "$0")" && pwd)
docker=${DOCKER:-docker}

die() { echo "build-image.sh: error: $*" >&2; exit 1; }

worker=${BUILDER_WORKER_BIN:-}
if [ -z "$worker" ]; then
    if [ -x "$here/../../target/release/builder-worker" ]; then
        worker="$here/../../target/release/builder-worker"
    else
        worker=$(command -v builder-worker) \
            || die "no builder-worker: build it (cargo build --release -p builder-worker) or set BUILDER_WORKER_BIN"
    fi
fi
[ -x "$worker" ] || die "$worker is not an executable"
command -v "$docker" >/dev/null 2>&1 || die "$docker not found"
command -v ldd >/dev/null 2>&1 || die "ldd not found"

# What a job's shell script may expect of a minimal POSIX system.
tools="sh cat cp mv rm ln ls mkdir rmdir chmod touch date echo env false true test
    printf sleep id uname head tail wc sort grep sed tr cut find xargs basename
    dirname readlink stat tar gzip sha256sum md5sum ${BUILDER_IMAGE_TOOLS:-}"

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT INT TERM

# Copies FILE (following symlinks) to the same path in the image, with the
# libraries it needs.
add() {
    src=$1 dst=$2
    mkdir -p "$rootfs$(dirname "$dst")"
    cp -L "$src" "$rootfs$dst"
    ldd "$src" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p' \
        | while read -r lib; do
            if [ ! -e "$rootfs$lib" ]; then
                mkdir -p "$rootfs$(dirname "$lib")"
                cp -L "$lib" "$rootfs$lib"
            fi
        done
}

mkdir -p "$rootfs/usr/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/home/builder" \
    "$rootfs/proc" "$rootfs/dev" "$rootfs/sys"
for tool in $tools; do
    path=$(command -v "$tool" 2>/dev/null) || { echo "build-image.sh: note: $tool not on this host, left out" >&2; continue; }
    case "$path" in /*) ;; *) continue ;; esac  # a shell builtin only
    add "$path" "/usr/bin/$tool"
done
[ -x "$rootfs/usr/bin/sh" ] || die "no sh on this host"
ln -s usr/bin "$rootfs/bin"
add "$worker" /usr/bin/builder-worker

cat > "$rootfs/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
builder:x:497:497:builder worker:/home/builder:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$rootfs/etc/group" <<'G'
root:x:0:
builder:x:497:
nogroup:x:65534:
G
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"
chown 497:497 "$rootfs/home/builder"

# A deterministic tar: sorted, numeric owners, one mtime.
epoch=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$worker")}
tar --sort=name --numeric-owner --mtime="@$epoch" -C "$rootfs" -cf - . \
    | "$docker" import \
        --change 'USER builder' \
        --change 'WORKDIR /home/builder' \
        --change 'ENV PATH=/usr/bin' \
        --change 'ENV TMPDIR=/tmp' \
        --change 'CMD ["builder-worker", "--help"]' \
        --message "builder-worker from $(basename "$worker") $("$worker" --version 2>/dev/null || true)" \
        - "$tag" >/dev/null || die "docker import failed"
echo "$tag"
