#!/bin/sh
# CI for operations (called by .ci/run after the cargo tests): the .deb is
# reproducible and installable and carries its operator guide and examples,
# every shell script passes shellcheck, the systemd units verify, the
# FreeBSD launcher and Docker worker tests pass, and the package works under
# a real systemd (.ci/systemd.sh). Needs root on a Debian machine (apt-get
# for shellcheck, debootstrap, docker.io).
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step() { printf '\n=== %s\n' "$*"; }
die() { echo "ops.sh: FAIL: $*" >&2; exit 1; }

step "Debian package, built twice"
deb=$(packaging/debian/create_package.sh)
cp "$deb" "$tmp/first.deb"
deb2=$(packaging/debian/create_package.sh)
[ "$deb" = "$deb2" ] || die "the two builds wrote $deb and $deb2"
cmp "$tmp/first.deb" "$deb" || die "two builds of the .deb differ: not reproducible"
echo "$deb: reproducible ($(wc -c < "$deb") bytes, sha256 $(sha256sum "$deb" | cut -c1-16)...)"

step "Package contents"
dpkg-deb --info "$deb"
dpkg-deb --contents "$deb"

step "Install into a throwaway root"
root="$tmp/root"
dpkg-deb -x "$deb" "$root"
dpkg-deb -e "$deb" "$tmp/DEBIAN"
"$root/usr/bin/builder-server" --version
for b in builder-server builder-worker builder-client builder-inspect; do
    "$root/usr/bin/$b" --version >/dev/null || die "installed $b --version failed"
    [ -s "$root/usr/share/man/man1/$b.1.gz" ] || die "no man page for $b"
    [ -s "$root/usr/share/bash-completion/completions/$b" ] || die "no bash completion for $b"
    [ -s "$root/usr/share/zsh/vendor-completions/_$b" ] || die "no zsh completion for $b"
    [ -s "$root/usr/share/fish/vendor_completions.d/$b.fish" ] || die "no fish completion for $b"
    if readelf -S "$root/usr/bin/$b" | grep -q "\.symtab"; then die "$b is not stripped"; fi
done
for f in /etc/default/builder /etc/builder/orb-build.template.debian-12 \
    /etc/builder/orb-build.template.ubuntu-24.04 /etc/builder/orb-build.template.freebsd-14; do
    grep -qx "$f" "$tmp/DEBIAN/conffiles" || die "$f is not a conffile"
done
ls -l "$root/usr/bin"

step "Operator guide and examples in the package"
doc="$root/usr/share/doc/builder"
sh packaging/debian/readme-debian.sh README.md > "$tmp/README.Debian"
cmp "$tmp/README.Debian" "$doc/README.Debian" || die "README.Debian is not README.md's operator sections"
for topic in '### Docker workers' '### FreeBSD: jails and rc.conf' '### Upgrades' \
    '- **Upload**' '- **Authentication**' '- **Metrics**' 'builder.service'; do
    grep -qF -- "$topic" "$doc/README.Debian" || die "README.Debian lacks \"$topic\""
done
for ex in examples/*; do
    cmp "$ex" "$doc/examples/${ex##*/}" || die "$ex is not in /usr/share/doc/builder/examples"
done
echo "README.Debian: $(wc -l < "$doc/README.Debian") lines; examples: $(cd "$doc/examples" && echo *)"

step "Package maintainer scripts (dpkg --root: install, upgrade, purge)"
sh packaging/debian/test-maintscripts.sh "$deb"

step "shellcheck"
if ! command -v shellcheck >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi
# Every tracked file that is a shell script (by name or #! line); the
# fixtures are data. At shellcheck's default severity: every finding fails.
git ls-files | while read -r f; do
    case "$f" in
        fixtures/*) continue ;;
        *.sh) echo "$f" ;;
        *) if head -n 1 "$f" 2>/dev/null | grep -qE '^#!.*(/|env )(ba|da)?sh( |$)'; then echo "$f"; fi ;;
    esac
done > "$tmp/scripts"
sed 's/^/  /' "$tmp/scripts"
xargs shellcheck < "$tmp/scripts"

step "systemd-analyze verify"
# In the installed tree, with systemd's own units and a stand-in for
# docker.service and /usr/bin/docker where Docker is not installed.
cp -an /lib/systemd/system/. "$root/lib/systemd/system/"
[ -e "$root/lib/systemd/system/docker.service" ] \
    || printf '[Unit]\nDescription=stand-in\n[Service]\nExecStart=/usr/bin/docker\n' > "$root/lib/systemd/system/docker.service"
[ -x "$root/usr/bin/docker" ] || { printf '#!/bin/sh\n' > "$root/usr/bin/docker"; chmod +x "$root/usr/bin/docker"; }
units="builder.service builder-worker.service builder-worker@1.service builder-worker-host.service"
# shellcheck disable=SC2086
systemd-analyze verify --man=no --root="$root" $units > "$tmp/verify" 2>&1 || true
if [ -s "$tmp/verify" ]; then
    cat "$tmp/verify"
    die "systemd-analyze verify complained"
fi
echo "verified: $units"

step "FreeBSD jail launcher"
sh freebsd/test-builder_worker.sh

step "Docker worker"
BUILDER_BIN_DIR="${BUILDER_BIN_DIR:-$(scripts/build-release.sh)}" \
    sh packaging/docker/test-worker.sh

step "Under a real systemd"
sh .ci/systemd.sh "$deb"
