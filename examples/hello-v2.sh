#!/bin/sh
# The second version of examples/hello.sh, for `builder-client update hello
# --script examples/hello-v2.sh`: it says v2, counts to 5 and leaves a
# second artifact, so the change shows in the console and in the artifacts.
set -eu
echo "hello v2: building on $(uname -sm)"
for i in 1 2 3 4 5; do
    echo "step $i of 5"
    sleep 0.2
done
mkdir -p dist
echo "hello from builder (v2)" > dist/hello.txt
date -u +%Y-%m-%dT%H:%M:%SZ > dist/built-at.txt
echo "done: dist/hello.txt dist/built-at.txt"
