#!/usr/bin/env bash
# Model-checks tests/model/ctpool.pml (the run queue, the task state machine
# and the shutdown handshake), tests/model/fire.pml (two firers in one
# token tree: the fire-in-progress rule) and tests/model/sched.pml (delayed,
# periodic and prioritised tasks, ctp_task_reschedule, the timer's due heap
# and the shutdown's handling of them) with spin, exhaustively, in
# build-model/.
#   - the model of src/ must give errors: 0
#   - every planted bug variant must give errors > 0, of the expected kind;
#     three of them are real bugs the model found in src/ (fixed since):
#     two in the ring design, re-expressed for the run queue, and
#     BUG_GUARD_AFTER_CAS in the run queue's first version
#     (tests/model/README.md, "Finding"). The other ctpool.pml variants run
#     with -DNO_QUIET_CHECK: each is judged by the property it breaks.
#     Two more are real bugs of sched.pml's part of src/:
#     BUG_PLACE_NO_DRAINED_BUMP (found by the model, fixed in 60cbd85)
#     and BUG_SKIP_STARTED_RUN (found by the fuzzer)
#     (tests/model/README.md, "Findings of sched.pml", "Finding 3")
#   - fire.pml and sched.pml searches take seconds: their verifiers are
#     compiled with -O0 (gcc -O2 of pan.c costs more than it saves there);
#     ctpool.pml's long searches keep -O2
# Usage: scripts/model.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v spin >/dev/null 2>&1; then
	echo "model.sh: spin not found (Debian: apt-get install -y spin)" >&2
	exit 1
fi
command -v gcc >/dev/null 2>&1 || { echo "model.sh: gcc not found" >&2; exit 1; }

build=build-model
rm -rf "$build"
mkdir -p "$build"
cp tests/model/ctpool.pml tests/model/fire.pml tests/model/sched.pml "$build/"
cd "$build"

fail=0
model=ctpool.pml   # the model the next checks run
passopt=-O2        # gcc optimisation of the verifiers that must pass

# check NAME EXPECT PATTERN SPIN-DEFINES...
#   EXPECT pass: errors: 0; EXPECT fail: errors > 0 and the first error
#   matches PATTERN (a grep -E regex)
check() {
	local name=$1 expect=$2 pattern=$3; shift 3
	local dir=$name out t0 t1 errors states depth first secs opt=$passopt
	# a variant that must fail stops at its first error: a quick compile
	# beats a fast search
	[[ $expect == fail ]] && opt=-O0
	mkdir -p "$dir"
	cp "$model" "$dir/"
	t0=$(date +%s.%N)
	(cd "$dir" && spin "$@" -a "$model" >spin.log 2>&1 &&
	    gcc "$opt" -DSAFETY -w -o pan pan.c &&
	    ./pan -m100000 -w24 >pan.log 2>&1) || true
	t1=$(date +%s.%N)
	out="$dir/pan.log"
	if [[ ! -s $out ]]; then
		echo "FAIL $name: spin/gcc did not produce a verifier"; cat "$dir/spin.log"
		fail=1; return
	fi
	errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out" | head -1)
	states=$(awk '/states, stored/{print $1; exit}' "$out")
	depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' "$out" | head -1)
	first=$(grep -E '^pan:[0-9]+:' "$out" | head -1 || true)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
	printf '%-28s states %9s  depth %4s  errors %s  time %5ss  %s\n' \
	    "$name" "${states:-?}" "${depth:-?}" "${errors:-?}" "$secs" "$first"
	case $expect in
	pass)
		if [[ ${errors:-x} != 0 ]] || grep -q 'Search not completed' "$out"; then
			echo "  FAIL: expected errors: 0 (trail: $build/$dir/)"
			fail=1
		fi ;;
	fail)
		if [[ ${errors:-0} == 0 ]]; then
			echo "  FAIL: the model did not catch this variant"
			fail=1
		elif ! grep -Eq -- "$pattern" <<<"$first"; then
			echo "  FAIL: caught, but not as expected ($pattern)"
			fail=1
		else
			# keep the counterexample readable next to the log
			(cd "$dir" && spin "$@" -t -p -g -l "$model" >trail.txt 2>&1) || true
			echo "  caught, as required (trail: $build/$dir/trail.txt)"
		fi ;;
	esac
}

echo "== model of src/: must verify"
check design-2w-1t    pass '' -DNW=2 -DNT=1 -DCAP=1
check design-1w-2t    pass '' -DNW=1 -DNT=2 -DCAP=1
check design-2w-2t-submits-first pass '' -DNW=2 -DNT=2 -DCAP=1 -DSUBMITS_FIRST -DNO_PARENT
check design-2w-2t-cap2-fast pass '' -DNW=2 -DNT=2 -DCAP=2 -DNO_SLOW
# the CPU cap: 2 workers on 1 CPU; task 1 waits for task 2 to start
check design-cpu1-blocks    pass '' -DNW=2 -DNT=2 -DCAP=2 -DNCPU=1 -DBLOCKS -DNO_SLOW -DSUBMITS_FIRST
check design-cpu1-blocks-deadline pass '' -DNW=2 -DNT=2 -DCAP=2 -DNCPU=1 -DBLOCKS -DNO_PARENT -DSUBMITS_FIRST

echo "== planted bugs: each must be caught"
check bug-stop-outside-lock fail 'assertion violated.*passed' -DNO_QUIET_CHECK -DBUG_STOP_OUTSIDE_LOCK -DNW=1 -DNT=1
check bug-no-lock-pass      fail 'assertion violated.*passed' -DNO_QUIET_CHECK -DBUG_NO_LOCK_PASS
check bug-park-no-recheck  fail 'invalid end state'          -DNO_QUIET_CHECK -DBUG_PARK_NO_RECHECK
check bug-no-announce       fail 'invalid end state'          -DNO_QUIET_CHECK -DBUG_NO_ANNOUNCE -DNW=1 -DNT=2 -DCAP=1 -DSUBMITS_FIRST
check bug-cap-no-sentinel   fail 'invalid end state'          -DNO_QUIET_CHECK -DBUG_CAP_NO_SENTINEL -DNW=2 -DNT=2 -DCAP=2 -DNCPU=1 -DBLOCKS -DNO_SLOW -DSUBMITS_FIRST
echo "== bugs the model found in the old design (fixed), re-expressed: each must be caught"
check bug-admit-after-close fail 'assertion violated'         -DNO_QUIET_CHECK -DBUG_ADMIT_AFTER_CLOSE
check bug-drop-no-wake      fail 'invalid end state'          -DNO_QUIET_CHECK -DBUG_DROP_NO_WAKE
check bug-guard-after-cas   fail 'assertion violated.*done_count' -DBUG_GUARD_AFTER_CAS -DNW=2 -DNT=1 -DCAP=1

t_ctpool=$SECONDS
model=fire.pml
passopt=-O0
echo "== fire.pml, model of src/ (fire in progress): must verify"
check fire-design           pass ''
check fire-late-child       pass '' -DLATE
check fire-third-nested     pass '' -DTHIRD -DNESTED
echo "== fire.pml, planted bugs: each must be caught"
check fire-bug-no-wait      fail 'assertion violated.*done_ret'  -DBUG_NO_WAIT
check fire-bug-no-wait-start fail 'assertion violated.*closed'  -DBUG_NO_WAIT -DSTART_CHECK_ONLY
check fire-bug-wait-self    fail 'invalid end state'          -DBUG_WAIT_SELF -DNESTED
check fire-bug-no-wake      fail 'invalid end state'          -DBUG_NO_WAKE -DTHIRD

t_fire=$SECONDS
model=sched.pml
echo "== sched.pml, model of src/ (scheduling): must verify"
check sched-periodic        pass '' -DK1=K_PER -DRESCHED=1 -DLONG_PERIOD
check sched-periodic-2w     pass '' -DK1=K_PER -DNW=2 -DNO_SELF -DLONG_PERIOD
check sched-periodic-delayed-deadline pass '' -DK1=K_PERD -DDEADLINE
check sched-delayed-resched pass '' -DK1=K_DELAY -DRESCHED=1 -DDEADLINE
check sched-delayed-long    pass '' -DK1=K_DELAY -DLONG_DELAY
check sched-resched-long    pass '' -DK1=K_ONCE -DRESCHED=1 -DLONG
echo "== sched.pml, planted bugs: each must be caught"
check sched-bug-requeue-no-closed-check fail 'invalid end state' -DBUG_REQUEUE_NO_CLOSED_CHECK -DK1=K_PER -DLONG_PERIOD
check sched-bug-unqueue-no-timer-lock fail 'assertion violated.*dres' -DBUG_UNQUEUE_NO_TIMER_LOCK -DK1=K_DELAY
check sched-bug-armed-after-look fail 'assertion violated tm' -DBUG_ARMED_AFTER_LOOK -DK1=K_ONCE -DRESCHED=1
check sched-bug-promote-no-wake  fail 'invalid end state'       -DBUG_PROMOTE_NO_WAKE -DK1=K_DELAY
echo "== sched.pml, real bugs of src/ (fixed), the old code kept: each must be caught"
check sched-bug-place-no-drained-bump fail 'invalid end state' -DBUG_PLACE_NO_DRAINED_BUMP -DK1=K_DELAY -DLONG_DELAY
check sched-bug-skip-started-run fail 'assertion violated.*ip_owed' -DBUG_SKIP_STARTED_RUN -DK1=K_PER

t_sched=$SECONDS
echo "time: ctpool.pml $t_ctpool s, fire.pml $((t_fire - t_ctpool)) s, sched.pml $((t_sched - t_fire)) s"
if [[ $fail != 0 ]]; then
	echo "model.sh: FAILED"
	exit 1
fi
echo "model.sh: OK"
