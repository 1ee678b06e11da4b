#!/bin/sh
# Builds the Debian package from the release binaries and prints its path:
#   packaging/debian/create_package.sh            -> target/debian/builder_VERSION_ARCH.deb
# Builds the binaries first with scripts/build-release.sh, the build that
# scripts/demo.sh shares (a no-op when they are current; CARGO_TARGET_DIR is
# honoured). Set BUILDER_BIN_DIR to package binaries built elsewhere.
#
# Reproducible: SOURCE_DATE_EPOCH is the last commit's time; every file's
# mtime is set to it, owners are root:root, modes are fixed, entries are
# sorted, and man pages are gzipped without names or times. Two runs give
# identical bytes (CI checks it).
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
ddir="$root/packaging/debian"
out="$root/target/debian"

die() { echo "create_package.sh: error: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg strip gzip git; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --pretty=%ct)}
export SOURCE_DATE_EPOCH
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
[ -n "$version" ] || die "no version in $root/Cargo.toml"
arch=$(dpkg --print-architecture)
homepage=$(sed -n 's/^repository = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)

if [ -z "${BUILDER_BIN_DIR:-}" ]; then
    BUILDER_BIN_DIR=$("$root/scripts/build-release.sh") || die "the release build failed"
fi
bin=$BUILDER_BIN_DIR

umask 022
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
pkg="$stage/pkg"
mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/builder" \
    "$pkg/etc/default" "$pkg/usr/share/man/man1" "$pkg/usr/share/doc/builder" \
    "$pkg/usr/share/builder/docker" "$pkg/usr/share/doc/builder/examples"

for b in builder-server builder-worker builder-client builder-inspect; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing"
    strip --strip-all -o "$pkg/usr/bin/$b" "$bin/$b"
    chmod 0755 "$pkg/usr/bin/$b"
done
for unit in "$root"/systemd/*.service; do
    install -m 0644 "$unit" "$pkg/lib/systemd/system/"
done
for t in "$root"/packaging/templates/orb-build.template.*; do
    install -m 0644 "$t" "$pkg/etc/builder/"
done
install -m 0644 "$ddir/default" "$pkg/etc/default/builder"
install -m 0755 "$root/packaging/docker/build-image.sh" "$pkg/usr/share/builder/docker/"
install -m 0644 "$root/packaging/docker/Dockerfile" "$pkg/usr/share/builder/docker/"
install -m 0644 "$ddir/copyright" "$pkg/usr/share/doc/builder/copyright"
# The operator's guide: README.md's operator sections, made now, so it says
# what the README says.
sh "$ddir/readme-debian.sh" "$root/README.md" > "$pkg/usr/share/doc/builder/README.Debian" \
    || die "readme-debian.sh failed"
chmod 0644 "$pkg/usr/share/doc/builder/README.Debian"
for ex in "$root"/examples/*; do
    install -m 0755 "$ex" "$pkg/usr/share/doc/builder/examples/"
done

# Man pages and completions, generated now from the clap definitions.
[ -x "$bin/builder-gen-docs" ] || die "$bin/builder-gen-docs is missing"
"$bin/builder-gen-docs" "$stage/docs" >/dev/null || die "builder-gen-docs failed"
for page in "$stage"/docs/man/man1/*; do
    gzip -9n < "$page" > "$pkg/usr/share/man/man1/${page##*/}.gz"
done
for dir in bash-completion/completions zsh/vendor-completions fish/vendor_completions.d; do
    mkdir -p "$pkg/usr/share/$dir"
    cp "$stage/docs/$dir"/* "$pkg/usr/share/$dir/"
done

# Metadata.
(cd "$pkg" && find etc -type f | LC_ALL=C sort | sed 's|^|/|') > "$pkg/DEBIAN/conffiles"
size=$(du -sk --apparent-size "$pkg" | cut -f1)
sed -e "s|%%VERSION%%|$version|" -e "s|%%ARCH%%|$arch|" -e "s|%%SIZE%%|$size|" \
    -e "s|%%HOMEPAGE%%|$homepage|" "$ddir/control.in" > "$pkg/DEBIAN/control"
for script in postinst prerm postrm; do
    install -m 0755 "$ddir/$script" "$pkg/DEBIAN/$script"
done
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -print | LC_ALL=C sort \
    | xargs md5sum | sed 's|  \./|  |') > "$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/control" "$pkg/DEBIAN/md5sums"

# Normalise what the build machine left: directory modes and every mtime.
find "$pkg" -type d -exec chmod 0755 {} +
find "$pkg" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb="$out/builder_${version}_${arch}.deb"
# --root-owner-group: root:root whatever the builder's uid; dpkg-deb sorts
# the entries and clamps times to SOURCE_DATE_EPOCH.
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null || die "dpkg-deb failed"
echo "$deb"
