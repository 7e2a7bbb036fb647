#!/usr/bin/env bash
# Multi-process fault tests of libctpool-redis (DISTRIBUTED.md, "How it is
# tested"): a real redis-server of its own (AOF on) on a free loopback port,
# node processes of tests/redis/node_main, and faults made on purpose.
#
# Usage: faults.sh PATH/TO/node_main [SCENARIO...]     (default: a b c d e f)
#
#   a  SIGKILL of one of 3 nodes running 10,000 short jobs: every job ends
#      DONE exactly once, none lost, the only double runs are of jobs first
#      run on the killed node; the retries start within claim_after + margin
#   b  SIGSTOP of a node past claim_after: another node takes the job over
#      (attempt 2); the stopped node's late result, once resumed, does not
#      overwrite the retry's record
#   c  a cancel sent while the running node is stopped answers -EINPROGRESS;
#      once resumed the job ends DONE with -ECANCELED
#   d  redis-server SIGKILLed and restarted (AOF) while nodes run and a
#      producer submits: every acknowledged id ends DONE
#   e  graceful stop (SIGTERM) of one of 2 loaded nodes: it exits 0 at once,
#      its cut jobs are handed back and rerun by the other well before
#      claim_after, nothing stays pending under its name
#   f  dead letter: max_deliveries 2, the running node SIGKILLed twice: the
#      job ends DEAD with attempts 2
#
# Each scenario runs as a copy of this script under `timeout` (a scenario
# that hangs fails), in its own namespace, and prints one line of counts.
# Every command that talks to the library or to Redis has a timeout, every
# wait loop a bound; the EXIT traps kill every node started (by pid). The
# script exits 1 if any scenario failed, 77 when redis-server is missing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/redis_lib.sh"
# appendfsync always: Redis answers a write only once it is on disk, so a
# killed redis-server loses nothing it acknowledged (with everysec, a write
# whose fsync was postponed may be answered and lost: a START answered and
# then forgotten lets a job run twice on one attempt).
REDIS_OPTS_FAULTS=(--appendonly yes --appendfsync always)

# ---- helpers (both modes) ---------------------------------------------------

now_ms() { date +%s%3N; }
rcli() { timeout 10 redis-cli -p "$REDIS_PORT" "$@"; }
# a bounded call of node_main as a client (NM_TIMEOUT seconds)
nm() { timeout -k 2 "${NM_TIMEOUT:-60}" "$NODE_MAIN" "$@"; }

# true once pid has exited (gone, or a zombie not yet waited for)
proc_gone() {
	local st
	[[ -e /proc/$1 ]] || return 0
	st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 0
	[[ -z $st || $st == Z ]]
}

# wait_until MS COMMAND...: polls COMMAND every 50 ms for at most MS ms
wait_until() {
	local end=$(( $(now_ms) + $1 ))
	shift
	until "$@"; do
		(( $(now_ms) < end )) || return 1
		sleep 0.05
	done
}

count_of() { # a number from a command, 0 when it fails
	local n
	n=$("$@" 2>/dev/null) || n=0
	[[ $n =~ ^[0-9]+$ ]] || n=0
	echo "$n"
}
llen_ge() { (( $(count_of rcli LLEN "$1") >= $2 )); }
lines_ge() { [[ -e $1 ]] && (( $(count_of wc -l <"$1") >= $2 )); }

# ---- scenario mode: faults.sh --scenario X NODE_MAIN --------------------------

declare -A PIDS=()     # node name -> pid, in this scenario
T=${FAULTS_TMP:-}

fail() {
	echo "FAIL [$SCEN] $*" >&2
	exit 1
}

start_node() { # NS NAME [node options...]
	local ns=$1 name=$2
	shift 2
	"$NODE_MAIN" node "$REDIS_URL" "$ns" "$name" "$@" \
		>"$T/$ns.$name.log" 2>&1 &
	PIDS[$name]=$!
	echo "$!" >>"$T/pids"
}

# kill_node NAME SIG: sends SIG; for KILL, waits for the death (bounded)
kill_node() {
	local pid=${PIDS[$1]}
	kill "-$2" "$pid"
	if [[ $2 == KILL ]]; then
		# (bash's "Killed" notice goes to /dev/null with the rest)
		{ wait_until 5000 proc_gone "$pid" && { wait "$pid" || true; }
		} 2>/dev/null || fail "$1 survived SIGKILL"
	fi
}

# stop_node NAME [MS]: SIGTERM; it must exit 0, saying "stopped", within MS
stop_node() {
	local name=$1 limit=${2:-15000} pid=${PIDS[$1]} rc=0 t0
	t0=$(now_ms)
	kill -TERM "$pid"
	wait_until "$limit" proc_gone "$pid" ||
		fail "$name did not exit within $limit ms of SIGTERM"
	wait "$pid" || rc=$?
	STOP_MS=$(( $(now_ms) - t0 ))
	[[ $rc == 0 ]] || fail "$name exited $rc after SIGTERM"
	grep -q '^stopped' "$T/$SCEN_NS.$name.log" ||
		fail "$name did not print 'stopped'"
}

# the one job of a single-job scenario
first_id() { head -n1 "$T/$1.ids" | cut -d' ' -f1; }

# (grep reads all: with pipefail, an early exit would fail redis-cli)
ends_has() { rcli LRANGE "$1:test:ends" 0 -1 | grep "^$2" >/dev/null; }

pending_of() { # NS NAME: entries pending under NAME in the "work" stream
	rcli XPENDING "$1:q:work" nodes - + 100 "$2" | grep -c . || true
}
pending_total() { # NS: pending entries of the "work" stream
	rcli XPENDING "$1:q:work" nodes | head -n1
}
pending_zero() { [[ $(pending_total "$1") == 0 ]]; }
# NS: a2 has a pending entry whose job's record says running on a2
a2_runs_one() {
	local e id
	for e in $(rcli XPENDING "$1:q:work" nodes - + 10 a2 | awk 'NR % 4 == 1'); do
		id=$(rcli XRANGE "$1:q:work" "$e" "$e" | sed -n 3p)
		[[ -n $id ]] || continue
		[[ $(rcli HMGET "$1:job:$id" state node | tr '\n' ' ') == "2 a2 " ]] &&
			return 0
	done
	return 1
}

scenario_exit() {
	local rc=$?
	if [[ $rc != 0 && -n $SCEN_NS ]]; then
		local f
		for f in "$T/$SCEN_NS".*.log; do
			[[ -e $f ]] || continue
			echo "--- last lines of ${f##*/}" >&2
			tail -n 15 "$f" >&2
		done
	fi
	local pid
	for pid in "${PIDS[@]}"; do
		kill -CONT "$pid" 2>/dev/null || true
		kill -KILL "$pid" 2>/dev/null || true
	done
	exit "$rc"
}

# a. SIGKILL of one node out of three, mid-run of 10,000 short jobs.
scen_a() {
	local ns=fa claim=500 n=10000 x spid tkill at_kill line tall
	SCEN_NS=$ns
	for x in a1 a2 a3; do
		start_node $ns $x --threads 2 --claim-after $claim
	done
	NM_TIMEOUT=90 nm submit "$REDIS_URL" $ns $n --sleep 0 --sleep-max 1 \
		--ids "$T/$ns.ids" &
	spid=$!
	wait_until 60000 llen_ge $ns:test:runs 2500 ||
		fail "fewer than 2500 runs after 60 s"
	# Kill a2 while it runs a job: freeze it (SIGSTOP), look at its
	# pending entries (frozen, they cannot change), kill it if one of them
	# is a job it has started (record running on a2: an entry it read but
	# had not started yet goes to another node as its first attempt, which
	# proves nothing), else let it go on a moment and look again.
	for ((x = 0; x < 400; x++)); do
		kill -STOP "${PIDS[a2]}"
		a2_runs_one $ns && break
		kill -CONT "${PIDS[a2]}"
		sleep 0.01
	done
	(( x < 400 )) || fail "a2 never ran a job when looked at"
	kill_node a2 KILL
	tkill=$(now_ms)
	at_kill=$(count_of rcli LLEN $ns:test:runs)
	(( at_kill < n )) || fail "the kill came after every job had run"
	wait "$spid" || fail "submit failed"
	(( $(count_of wc -l <"$T/$ns.ids") == n )) || fail "submit gave no $n ids"
	line=$(NM_TIMEOUT=120 nm check "$REDIS_URL" $ns "$T/$ns.ids" \
		--timeout 100000 --allow-rerun a2 --event-time "$tkill" \
		--max-recovery $(( claim + 3000 ))) || fail "check: $line"
	tall=$(( $(now_ms) - tkill ))
	[[ $line == *" retries=0 "* ]] &&
		fail "no job of the killed node was delivered again: $line"
	[[ $(pending_total $ns) == 0 ]] ||
		fail "entries still pending: $(pending_total $ns)"
	stop_node a1
	stop_node a3
	echo "a SIGKILL (3 nodes x 2 threads, claim_after ${claim} ms, a2" \
		"killed after $at_kill runs): $line all_done_after_kill_ms=$tall"
}

# b. SIGSTOP past claim_after; the late result must not overwrite.
scen_b() {
	local ns=fb claim=1000 id tstop second takeover b1end st line
	SCEN_NS=$ns
	start_node $ns b1 --threads 1 --claim-after $claim
	nm submit "$REDIS_URL" $ns 1 --sleep 2000 --ids "$T/$ns.ids" ||
		fail "submit"
	id=$(first_id $ns)
	wait_until 10000 llen_ge $ns:test:runs 1 || fail "b1 never started it"
	kill_node b1 STOP
	tstop=$(now_ms)
	start_node $ns b2 --threads 1 --claim-after $claim
	wait_until $(( claim + 5000 )) llen_ge $ns:test:runs 2 ||
		fail "no node took the job over within claim_after + 5 s"
	second=$(rcli LINDEX $ns:test:runs 1)
	[[ $second == "0 b2 2 "* ]] ||
		fail "the second run is '$second', want attempt 2 on b2"
	takeover=$(( $(cut -d' ' -f4 <<<"$second") - tstop ))
	kill_node b1 CONT
	wait_until 5000 ends_has $ns "0 b1 1 " ||
		fail "b1's run did not end within 5 s of SIGCONT"
	b1end=$(rcli LRANGE $ns:test:ends 0 -1 | grep '^0 b1 1 ' |
		cut -d' ' -f4) || true
	sleep 0.3 # b1's (fenced) result write
	st=$(nm status "$REDIS_URL" $ns "$id") || fail "status: $st"
	[[ $st =~ ^state=running\ .*attempts=2\ node=b2\  ]] ||
		fail "after b1's late end the record reads '$st'," \
			"want running, attempt 2 on b2"
	line=$(nm check "$REDIS_URL" $ns "$T/$ns.ids" --timeout 15000 \
		--attempts 2 --node b2 --allow-rerun b1 --event-time "$tstop" \
		--min-recovery $(( claim * 3 / 4 - 150 )) \
		--max-recovery $(( claim + 3000 ))) || fail "check: $line"
	stop_node b1
	stop_node b2
	st=$(nm status "$REDIS_URL" $ns "$id") || fail "status: $st"
	[[ $st == "state=done status=0 attempts=2 node=b2 output=ok" ]] ||
		fail "after both nodes stopped the record reads '$st'"
	echo "b SIGSTOP (claim_after ${claim} ms, 2 s job): $line" \
		"takeover_ms=$takeover b1_late_rc=$b1end final='$st'"
}

# c. cancel while the running node is stopped.
scen_c() {
	local ns=fc id ans st tcont line tend
	SCEN_NS=$ns
	start_node $ns c1 --threads 1 --claim-after 30000
	nm submit "$REDIS_URL" $ns 1 --kind block --ids "$T/$ns.ids" ||
		fail "submit"
	id=$(first_id $ns)
	wait_until 10000 llen_ge $ns:test:started 1 || fail "c1 never started it"
	kill_node c1 STOP
	ans=$(nm cancel "$REDIS_URL" $ns "$id") || fail "cancel: $ans"
	[[ $ans == -115 ]] || fail "cancel of the running job answered $ans," \
		"want -EINPROGRESS (-115)"
	st=$(nm status "$REDIS_URL" $ns "$id") || fail "status: $st"
	[[ $st == state=running* ]] || fail "with c1 stopped the record reads '$st'"
	sleep 0.2
	tcont=$(now_ms)
	kill_node c1 CONT
	line=$(nm check "$REDIS_URL" $ns "$T/$ns.ids" --timeout 10000 \
		--status -125 --attempts 1 --node c1) || fail "check: $line"
	tend=$(rcli LRANGE $ns:test:ends 0 -1 | grep '^0 c1 1 ' |
		cut -d' ' -f5) || true
	[[ -n $tend ]] || fail "c1 logged no end of the job"
	ans=$(nm cancel "$REDIS_URL" $ns "$id") || fail "cancel: $ans"
	[[ $ans == -114 ]] || fail "a cancel after the end answered $ans," \
		"want -EALREADY (-114)"
	stop_node c1
	echo "c cancel while stopped: answer -115; $line" \
		"token_fired_ms_after_SIGCONT=$(( tend - tcont ))"
}

# d. redis-server SIGKILLed and restarted (AOF) under load.
scen_d() {
	local ns=fd n=3000 ppid acked t0 down line
	SCEN_NS=$ns
	start_node $ns d1 --threads 2 --claim-after 5000
	start_node $ns d2 --threads 2 --claim-after 5000
	NM_TIMEOUT=90 nm submit "$REDIS_URL" $ns $n --sleep 0 --sleep-max 2 \
		--with-jobno --retry-ms 20000 --pause-us 500 \
		--ids "$T/$ns.ids" 2>"$T/$ns.producer.log" &
	ppid=$!
	wait_until 30000 lines_ge "$T/$ns.ids" 1000 ||
		fail "the producer got fewer than 1000 acks in 30 s"
	acked=$(count_of wc -l <"$T/$ns.ids")
	t0=$(now_ms)
	# the old server dies by SIGKILL; should its port still be taken when
	# the new one starts, start again once
	redis_restart KILL || { sleep 1; redis_start "$REDIS_DIR" "${REDIS_OPTS[@]}"; } ||
		fail "redis-server did not come back"
	echo "$REDIS_PID" >"$T/redis.pid"
	down=$(( $(now_ms) - t0 ))
	wait "$ppid" || fail "the producer failed: $(tail -n 3 "$T/$ns.producer.log")"
	(( $(count_of wc -l <"$T/$ns.ids") == n )) ||
		fail "the producer acknowledged $(count_of wc -l <"$T/$ns.ids") of $n"
	line=$(NM_TIMEOUT=90 nm check "$REDIS_URL" $ns "$T/$ns.ids" \
		--timeout 60000) || fail "check: $line"
	# a submit that failed may have stored its job all the same (it is
	# not among the ids, so the check did not wait for it): give it time
	wait_until 15000 pending_zero $ns ||
		fail "entries still pending: $(pending_total $ns)"
	stop_node d1
	stop_node d2
	echo "d Redis SIGKILL+restart (AOF) after $acked of $n acks, down" \
		"${down} ms: $line; producer: $(grep -h 'failed submits retried' \
		"$T/$ns.producer.log" || echo 'no submit failed')"
}

# e. graceful stop of one node under load.
scen_e() {
	local ns=fe n=120 tterm line cut pend jobno id st bad=0
	SCEN_NS=$ns
	start_node $ns e1 --threads 2 --claim-after 30000 --drain 1
	start_node $ns e2 --threads 2 --claim-after 30000
	nm submit "$REDIS_URL" $ns $n --sleep 40 --sleep-max 60 \
		--ids "$T/$ns.ids" || fail "submit"
	wait_until 30000 llen_ge $ns:test:runs 30 || fail "fewer than 30 runs"
	tterm=$(now_ms)
	stop_node e1 3000
	pend=$(pending_of $ns e1)
	[[ $pend == 0 ]] || fail "entries still pending under e1: $pend lines"
	# the runs e1 cut short are handed back at once: right after its exit
	# none of their records says running on e1
	cut=0
	for jobno in $(rcli LRANGE $ns:test:ends 0 -1 |
	               awk '$2 == "e1" && $4 != 0 { print $1 }'); do
		cut=$(( cut + 1 ))
		id=$(sed -n "$(( jobno + 1 ))p" "$T/$ns.ids")
		st=$(nm status "$REDIS_URL" $ns "$id") || fail "status: $st"
		if [[ $st == *" node=e1 "* && $st != state=queued* ]]; then
			echo "job $jobno, cut on e1, reads '$st' after e1 exited" >&2
			bad=$(( bad + 1 ))
		fi
	done
	(( bad == 0 )) || fail "$bad jobs cut on e1 were not handed back"
	line=$(nm check "$REDIS_URL" $ns "$T/$ns.ids" --timeout 40000 \
		--allow-rerun e1 --event-time "$tterm" --max-recovery 10000) ||
		fail "check: $line"
	# every run cut short by the stop ran again elsewhere, and no other
	# run did, except one whose function returned 0 just after the fire
	# while the hand-back (which wins or loses against its return) had
	# already taken it: its end, logged after the SIGTERM, reads 0
	local reran late0
	reran=$(sed -n 's/.* reran=\([0-9]*\) .*/\1/p' <<<"$line")
	late0=$(rcli LRANGE $ns:test:ends 0 -1 |
		awk -v t="$tterm" '$2 == "e1" && $4 == 0 && $5 >= t' | wc -l)
	(( reran >= cut && reran <= cut + late0 )) ||
		fail "e1 cut $cut runs short ($late0 more ended 0 after" \
			"the SIGTERM), but: $line"
	[[ $(pending_total $ns) == 0 ]] ||
		fail "entries still pending: $(pending_total $ns)"
	stop_node e2
	echo "e SIGTERM (drain 1 ms, claim_after 30 s): e1 exited 0 in" \
		"$STOP_MS ms, $cut runs cut and handed back; $line"
}

# f. dead letter after max_deliveries (2) deliveries to nodes that died.
scen_f() {
	local ns=ff claim=500 line started dead
	local opts=(--threads 1 --claim-after $claim --max-deliveries 2)
	SCEN_NS=$ns
	start_node $ns f1 "${opts[@]}"
	nm submit "$REDIS_URL" $ns 1 --kind block --ids "$T/$ns.ids" ||
		fail "submit"
	wait_until 10000 llen_ge $ns:test:started 1 || fail "f1 never started it"
	kill_node f1 KILL
	start_node $ns f2 "${opts[@]}"
	wait_until $(( claim + 5000 )) llen_ge $ns:test:started 2 ||
		fail "f2 never took it over"
	kill_node f2 KILL
	start_node $ns f3 "${opts[@]}"
	line=$(nm check "$REDIS_URL" $ns "$T/$ns.ids" --timeout 10000 \
		--state dead --status -130 --attempts 2 --allow-rerun f1 \
		--allow-rerun f2) || fail "check: $line"
	started=$(count_of rcli LLEN $ns:test:started)
	[[ $started == 2 ]] || fail "the job started $started times, want 2"
	dead=$(count_of rcli XLEN $ns:dead)
	[[ $dead == 1 ]] || fail "$ns:dead holds $dead entries, want 1"
	stop_node f3
	echo "f dead letter (max_deliveries 2, 2 SIGKILLs): $line" \
		"started=$started dead_stream=$dead"
}

if [[ ${1:-} == --scenario ]]; then
	SCEN=$2
	NODE_MAIN=$3
	SCEN_NS=
	REDIS_OPTS=("${REDIS_OPTS_FAULTS[@]}")
	trap scenario_exit EXIT
	trap 'exit 124' TERM INT
	"scen_$SCEN"
	exit 0
fi

# ---- main mode ------------------------------------------------------------------

NODE_MAIN=${1:?usage: faults.sh PATH/TO/node_main [SCENARIO...]}
shift
SCENARIOS=("$@")
(( ${#SCENARIOS[@]} )) || SCENARIOS=(a b c d e f)
declare -A LIMIT=([a]=150 [b]=40 [c]=40 [d]=120 [e]=60 [f]=40)

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
	echo "faults: redis-server/redis-cli not installed (scripts/deps.sh): skipped"
	exit 77
fi
[[ -x $NODE_MAIN ]] || { echo "faults: $NODE_MAIN is not executable" >&2; exit 2; }

FAULTS_TMP=$(mktemp -d "${TMPDIR:-/tmp}/ctp_faults.XXXXXX")
export FAULTS_TMP
mkdir "$FAULTS_TMP/redis"
: >"$FAULTS_TMP/pids"

main_exit() {
	local rc=$? pid
	while read -r pid; do
		kill -CONT "$pid" 2>/dev/null || true
		kill -KILL "$pid" 2>/dev/null || true
	done <"$FAULTS_TMP/pids"
	# the server may be a child of a scenario (d restarted it): read its pid
	REDIS_PID=$(cat "$FAULTS_TMP/redis.pid" 2>/dev/null || echo "$REDIS_PID")
	pid=$REDIS_PID
	redis_stop
	[[ -z $pid ]] || wait_until 10000 proc_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
	if [[ $rc == 0 || -z ${FAULTS_KEEP:-} ]]; then
		rm -rf "$FAULTS_TMP"
	else
		echo "faults: files kept in $FAULTS_TMP" >&2
	fi
	exit "$rc"
}
trap main_exit EXIT
trap 'exit 143' TERM INT

redis_start "$FAULTS_TMP/redis" "${REDIS_OPTS_FAULTS[@]}"
echo "$REDIS_PID" >"$FAULTS_TMP/redis.pid"
export REDIS_DIR
echo "faults: redis-server $(redis-server --version | cut -d' ' -f3)" \
	"pid $REDIS_PID on $REDIS_URL, appendonly yes, appendfsync always"

failed=()
for s in "${SCENARIOS[@]}"; do
	[[ -n ${LIMIT[$s]:-} ]] || { echo "faults: no scenario '$s'" >&2; exit 2; }
	t0=$(now_ms)
	rc=0
	# the scenario's stderr is ours (fd 3); bash's own job notices while it
	# runs (the "Killed" of the server scenario d killed) are not
	{ timeout -k 5 "${LIMIT[$s]}" bash "$0" --scenario "$s" "$NODE_MAIN" \
		2>&3 || rc=$?; } 3>&2 2>/dev/null
	# a scenario that died leaves nothing running: kill its nodes by pid
	while read -r pid; do
		kill -CONT "$pid" 2>/dev/null || true
		kill -KILL "$pid" 2>/dev/null || true
	done <"$FAULTS_TMP/pids"
	: >"$FAULTS_TMP/pids"
	old=$REDIS_PID
	REDIS_PID=$(cat "$FAULTS_TMP/redis.pid")
	if [[ $old != "$REDIS_PID" ]]; then
		{ wait "$old" || true; } 2>/dev/null # the killed server, our child
	fi
	secs=$(( ($(now_ms) - t0) / 1000 ))
	if (( rc == 124 || rc == 137 )); then
		echo "faults: scenario $s TIMED OUT after ${LIMIT[$s]} s"
		failed+=("$s")
	elif (( rc != 0 )); then
		echo "faults: scenario $s FAILED (${secs} s)"
		failed+=("$s")
	else
		echo "faults: scenario $s passed (${secs} s)"
	fi
	if ! rcli ping 2>/dev/null | grep -q PONG; then
		echo "faults: redis-server is gone; stopping here" >&2
		failed+=(redis)
		break
	fi
done

if (( ${#failed[@]} )); then
	echo "faults: FAILED: ${failed[*]}"
	exit 1
fi
echo "faults: all ${#SCENARIOS[@]} scenarios passed"
