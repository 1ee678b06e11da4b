#!/bin/sh
# A tiny builder job: prints a few lines and leaves one artifact,
# dist/hello.txt (every file a job leaves in its directory is an artifact).
#   builder-client schedule hello debian-12 examples/hello.sh --period daily
set -eu
echo "building on $(uname -sm)"
for i in 1 2 3; do
    echo "step $i of 3"
    sleep 0.3
done
mkdir -p dist
echo "hello from builder" > dist/hello.txt
echo "done: dist/hello.txt"
