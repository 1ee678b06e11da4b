#!/bin/sh
# Writes the package's operator guide, /usr/share/doc/builder/README.Debian,
# to stdout: the operator's sections of README.md, verbatim, so the two never
# disagree (create_package.sh runs this at every build).
#   packaging/debian/readme-debian.sh README.md > README.Debian
# Fails, naming it, when a section it needs is missing from README.md.
set -eu

readme=${1:?usage: readme-debian.sh README.md}
die() { echo "readme-debian.sh: error: $*" >&2; exit 1; }
[ -r "$readme" ] || die "cannot read $readme"

# The "## " sections copied, in this order of the README. Of "Operating it"
# every "### " part is kept but "Checks in CI", which is for developers.
sections='Programs|The job contract|Operating it|Migrating from the OCaml builder'
# What an operator needs, each of which must be in those sections.
for needed in '## Programs' '## Operating it' '### Install on Debian/Ubuntu' \
    '### Docker workers' '### FreeBSD: jails and rc.conf' '### Upgrades' \
    '- **Upload**' '- **Authentication**' '- **Metrics**' '- **Workers**' \
    '### Backup and restore' '### Logs'; do
    grep -qF -- "$needed" "$readme" || die "$readme has no \"$needed\": update $0"
done

cat <<'HEAD'
builder for Debian: the operator's guide
========================================

The server, its tokens, Docker and jail workers, the upload to builder-web,
metrics and upgrades. This is README.md's operator sections as of this
package's build; the man pages (man builder-server, man builder-worker,
man builder-client) have every flag.

Installed here:
  /usr/bin/builder-{server,worker,client,inspect}
  /lib/systemd/system/builder.service             the server
  /lib/systemd/system/builder-worker-host.service a worker on the host (trusted jobs)
  /lib/systemd/system/builder-worker{,@}.service  a Docker container per job
  /etc/default/builder                            settings (a conffile)
  /etc/builder/orb-build.template.*               orb-build templates
  /usr/share/builder/docker/                      build-image.sh, Dockerfile
  /usr/share/doc/builder/examples/                hello.sh, hello-v2.sh
  /var/lib/builder                                the server's state (0700)

A first job, once builder.service and a worker run:
  builder-client schedule hello debian-12 /usr/share/doc/builder/examples/hello.sh
  builder-client results

HEAD
awk -v want="^($sections)\$" '
    /^## / { title = substr($0, 4); keep = (title ~ want); skip = 0 }
    /^### / { skip = ($0 == "### Checks in CI") }
    keep && !skip { print }
' "$readme"
