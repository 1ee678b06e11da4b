#!/bin/sh
# Installs the .deb with the real dpkg into a throwaway root and runs its
# maintainer scripts there (dpkg --root --force-script-chrootless; the
# scripts honour DPKG_ROOT): install creates the builder user and group and
# /var/lib/builder 0700; reinstalling (an upgrade) keeps the user, the state
# and an edited conffile; remove keeps the state; purge removes the user,
# the group and the state.
#   test-maintscripts.sh BUILDER.deb
set -eu

deb=${1:?usage: test-maintscripts.sh BUILDER.deb}
r=$(mktemp -d)
trap 'rm -rf "$r"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

mkdir -p "$r/etc" "$r/var/lib/dpkg/info" "$r/var/lib/dpkg/updates" "$r/var/log" "$r/usr/sbin"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$r/etc/passwd"
printf 'root:x:0:\n' > "$r/etc/group"
printf 'root:*:19000:0:99999:7:::\n' > "$r/etc/shadow"
printf 'root:*::\n' > "$r/etc/gshadow"
cp /etc/login.defs "$r/etc/login.defs"
: > "$r/var/lib/dpkg/status"

dpkg_root() {
    dpkg --root="$r" --force-script-chrootless --force-depends --log=/dev/null "$@" > "$r.log" 2>&1 \
        || { cat "$r.log"; rm -f "$r.log"; fail "dpkg $*"; return 1; }
    rm -f "$r.log"
}
count() { grep -c "^builder:" "$r/etc/$1" || true; }

dpkg_root --install "$deb"
[ "$(count passwd)" = 1 ] || fail "install: no builder user"
[ "$(count group)" = 1 ] || fail "install: no builder group"
uid=$(awk -F: '$1 == "builder" { print $3 }' "$r/etc/passwd")
[ "$(stat -c '%a %u' "$r/var/lib/builder" 2>/dev/null)" = "700 $uid" ] \
    || fail "install: /var/lib/builder is not 0700 builder: $(stat -c '%a %u' "$r/var/lib/builder" 2>&1)"
[ -x "$r/usr/bin/builder-server" ] || fail "install: no /usr/bin/builder-server"

echo state > "$r/var/lib/builder/state.db"
echo 'BUILDER_FLAGS="--port 4321"' >> "$r/etc/default/builder"
dpkg_root --install "$deb"
[ "$(count passwd)" = 1 ] || fail "upgrade: builder user count $(count passwd)"
[ "$(awk -F: '$1 == "builder" { print $3 }' "$r/etc/passwd")" = "$uid" ] || fail "upgrade: uid changed"
[ -e "$r/var/lib/builder/state.db" ] || fail "upgrade: the state is gone"
grep -q 'port 4321' "$r/etc/default/builder" || fail "upgrade: the edited /etc/default/builder was replaced"

dpkg_root --remove builder
[ -e "$r/var/lib/builder/state.db" ] || fail "remove: the state is gone"
[ "$(count passwd)" = 1 ] || fail "remove: the user is gone"
[ ! -e "$r/usr/bin/builder-server" ] || fail "remove: the binaries are still there"

dpkg_root --purge builder
[ ! -e "$r/var/lib/builder" ] || fail "purge: /var/lib/builder is still there"
[ "$(count passwd)" = 0 ] || fail "purge: the builder user is still there"
[ "$(count group)" = 0 ] || fail "purge: the builder group is still there"
[ ! -e "$r/etc/default/builder" ] || fail "purge: /etc/default/builder is still there"

if [ "$failures" -ne 0 ]; then
    echo "test-maintscripts.sh: $failures failure(s)"
    exit 1
fi
echo "test-maintscripts.sh: install, upgrade, remove and purge behave"
