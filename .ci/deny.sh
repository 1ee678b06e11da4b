#!/usr/bin/env bash
# Audits the workspace's dependencies with cargo-deny and the policy in
# deny.toml: licenses, bans and sources always; security advisories against
# the RustSec advisory database.
#
# The advisory database is a git repository on GitHub, which these machines
# cannot reach (they reach crates.io and a few other registries only, and no
# registry package carries the database). So: the fetch is tried; the
# advisories are then checked against whatever copy cargo-deny has, saying
# loudly how old it is; with no copy at all they are NOT checked, and this
# says so loudly. Licenses, bans and sources need no database and always
# fail CI on a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny

cargo deny --locked check --hide-inclusion-graph licenses bans sources

loud() {
    printf '\n%s\n' "************************************************************************" >&2
    printf 'deny: %s\n' "$@" >&2
    printf '%s\n\n' "************************************************************************" >&2
}

# cargo-deny keeps the database in $CARGO_HOME/advisory-dbs/advisory-db-HASH
# (the HASH names the default URL). `fetch db` may exit 0 without fetching
# anything, so what was checked is judged from the copy itself: its newest
# commit is the date of the newest advisory it knows.
dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
fetch_log=$(mktemp)
timeout 120 cargo deny --locked fetch db >"$fetch_log" 2>&1 || true
db=""
for candidate in "$dbs"/*/; do
    [ -d "$candidate/crates" ] && db=${candidate%/}
done
if [ -z "$db" ]; then
    sed 's/^/deny: fetch: /' "$fetch_log" >&2
    rm -f "$fetch_log"
    loud "ADVISORIES NOT CHECKED: the RustSec advisory database could not be" \
        "fetched (GitHub is unreachable from here) and there is no copy in" \
        "$dbs/. Licenses, bans and sources were checked; known" \
        "vulnerabilities and unmaintained or yanked crates were NOT." \
        "To check them, clone the RustSec advisory-db repository to" \
        "$dbs/advisory-db-3157b0e258782691 and run .ci/deny.sh again."
    exit 0
fi
rm -f "$fetch_log"
date=$(git -C "$db" log -1 --format=%cs)
commit=$(git -C "$db" log -1 --format=%h)
age=$(( ($(date +%s) - $(git -C "$db" log -1 --format=%ct)) / 86400 ))
if [ "$age" -gt 7 ]; then
    loud "the RustSec advisory database in $db is $age days old" \
        "(commit $commit, $date) and could not be updated: advisories" \
        "published since $date are NOT checked."
fi
cargo deny --locked --offline check advisories
echo "deny: advisories checked against the RustSec database of $date (commit $commit)"
