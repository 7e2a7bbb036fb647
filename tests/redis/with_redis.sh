#!/usr/bin/env bash
# Usage: with_redis.sh PROGRAM [ARGS...]
# Runs PROGRAM with CTP_REDIS_URL set to a redis-server of its own, started
# on a free loopback port for this run and stopped after it. Exits 77 (meson:
# skipped) with a clear message only when redis-server is not installed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/redis_lib.sh"
if ! command -v redis-server >/dev/null; then
	echo "with_redis: redis-server is not installed (scripts/deps.sh installs it): skipped"
	exit 77
fi
dir=$(mktemp -d)
trap 'redis_stop; rm -rf "$dir"' EXIT
redis_start "$dir" || exit 1
export CTP_REDIS_URL=$REDIS_URL
"$@"
