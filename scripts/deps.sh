#!/usr/bin/env bash
# Installs what ctpool needs to build and test, from Debian packages, if it is
# missing, and the packages named as arguments (scripts/bench.sh adds the
# libraries it compares with, and python3-pebble, Debian's build of pebble
# for /usr/bin/python3, for the isolated-task comparison). Safe to run
# again: it installs nothing when everything is there.
# Usage: scripts/deps.sh [EXTRA-PACKAGE ...]
set -euo pipefail

pkgs=(gcc libc6-dev pkg-config meson ninja-build libck-dev libcmocka-dev
      libmicrohttpd-dev curl spin clang libclang-rt-14-dev
      redis-server redis-tools libhiredis-dev python3
      libasan8 libubsan1 libtsan2 "$@")
need=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		need+=("$p")
done
if ((${#need[@]})); then
	sudo=""
	[[ $(id -u) -ne 0 ]] && sudo="sudo"
	echo "deps: installing ${need[*]}"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
