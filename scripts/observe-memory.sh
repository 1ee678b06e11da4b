#!/bin/bash
# Server memory when a finished build with a large console is observed:
# one job prints MIB MiB (default 200) of 100-byte lines, then
# `builder-client observe-latest` replays it from the record. Prints the
# server's VmHWM/VmRSS after the build and after the replay (the peak is
# reset in between with /proc/PID/clear_refs). Linux only; builds with
# scripts/build-release.sh (a no-op when current). Results: BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(scripts/build-release.sh)
mib=${1:-200}
dir=$(mktemp -d "${TMPDIR:-/tmp}/builder-observe.XXXXXX")
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
memory() { grep -E 'VmHWM|VmRSS' "/proc/$server_pid/status" | tr -s ' \t' ' ' | tr '\n' ' '; }

mkdir -p "$dir/etc" "$dir/work"
"$bin/builder-server" --ip 127.0.0.1 --port 0 --dir "$dir/state" --config-dir "$dir/etc" 2> "$dir/server.log" &
server_pid=$!
addr=""
for _ in $(seq 100); do
    addr=$(grep -o 'address=[^ ]*' "$dir/server.log" | head -1 | cut -d= -f2 || true)
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "the server did not start:" >&2; cat "$dir/server.log" >&2; exit 1; }
line=$(printf '%099d' 0)
printf '#!/bin/sh\nyes %s | head -c %d\n' "$line" $((mib * 1024 * 1024)) > "$dir/job.sh"
"$bin/builder-client" -r "$addr" schedule big p "$dir/job.sh" --period never
TMPDIR="$dir/work" "$bin/builder-worker" p -r "$addr" 2> "$dir/worker.log"
echo "after the build:  $(memory)"
echo 5 > "/proc/$server_pid/clear_refs"
"$bin/builder-client" -r "$addr" observe-latest --job big > "$dir/observed.txt"
echo "after observing:  $(memory)($(wc -l < "$dir/observed.txt") lines observed)"
