#!/usr/bin/env bash
# Sets up (installs what is missing), builds, and runs every test:
#   plain    debugoptimized build: suites fast, stress (incl. hostile), e2e,
#            redis (libctpool-redis against a real redis-server started on
#            a free loopback port) and redis-faults (node processes killed,
#            stopped, Redis restarted)
#   asan     ASan + LSan + UBSan: fast, stress, e2e, redis, redis-faults,
#            fault (k-th malloc / pthread_create fails, swept over every
#            call site)
#   tsan     ThreadSanitizer: fast, redis, and stress twice (scaled down
#            10x)
#   perturb  release build with seeded yield points in the hot paths
#            (-Dperturb=true): fast + stress, unpinned and on one CPU
#   fuzz     libFuzzer API fuzzer, ASan+UBSan and TSan variants (60 s each)
#   model    spin model of the task state machine, idle-worker parking and
#            shutdown handshake, plus planted-bug variants that must fail
#   bench    scripts/bench.sh --quick and bench/cluster.sh --quick: every
#            peer's benchmark at tiny sizes (RQ and Celery too), for their
#            self-checks (a lost or duplicated job fails it); the figures go
#            to bench/results/quick/ and are not judged
# Usage: scripts/test.sh [VARIANT ...]   (default: all of them, in that order)
# Ends with "tests: N passed, M failed" (N counts test programs and steps).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"

passed=0
failed=0
failures=() # what failed, repeated at the end (CI shows only the tail)

# run NAME SUITE [env...]: meson test in build-NAME; counts results.
run() {
	local dir="build-$1" suite="$2"; shift 2
	local log ok fail to
	log=$(mktemp)
	echo "== $dir: suite $suite $*"
	if env "$@" meson test -C "$dir" --suite "$suite" --print-errorlogs \
		--num-processes 1 >"$log" 2>&1; then :; fi
	grep -E "^ *[0-9]+/[0-9]+ |^Ok:|^Fail:|^Timeout:" "$log" || true
	ok=$(awk '/^Ok:/{print $2}' "$log")
	fail=$(awk '/^Fail:/{print $2}' "$log")
	to=$(awk '/^Timeout:/{print $2}' "$log")
	if [[ -z $ok ]]; then
		cat "$log"
		failed=$((failed + 1))
		failures+=("$dir: suite $suite $*: meson test did not run")
	else
		passed=$((passed + ok))
		failed=$((failed + ${fail:-0} + ${to:-0}))
		if [[ ${fail:-0} -ne 0 || ${to:-0} -ne 0 ]]; then
			tail -200 "$log"
			while read -r line; do
				failures+=("$dir: suite $suite $*: $line")
			done < <(grep -E "^ *[0-9]+/[0-9]+ .*(FAIL|TIMEOUT)" "$log")
		fi
	fi
	rm -f "$log"
}

# step NAME CMD...: a command that passes or fails by its exit code.
step() {
	local name=$1; shift
	echo "== $name: $*"
	if "$@"; then
		passed=$((passed + 1))
	else
		echo "== $name: FAILED"
		failed=$((failed + 1))
		failures+=("$name: $*")
	fi
}

setup() {
	local name=$1; shift
	if [[ ! -f build-$name/build.ninja ]]; then
		meson setup "build-$name" "$@" >/dev/null
	fi
	ninja -C "build-$name" >/dev/null
}

variants=("$@")
((${#variants[@]})) || variants=(plain asan tsan perturb fuzz model bench)
for v in "${variants[@]}"; do
	case $v in
	plain)
		setup plain --buildtype=debugoptimized
		run plain fast
		run plain stress
		run plain e2e
		run plain redis
		run plain redis-faults
		;;
	asan)
		setup asan --buildtype=debug -Db_sanitize=address,undefined \
			-Db_lundef=false
		run asan fast
		run asan stress CTP_STRESS_SCALE=4
		run asan e2e
		run asan redis
		run asan redis-faults
		run asan fault
		;;
	tsan)
		setup tsan --buildtype=debugoptimized -Db_sanitize=thread \
			-Db_lundef=false -Dexamples=disabled
		run tsan fast
		run tsan redis
		run tsan stress CTP_STRESS_SCALE=10
		run tsan stress CTP_STRESS_SCALE=10
		;;
	perturb)
		setup perturb --buildtype=release -Dperturb=true \
			-Dexamples=disabled
		seed=${CTP_PERTURB_SEED:-$RANDOM}
		echo "== perturb: CTP_PERTURB_SEED=$seed (set it to replay)"
		run perturb fast CTP_PERTURB_SEED="$seed"
		run perturb stress CTP_PERTURB_SEED="$seed" CTP_STRESS_SCALE=4
		run perturb stress CTP_PERTURB_SEED="$((seed + 1))" \
			CTP_STRESS_SCALE=4 taskset -c 0
		;;
	fuzz)
		step fuzz scripts/fuzz.sh "${CTP_FUZZ_SECONDS:-60}"
		;;
	model)
		step model scripts/model.sh
		;;
	bench)
		step bench scripts/bench.sh --quick
		step bench-cluster bench/cluster.sh --quick
		;;
	*)
		echo "unknown variant $v" >&2
		exit 2
		;;
	esac
done

for f in "${failures[@]}"; do
	echo "failed: $f"
done
echo "tests: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
