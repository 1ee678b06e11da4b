#!/bin/sh
# A local demo of the whole farm: builds the programs (scripts/build-release.sh,
# the build the .deb shares), starts a server on 127.0.0.1 with a temporary
# state directory, schedules examples/hello.sh, runs one worker, shows the
# live console and then the stored record.
set -eu
cd "$(dirname "$0")/.."
bin=$(scripts/build-release.sh)
[ -x "$bin/builder-server" ] || { echo "builder-server not found in $bin" >&2; exit 1; }
demo=$(mktemp -d "${TMPDIR:-/tmp}/builder-demo.XXXXXX")
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$demo"
}
trap cleanup EXIT INT TERM

mkdir -p "$demo/state" "$demo/etc" "$demo/work"
"$bin/builder-server" --ip 127.0.0.1 --port 0 --dir "$demo/state" --config-dir "$demo/etc" \
    2> "$demo/server.log" &
server_pid=$!
addr=""
for _ in $(seq 1 100); do
    addr=$(sed -n 's/.*address=\([^ ]*\).*/\1/p' "$demo/server.log" | head -n 1)
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "server did not start:"; cat "$demo/server.log"; exit 1; }
echo "== server listening on $addr (state in $demo/state)"

"$bin/builder-client" -r "$addr" schedule hello demo-platform examples/hello.sh --period never
echo "== scheduled job 'hello'"

echo "== live console:"
# `execute --observe` follows exactly the build it queues (scheduling queued
# one already; execute moves it to the front and keeps its UUID). The worker
# starts once the client has said which build it follows. The file exists
# before the client starts, so the wait below never reads a missing file.
: > "$demo/observe.err"
"$bin/builder-client" -r "$addr" execute hello --observe 2> "$demo/observe.err" &
observe_pid=$!
for _ in $(seq 1 100); do
    grep -q "queued on" "$demo/observe.err" && break
    kill -0 "$observe_pid" 2> /dev/null || break
    sleep 0.1
done
TMPDIR="$demo/work" "$bin/builder-worker" demo-platform -r "$addr" 2> "$demo/worker.log" &
worker_pid=$!
wait "$observe_pid" || { echo "observe failed:"; cat "$demo/observe.err"; exit 1; }
cat "$demo/observe.err"
wait "$worker_pid" || { echo "worker failed:"; cat "$demo/worker.log"; exit 1; }

record=$(find "$demo/state/hello" -name full -type f | head -n 1)
echo "== stored record $record:"
"$bin/builder-inspect" "$record" --output "$demo/artifacts"
echo "== artifact written by builder-inspect:"
cat "$demo/artifacts/dist/hello.txt"
