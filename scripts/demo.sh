#!/usr/bin/env bash
# Sets up (installs what is missing), builds, and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
[[ -f build/build.ninja ]] || meson setup build >/dev/null
ninja -C build examples/demo examples/jobserver/jobserver >/dev/null
exec ./build/examples/demo
