#!/usr/bin/env bash
# Sets up (installs what is missing), builds, and runs every test three ways:
#   plain      debugoptimized build: fast, stress, e2e (the job server)
#   asan       AddressSanitizer + LeakSanitizer + UBSan: fast, stress, e2e
#   tsan       ThreadSanitizer: fast + stress (stress scaled down 10x)
# Usage: scripts/test.sh [plain|asan|tsan ...]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"

passed=0
failed=0

# run NAME SUITE [env...]: meson test in build-NAME; counts results.
run() {
	local dir="build-$1" suite="$2"; shift 2
	local log
	log=$(mktemp)
	echo "== $dir: suite $suite"
	if env "$@" meson test -C "$dir" --suite "$suite" --print-errorlogs \
		--num-processes 1 >"$log" 2>&1; then :; fi
	grep -E "^ *[0-9]+/[0-9]+ |^Ok:|^Fail:|^Timeout:" "$log" || true
	local ok fail to
	ok=$(awk '/^Ok:/{print $2}' "$log")
	fail=$(awk '/^Fail:/{print $2}' "$log")
	to=$(awk '/^Timeout:/{print $2}' "$log")
	if [[ -z $ok ]]; then
		cat "$log"
		failed=$((failed + 1))
	else
		passed=$((passed + ok))
		failed=$((failed + ${fail:-0} + ${to:-0}))
		[[ ${fail:-0} -eq 0 && ${to:-0} -eq 0 ]] || sed -n '/^==/,$p' "$log" | tail -200
	fi
	rm -f "$log"
}

setup() {
	local name=$1; shift
	if [[ ! -f build-$name/build.ninja ]]; then
		meson setup "build-$name" "$@" >/dev/null
	fi
	ninja -C "build-$name" >/dev/null
}

variants=("$@")
((${#variants[@]})) || variants=(plain asan tsan)
for v in "${variants[@]}"; do
	case $v in
	plain)
		setup plain --buildtype=debugoptimized
		run plain fast
		run plain stress
		run plain e2e
		;;
	asan)
		setup asan --buildtype=debug -Db_sanitize=address,undefined \
			-Db_lundef=false
		run asan fast
		run asan stress CTP_STRESS_SCALE=4
		run asan e2e
		;;
	tsan)
		setup tsan --buildtype=debugoptimized -Db_sanitize=thread \
			-Db_lundef=false
		run tsan fast
		run tsan stress CTP_STRESS_SCALE=10
		;;
	*)
		echo "unknown variant $v" >&2
		exit 2
		;;
	esac
done

echo "tests: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
