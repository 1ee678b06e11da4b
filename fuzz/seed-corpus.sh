#!/usr/bin/env bash
# Seeds every fuzz target's corpus (fuzz/corpus/TARGET/, not checked in) from
# the repository's own vectors: the reference's golden records in fixtures/,
# the checked-in sample frames in protocol/tests/frames/ and a few cron
# expressions. Idempotent: seeds are named after their source and rewritten;
# what fuzzing added to a corpus stays.
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=fuzz/corpus
for target in frame_decode legacy_decode message_decode record_decode record_stream trigger_parse; do
    mkdir -p "$corpus/$target"
done

# Frames: whole frames (length prefix included) for the codec; for the message
# decoders, each payload once per message type (the first byte picks the type,
# see fuzz_targets/message_decode.rs), since a frame of one type is a good
# start for any other.
frames=(protocol/tests/frames/*.bin)
[ -e "${frames[0]}" ] || { echo "error: no sample frames in protocol/tests/frames" >&2; exit 1; }
all=()
for f in "${frames[@]}"; do
    name=$(basename "$f" .bin)
    printf '\x07' | cat - "$f" > "$corpus/frame_decode/seed-$name"
    all+=("$f")
    for selector in 0 1 2 3 4 5 6; do
        { printf '%b' "\\x0$selector"; tail -c +9 "$f"; } > "$corpus/message_decode/seed-$selector-$name"
    done
done
# Several frames in one stream, cut into reads of one byte.
{ printf '\x00'; cat "${all[@]}"; } > "$corpus/frame_decode/seed-all-frames"

# Records: every .der in fixtures/ that is an exec record (fixtures/README.md).
records=(fixtures/exec/*.der fixtures/e2e/exec-*.der fixtures/quirks/*exec*.der)
[ -e "${records[0]}" ] || { echo "error: no golden records in fixtures/" >&2; exit 1; }
for f in "${records[@]}"; do
    [ -e "$f" ] || continue
    name=$(basename "$(dirname "$f")")-$(basename "$f" .der)
    cp "$f" "$corpus/record_decode/seed-$name"
    # Reads of mixed sizes, a checkpoint every 3 lines.
    { printf '\x2b\x02'; cat "$f"; } > "$corpus/record_stream/seed-$name"
done

# The reference's commands and state files (fixtures/README.md): every
# command, the recorded conversations' frames and the state files.
legacy=(fixtures/cmd/*.der fixtures/e2e/wire/*.der fixtures/state/*.der fixtures/e2e/state-final.der
    fixtures/quirks/*cmd*.der fixtures/quirks/*state*.der)
[ -e "${legacy[0]}" ] || { echo "error: no reference commands in fixtures/" >&2; exit 1; }
for f in "${legacy[@]}"; do
    [ -e "$f" ] || continue
    cp "$f" "$corpus/legacy_decode/seed-$(basename "$(dirname "$f")")-$(basename "$f" .der)"
done

# Cron expressions of every form the parser knows (protocol/src/trigger.rs).
i=0
while IFS= read -r expr; do
    printf '%s' "$expr" > "$corpus/trigger_parse/seed-$i"
    i=$((i + 1))
done <<'CRON'
0 3 * * *
*/15 * * * *
5,10-20/5 9-10 * * *
50/5 0 * * *
0 0 1 Jan,JUL *
0 0 1 feb-april/2 *
0 0 13 * 5
0 0 29 2 *
0 0 30 2 1
0 12 * * 0
  0 3 * * mon-FRI	
0 0 * * */2
0 0 ? * 7
@daily
@Weekly
@annually
@reboot
0 0 0 1 1 ? 2030
0 30 9 * * Mon-Fri
0 0 12 1/2 * * 2025-2030
hourly
61 * * * *
CRON

for target in frame_decode legacy_decode message_decode record_decode record_stream trigger_parse; do
    echo "$target: $(find "$corpus/$target" -type f | wc -l) files in $corpus/$target"
done
