#!/bin/sh
# Builds the FreeBSD package: packaging/FreeBSD/create_package.sh [OUTDIR]
# (default: target/pkg). Run on FreeBSD from a checkout; the binaries come
# from scripts/build-release.sh (the build the Debian package and the demo
# share; a no-op when current). Prints the path of builder-VERSION.pkg.
#
# The package creates the builder user and group (uid/gid 497, as the
# reference's) and /var/db/builder (0700); it is reproducible:
# SOURCE_DATE_EPOCH is the last commit's time and pkg create -t uses it.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
pdir="$root/packaging/FreeBSD"
out=${1:-"$root/target/pkg"}

command -v pkg >/dev/null 2>&1 || {
    echo "create_package.sh: error: pkg(8) not found; build the FreeBSD package on FreeBSD" >&2
    exit 1
}

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --pretty=%ct)}
export SOURCE_DATE_EPOCH
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
[ -n "$version" ] || { echo "create_package.sh: error: no version in Cargo.toml" >&2; exit 1; }

cd "$root"
bin=$("$root/scripts/build-release.sh")

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
rootdir="$stage/root"
prefix="$rootdir/usr/local"
mkdir -p "$prefix/libexec" "$prefix/sbin" "$prefix/etc/rc.d" "$prefix/etc/builder" "$prefix/share"

# The reference's places: daemons in libexec, client and inspect in sbin.
for b in builder-server builder-worker; do
    install -m 0555 -s "$bin/$b" "$prefix/libexec/$b"
done
for b in builder-client builder-inspect; do
    install -m 0555 -s "$bin/$b" "$prefix/sbin/$b"
done
install -m 0555 "$root/freebsd/builder_worker.sh" "$prefix/libexec/builder_worker.sh"
install -m 0555 "$pdir/rc.d/builder" "$prefix/etc/rc.d/builder"
install -m 0555 "$pdir/rc.d/builder_worker" "$prefix/etc/rc.d/builder_worker"
install -m 0644 "$root/freebsd/jail.conf.sample" "$prefix/etc/builder/jail.conf.sample"
for t in "$root"/packaging/templates/orb-build.template.*; do
    install -m 0644 "$t" "$prefix/etc/builder/$(basename "$t")"
done

# Man pages and completions from the clap definitions.
"$bin/builder-gen-docs" "$stage/docs" >/dev/null
mkdir -p "$prefix/share/man/man1" "$prefix/share/bash-completion/completions" \
    "$prefix/share/zsh/site-functions" "$prefix/share/fish/vendor_completions.d"
for page in "$stage"/docs/man/man1/*; do
    gzip -9n < "$page" > "$prefix/share/man/man1/${page##*/}.gz"
done
cp "$stage"/docs/bash-completion/completions/* "$prefix/share/bash-completion/completions/"
cp "$stage"/docs/zsh/vendor-completions/* "$prefix/share/zsh/site-functions/"
cp "$stage"/docs/fish/vendor_completions.d/* "$prefix/share/fish/vendor_completions.d/"

flatsize=$(find "$rootdir" -type f -exec stat -f %z {} + | awk '{s += $1} END {print s + 0}')
manifest="$stage/+MANIFEST"
sed -e "s|%%VERSION%%|$version|" -e "s|%%FLATSIZE%%|$flatsize|" \
    -e "s|%%WWW%%|$(sed -n 's/^repository = "\(.*\)"/\1/p' "$root/Cargo.toml")|" \
    "$pdir/MANIFEST" > "$manifest"
{
    printf '\nfiles {\n'
    (cd "$rootdir" && find . -type f | LC_ALL=C sort | while read -r f; do
        printf '    "/%s": "%s",\n' "${f#./}" "$(sha256 -q "$f")"
    done)
    printf '}\n'
    # Templates are configuration: pkg keeps an operator's edits.
    printf 'config: [\n'
    for t in "$prefix"/etc/builder/orb-build.template.*; do
        printf '    "/usr/local/etc/builder/%s",\n' "${t##*/}"
    done
    printf ']\n'
} >> "$manifest"

mkdir -p "$out"
pkg create -t "$SOURCE_DATE_EPOCH" -r "$rootdir" -M "$manifest" -o "$out"
echo "$out/builder-$version.pkg"
