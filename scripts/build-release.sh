#!/bin/sh
# The one release build that scripts/demo.sh, packaging/debian/create_package.sh
# and .ci/ops.sh share: the same cargo invocation, so the same packages,
# features and profile, and none of them rebuilds the others' work.
#   scripts/build-release.sh        -> prints the directory of the binaries
# CARGO_TARGET_DIR (and cargo's build.target-dir) are honoured. The first
# build takes minutes (see the README's Quick start); later ones are no-ops
# when nothing changed.
set -eu
cd "$(dirname "$0")/.."
# builder-gen-docs makes the package's man pages and completions; builder-inspect
# is a binary of builder-client.
#
# Without SOURCE_DATE_EPOCH, whoever calls: create_package.sh exports it, and
# ring's build script reruns when it changes (rerun-if-env-changed), which
# rebuilds ring, rustls, reqwest and the server: a build with it and one
# without would undo each other's work (issue 20's "ping-pong"). The
# binaries do not depend on it; the package's reproducibility comes from
# create_package.sh's normalisation.
env -u SOURCE_DATE_EPOCH cargo build --release --locked --quiet \
    -p builder-server -p builder-worker -p builder-client -p builder-gen-docs >&2
# Where cargo put them: ask cargo, which knows every way to move target/.
target=$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
echo "${target:-$PWD/target}/release"
