#!/bin/sh
# The second version of examples/hello.sh, for `builder-client update`:
#   builder-client update hello --script examples/hello-v2.sh
# Same job name, history and schedule; the next build runs this script.
set -eu
echo "building on $(uname -sm), version 2"
for i in 1 2 3; do
    echo "step $i of 3"
    sleep 0.3
done
mkdir -p dist
echo "hello from builder, version 2" > dist/hello.txt
date -u +%Y-%m-%dT%H:%M:%SZ > dist/built-at.txt
echo "done: dist/hello.txt dist/built-at.txt"
