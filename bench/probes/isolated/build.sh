#!/bin/sh
# Builds the probes in this folder (not part of the meson build: research
# programs for issue 10's design, each checks itself). Usage: ./build.sh
set -e
cd "$(dirname "$0")"
for p in p1_rt p2_wake p3_kill p4_replace p5_clone3; do
	gcc -O2 -Wall -Wno-unused-function -o "$p" "$p.c" -lpthread
done
