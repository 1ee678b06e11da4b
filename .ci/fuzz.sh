#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time (FUZZ_SECONDS,
# 30 by default), from a corpus seeded with the repository's own vectors.
# A crash, a failed invariant, a leak past libFuzzer's memory limit or an input
# that takes over 10 s fails CI; the input is left in fuzz/artifacts/TARGET/
# (reproduce with `cargo +nightly fuzz run -s none TARGET THAT_FILE`).
#
# Targets are built without a sanitizer: the crates under test contain no
# unsafe code, and the build keeps debug assertions and overflow checks on,
# which is what finds bugs in safe decoders. The long runs recorded in
# BENCHMARKS.md use the same build.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "error: fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# The fuzz crate is its own workspace with its own lock file: refuse to
# build anything but the locked versions.
cargo +nightly fetch --locked --manifest-path fuzz/Cargo.toml
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
fuzz/seed-corpus.sh
cargo +nightly fuzz build -s none

targets=$(cargo +nightly fuzz list)
for target in $targets; do
    mkdir -p "fuzz/corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    log=$(mktemp)
    if ! cargo +nightly fuzz run -s none "$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        rm -f "$log"
        echo "error: fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    # libFuzzer's closing lines: executions, speed, corpus.
    grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|Done )' "$log" |
        sed "s/^/fuzz: $target: /"
    rm -f "$log"
done
echo "fuzz: every target ran ${seconds}s without a finding: $(printf '%s\n' "$targets" | paste -sd, -)"
