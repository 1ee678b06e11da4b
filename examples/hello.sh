#!/bin/sh
# An example job for builder (see the README's quick start): it prints a
# few lines and leaves one artifact, dist/hello.txt. A worker runs it in a
# fresh, empty directory; every file left there is an artifact.
set -eu
echo "hello v1: building on $(uname -sm)"
for i in 1 2 3; do
    echo "step $i of 3"
    sleep 0.2
done
mkdir -p dist
echo "hello from builder (v1)" > dist/hello.txt
echo "done: dist/hello.txt"
