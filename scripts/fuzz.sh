#!/usr/bin/env bash
# Builds the API fuzzer (tests/fuzz/fuzz_api.c) twice with clang/libFuzzer,
#   asan  -fsanitize=fuzzer,address,undefined (leaks checked per input)
#   tsan  -fsanitize=fuzzer,thread (src/ring.c without TSan, with its hooks)
# and runs each for SECONDS (default 60) on a copy of tests/fuzz/corpus.
# Exits non-zero if either run finds a crash, leak, hang or sanitizer report;
# the failing input is left in build-fuzz/ (crash-*, leak-*, timeout-*).
# Usage: scripts/fuzz.sh [SECONDS] [asan|tsan ...]   (default: 60, both)
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
variants=("$@")
[[ ${#variants[@]} -gt 0 ]] || variants=(asan tsan)
[[ $secs =~ ^[0-9]+$ && $secs -gt 0 ]] || { echo "fuzz.sh: bad SECONDS '$secs'" >&2; exit 2; }

if ! command -v clang >/dev/null; then
	echo "fuzz.sh: clang not found; install clang and libclang-rt-14-dev (scripts/deps.sh)" >&2
	exit 2
fi
if ! pkg-config --exists ck; then
	echo "fuzz.sh: Concurrency Kit (pkg-config ck) not found; run scripts/deps.sh" >&2
	exit 2
fi

out=build-fuzz
mkdir -p "$out"
ck_cflags=$(pkg-config --cflags ck)
ck_libs=$(pkg-config --libs ck)
# FUZZ_CFLAGS: extra compiler flags for both builds.
common=(-std=gnu11 -g -O1 -fno-omit-frame-pointer -D_GNU_SOURCE
	-DCTP_BUILDING_LIBRARY -Iinclude -Isrc $ck_cflags ${FUZZ_CFLAGS:-})
lib_srcs=(src/platform.c src/queue.c src/token.c src/task.c src/timer.c src/pool.c
	src/proc.c src/isolated.c)
for f in "${lib_srcs[@]}" src/ring.c; do
	[[ -f $f ]] || { echo "fuzz.sh: missing $f" >&2; exit 2; }
done

build() {
	local v=$1
	echo "== building $out/fuzz_api_$v"
	case $v in
	asan)
		clang "${common[@]}" -fsanitize=fuzzer,address,undefined \
			-fno-sanitize-recover=all \
			"${lib_srcs[@]}" src/ring.c tests/fuzz/fuzz_api.c \
			-o "$out/fuzz_api_asan" $ck_libs -lpthread
		;;
	tsan)
		# ThreadSanitizer cannot see ck's inline-asm atomics: ring.c is
		# built without it and reports its hand-overs with __tsan_* hooks.
		clang "${common[@]}" -fsanitize=fuzzer-no-link -fno-sanitize=thread \
			-DCTP_TSAN_HOOKS=1 -c src/ring.c -o "$out/ring_tsan.o"
		clang "${common[@]}" -fsanitize=fuzzer,thread -DCTP_FUZZ_TSAN=1 \
			"${lib_srcs[@]}" tests/fuzz/fuzz_api.c "$out/ring_tsan.o" \
			-o "$out/fuzz_api_tsan" $ck_libs -lpthread
		;;
	*)
		echo "fuzz.sh: unknown variant '$v'" >&2
		exit 2
		;;
	esac
}

# Seeds for the races the stored corpus predates, added to each run's copy:
# a few stored seeds with each endgame mode 1-7 (fuzz_api.c: data[0] >> 5),
# and one input of tree races (op 14 with b & 7 == 1) on three threads.
derive_seeds() {
	local dir=$1 f b0 m
	for f in tests/fuzz/corpus/seed-{submit,nested,token,shutdown}; do
		[[ -f $f ]] || continue
		b0=$(od -An -tu1 -N1 "$f" | tr -d ' ')
		for m in 1 2 3 4 5 6 7; do
			{
				printf "\\$(printf %03o $(((b0 & 31) | (m << 5))))"
				tail -c +2 "$f"
			} >"$dir/endgame-$m-${f##*/}"
		done
	done
	# header: 3 callers, 1 worker, drain 0, grace forever; six records
	# [14, a, 1, c, d, e, 0]: d = leaf bit, task count, helper's delay;
	# e = which sub the helper fires, blockers, slow dones, delays
	local t='\x0e\x00\x01\x00' u='\x0e\x01\x01\x00'
	printf "\x01\x00\x00\x30${t}\x0f\x81\x00${t}\x1e\xe1\x00${t}\x3f\x61\x00${u}\x0f\x83\x00${t}\x1f\xe3\x00${t}\x3e\xc1\x00" \
		>"$dir/tree-race"
}

failed=0
summary=()
run() {
	local v=$1 corpus="$out/corpus-$1" log="$out/fuzz-$1.log" rc=0
	rm -rf "$corpus" "$out/$v"-crash-* "$out/$v"-leak-* "$out/$v"-timeout-* \
		"$out/$v"-oom-* "$out/$v"-slow-unit-*
	mkdir -p "$corpus"
	cp tests/fuzz/corpus/* "$corpus"/
	derive_seeds "$corpus"
	echo "== running fuzz_api_$v for ${secs}s (log: $log)"
	(
		cd "$out"
		# A hard limit besides libFuzzer's own: a sanitizer runtime can
		# deadlock while it reports a crash, and CI must not hang.
		timeout -s KILL "$((secs + 60))" \
		env ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" \
		    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
		    TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1" \
		    "./fuzz_api_$v" -max_total_time="$secs" -timeout=10 \
		    -rss_limit_mb=4096 -max_len=2048 -print_final_stats=1 \
		    -artifact_prefix="./$v-" "corpus-$v"
	) >"$log" 2>&1 || rc=$?
	local done_line cov execs
	done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
	cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
	execs=$(grep -E 'stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
	local eps
	eps=$(grep -oE 'exec/s: [0-9]+' "$log" | tail -1 || true)
	if [[ $rc -ne 0 || -z $done_line ]]; then
		failed=1
		echo "!! fuzz_api_$v FAILED (exit $rc); last lines of $log:"
		tail -60 "$log"
		ls "$out"/"$v"-* 2>/dev/null || true
		summary+=("$v: FAILED (exit $rc) ${cov:-} execs ${execs:-?}")
	else
		summary+=("$v: ok, ${execs:-?} executions, ${eps:-}, ${cov:-}")
	fi
}

for v in "${variants[@]}"; do build "$v"; done
for v in "${variants[@]}"; do run "$v"; done

echo "== summary"
for s in "${summary[@]}"; do echo "  $s"; done
exit $failed
