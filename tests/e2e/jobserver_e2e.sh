#!/usr/bin/env bash
# End-to-end test of examples/jobserver over loopback, driven by curl.
#
# Usage: jobserver_e2e.sh PATH/TO/jobserver PATH/TO/silent_peer PATH/TO/reaper
#
# The contract under test is examples/jobserver/SPEC.md. The script checks
# that bad options exit 2, starts two TCP peers (silent_peer: one never
# answers, one answers "hello\n" and closes) and a server on an ephemeral
# port, then walks through: basic jobs, cancellation (queued, running, fetch,
# pipeline, deadlines), isolated jobs (spin: a loop in a worker process that
# never looks at its token, which DELETE, a deadline or the shutdown stop by
# killing the process), scheduling (delay_ms, period_ms, priority), a mixed
# load with random cancels, error codes, and shutdown by SIGTERM; then
# SIGINT with decimal --drain/--grace, a shutdown whose grace kills a spin
# job, an idle stop, and a stop with periodic jobs; then record lifetime
# (--retain, --max-records: 410 for an expired id, 404 for one never
# issued, unfinished jobs never dropped, lookups racing with expiry).
# Every server runs as the
# child of `reaper`, a subreaper that reports any process (alive or zombie)
# the server left when it exited; while it runs, the process tree (server ->
# fork server -> worker processes) is read from /proc. Every curl call has
# --max-time, every wait loop has a bound, and the EXIT trap kills whatever
# the script started. It ends with "e2e: N passed, M failed" and exits 1 if
# any check failed.
#
# JSON is parsed with bash regexes (objects are flat), so jq is not needed.
# E2E_SEED=N replays the random choices of a run (its seed is printed).
set -euo pipefail

SERVER=${1:?usage: jobserver_e2e.sh JOBSERVER SILENT_PEER REAPER}
PEER=${2:?usage: jobserver_e2e.sh JOBSERVER SILENT_PEER REAPER}
REAPER=${3:?usage: jobserver_e2e.sh JOBSERVER SILENT_PEER REAPER}

THREADS=4
QUEUE=64
DRAIN=2
GRACE=2
PROCESSES=2              # worker processes for spin jobs
KILL_AFTER=0.3           # --kill-after, seconds ...
KILL_AFTER_MS=300        # ... and in ms
SPIN_MS=3600000          # a spin that outlives the test unless killed
LONG_MS=600000           # a sleep that outlives the test unless cancelled
                         # (even on a machine so busy the test takes minutes)
CURL_MAX=5               # --max-time of every curl transfer
MIXED_JOBS=200
SEED=${E2E_SEED:-$$}
RANDOM=$SEED

TMP=$(mktemp -d "${TMPDIR:-/tmp}/jobserver_e2e.XXXXXX")
BG_PIDS=()               # everything started in the background, by pid
SERVER_PID=""            # the jobserver itself
REAPER_PID=""            # its parent, the script's child
SERVER_OUT=""
SERVER_ERR=""
BASE=""
PASS=0
FAIL=0
EXPECTED_TASKS=0         # pool tasks behind every accepted job (pipeline = 2)
PIPE_503=0               # pipelines refused with 503 (may leave one task)
N503=0                   # queue-full refusals seen (stats.rejected)

# ---- process handling ------------------------------------------------------

alive() { kill -0 "$1" 2>/dev/null; }

# Stops every background process this script started, by its pid: SIGTERM,
# up to 10 s (the server drains), then SIGKILL.
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
	local pid i
	for pid in "${BG_PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${BG_PIDS[@]}"; do
		for ((i = 0; i < 1000; i++)); do
			alive "$pid" || break
			sleep 0.01
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
	local pid keep=()
	for pid in "${BG_PIDS[@]}"; do
		if [[ $pid != "$1" ]]; then keep+=("$pid"); fi
	done
	BG_PIDS=("${keep[@]}")
}

now() { NOW=$((${EPOCHREALTIME//[!0-9]/} / 1000)); }    # ms, into NOW

# ---- checks ----------------------------------------------------------------

QUIET=0
ok() {
	PASS=$((PASS + 1))
	if [[ $QUIET == 0 ]]; then echo "ok   $1"; fi
}
bad() {
	FAIL=$((FAIL + 1))
	echo "FAIL $1"
}
# check DESC EXPECTED GOT [CONTEXT]
check() {
	if [[ $3 == "$2" ]]; then
		ok "$1"
	else
		bad "$1: expected '$2', got '$3'${4:+ [$4]}"
	fi
}
# expect DESC EXPECTED GOT COMMAND...: passes when COMMAND succeeds
expect() {
	local desc=$1 want=$2 got=$3
	shift 3
	if "$@"; then ok "$desc"; else bad "$desc: expected $want, got $got"; fi
}
summary() { echo "e2e: $PASS passed, $FAIL failed"; }
fatal() {
	bad "$1"
	if [[ -n $SERVER_ERR && -s $SERVER_ERR ]]; then
		echo "--- server stderr (tail) ---"
		tail -n 40 "$SERVER_ERR"
	fi
	summary
	exit 1
}

# ---- JSON and HTTP ---------------------------------------------------------

# json_field BODY NAME: the value of a flat JSON field (strings unquoted,
# "null" for null), or nothing when absent.
json_field() {
	jget "$1" "$2"
	printf '%s' "$JV"
}
# jget BODY NAME: like json_field, into JV, without a subshell (hot loops).
jget() {
	local re="\"$2\"[[:space:]]*:[[:space:]]*(\"[^\"]*\"|[^,}[:space:]]+)"
	JV=""
	if [[ $1 =~ $re ]]; then
		JV=${BASH_REMATCH[1]}
		JV=${JV#\"}
		JV=${JV%\"}
	fi
}
has_field() {
	local re="\"$2\"[[:space:]]*:"
	[[ $1 =~ $re ]]
}

# req METHOD PATH [curl args...]: one request; sets CODE (000 when no
# answer), BODY, and leaves the headers in $TMP/hdrs.
req() {
	local method=$1 path=$2
	shift 2
	rm -f "$TMP/body" "$TMP/hdrs"
	CODE=$(curl -sS -g --noproxy '*' --max-time "$CURL_MAX" -X "$method" \
		-o "$TMP/body" -D "$TMP/hdrs" -w '%{http_code}' "$@" \
		"$BASE$path" 2>"$TMP/curl.err") || true
	[[ -n $CODE ]] || CODE=000
	BODY=""
	if [[ -f $TMP/body ]]; then BODY=$(<"$TMP/body"); fi
}

# header NAME: the value of a header of the last req (empty when absent).
header() {
	[[ -f $TMP/hdrs ]] || return 0
	tr -d '\r' <"$TMP/hdrs" | sed -n "s/^$1:[[:space:]]*//Ip" | tail -n 1
}

# submit FIELD=VALUE...: POST /jobs; JOB_ID is set on 202 (else empty).
submit() {
	local kv args=()
	for kv in "$@"; do args+=(--data "$kv"); done
	req POST /jobs "${args[@]}"
	JOB_ID=""
	if [[ $CODE == 202 ]]; then JOB_ID=$(json_field "$BODY" id); fi
}

# tasks_of KIND: pool tasks one job of KIND takes.
tasks_of() { if [[ $1 == pipeline ]]; then echo 2; else echo 1; fi; }

# submit_ok DESC KIND FIELD=VALUE...: a submit that must be accepted.
submit_ok() {
	local desc=$1 kind=$2
	shift 2
	submit "kind=$kind" "$@"
	if [[ $CODE == 202 && $JOB_ID =~ ^[1-9][0-9]*$ ]]; then
		EXPECTED_TASKS=$((EXPECTED_TASKS + $(tasks_of "$kind")))
		return 0
	fi
	fatal "$desc: POST kind=$kind $*: expected 202 {\"id\":N}, got $CODE $BODY"
}

# get_job ID: GET /jobs/ID into BODY; JSTATE, JSTATUS from it.
get_job() {
	req GET "/jobs/$1"
	jget "$BODY" state
	JSTATE=$JV
	jget "$BODY" status
	JSTATUS=$JV
}

# wait_job ID SECONDS: polls every 10 ms until the status is not null.
wait_job() {
	local limit
	now
	limit=$((NOW + $2 * 1000))
	while :; do
		get_job "$1"
		if [[ $CODE == 200 && -n $JSTATUS && $JSTATUS != null ]]; then
			return 0
		fi
		now
		if ((NOW >= limit)); then return 1; fi
		sleep 0.01
	done
}

# wait_state ID STATE SECONDS
wait_state() {
	local limit
	now
	limit=$((NOW + $3 * 1000))
	while :; do
		get_job "$1"
		if [[ $CODE == 200 && $JSTATE == "$2" ]]; then return 0; fi
		now
		if ((NOW >= limit)); then return 1; fi
		sleep 0.01
	done
}

# finish_job DESC ID SECONDS STATE STATUS: waits for the end and checks it.
finish_job() {
	if ! wait_job "$2" "$3"; then
		bad "$1: job $2 has no status after $3 s (last: $CODE $BODY)"
		return 0
	fi
	check "$1: job $2 state/status" "$4/$5" "$JSTATE/$JSTATUS" "$BODY"
}

# running_job DESC ID: waits (5 s) until the job is running.
running_job() {
	if wait_state "$2" running 5; then
		ok "$1: job $2 running"
	else
		fatal "$1: job $2 expected state running within 5 s, got $CODE $BODY"
	fi
}

# cancel ID: DELETE /jobs/ID; ANSWER holds the "cancel" field.
cancel() {
	req DELETE "/jobs/$1"
	ANSWER=$(json_field "$BODY" cancel)
}

# cancel_check DESC ID ANSWER
cancel_check() {
	cancel "$2"
	check "$1: DELETE job $2" "200 $3 id=$2" \
		"$CODE $ANSWER id=$(json_field "$BODY" id)" "$BODY"
}

# stats: GET /stats into S_<field> variables.
STAT_FIELDS=(submitted completed cancelled timed_out rejected dropped queued
	running threads killed crashed processes)
S_submitted="" S_completed="" S_cancelled="" S_timed_out="" S_rejected=""
S_dropped="" S_queued="" S_running="" S_threads="" S_killed="" S_crashed=""
S_processes=""
stats() {
	req GET /stats
	local f v
	for f in "${STAT_FIELDS[@]}"; do
		v=$(json_field "$BODY" "$f")
		# a missing or non-numeric field must not break the arithmetic
		# below: it becomes -999999, which fails every check
		if [[ ! $v =~ ^[0-9]+$ ]]; then v=-999999; fi
		printf -v "S_$f" '%s' "$v"
	done
}

# wait_idle SECONDS: until nothing is queued or running and every accepted
# task is accounted for (submitted == completed + cancelled + timed_out +
# dropped + killed + crashed).
wait_idle() {
	local limit
	now
	limit=$((NOW + $1 * 1000))
	while :; do
		stats
		if [[ $CODE == 200 && $S_queued == 0 && $S_running == 0 &&
			$S_submitted == $((S_completed + S_cancelled + S_timed_out + S_dropped + S_killed + S_crashed)) ]]; then
			return 0
		fi
		now
		if ((NOW >= limit)); then return 1; fi
		sleep 0.02
	done
}

# check_accounting DESC: the pool is idle and its counters add up.
check_accounting() {
	if ! wait_idle 20; then
		bad "$1: pool not idle/consistent after 20 s: $BODY"
		return 0
	fi
	ok "$1: idle, submitted == completed+cancelled+timed_out+dropped+killed+crashed ($BODY)"
	if ((PIPE_503 == 0)); then
		check "$1: stats.submitted" "$EXPECTED_TASKS" "$S_submitted" "$BODY"
	elif ((S_submitted >= EXPECTED_TASKS && S_submitted <= EXPECTED_TASKS + PIPE_503)); then
		# a refused pipeline may have had its producer accepted (and then
		# cancelled) before the consumer was refused: count those from now on
		ok "$1: stats.submitted ($((S_submitted - EXPECTED_TASKS)) producers of $PIPE_503 refused pipelines accepted)"
		EXPECTED_TASKS=$S_submitted
		PIPE_503=0
	else
		bad "$1: stats.submitted: expected $EXPECTED_TASKS..$((EXPECTED_TASKS + PIPE_503)), got $S_submitted"
	fi
	check "$1: stats.rejected == 503s seen" "$N503" "$S_rejected" "$BODY"
}

# wait_line FILE ERE SECONDS PID: until FILE has a line matching ERE.
wait_line() {
	local limit
	now
	limit=$((NOW + $3 * 1000))
	while ! grep -Eq "$2" "$1" 2>/dev/null; do
		alive "$4" || return 1
		now
		if ((NOW >= limit)); then return 1; fi
		sleep 0.02
	done
}

# start_peer NAME [--eof]: sets PEER_PORT.
start_peer() {
	local name=$1
	shift
	"$PEER" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
	BG_PIDS+=($!)
	if ! wait_line "$TMP/$name.out" '^port [0-9]+$' 5 "$!"; then
		fatal "silent_peer $*: no 'port N' line within 5 s: $(cat "$TMP/$name.err")"
	fi
	PEER_PORT=$(sed -n 's/^port \([0-9]*\)$/\1/p' "$TMP/$name.out")
}

# ---- processes (/proc) -------------------------------------------------------

# proc_stat PID: PS_COMM, PS_STATE, PS_PPID, PS_START (start time, clock
# ticks since boot: tells a reused pid apart) and PS_CPU (utime + stime,
# ticks) from /proc/PID/stat. Returns 1 when there is no such process.
proc_stat() {
	local line rest f
	PS_COMM="" PS_STATE="" PS_PPID="" PS_START="" PS_CPU=0
	{ IFS= read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
	[[ -n $line ]] || return 1
	PS_COMM=${line#*(}
	PS_COMM=${PS_COMM%)*}
	rest=${line##*) }   # the name may hold spaces: fields after it
	read -r -a f <<<"$rest"
	PS_STATE=${f[0]} PS_PPID=${f[1]} PS_START=${f[19]}
	PS_CPU=$((f[11] + f[12]))
}

# children PID: the pids whose parent is PID, into KIDS (a scan of /proc:
# this kernel may lack /proc/PID/task/TID/children).
children() {
	local d line rest f
	KIDS=()
	for d in /proc/[0-9]*; do
		{ IFS= read -r line <"$d/stat"; } 2>/dev/null || continue
		rest=${line##*) }
		read -r -a f <<<"$rest"
		if [[ ${f[1]} == "$1" ]]; then KIDS+=("${d#/proc/}"); fi
	done
}

# tree: the server's process tree: SERVER_KIDS (its children), FS_PID (the
# one named job-fs: the fork server), WORKERS (the fork server's children:
# worker processes and the spare), ZOMBIES among all of them, and ODD
# (children not named job-fs / job-p). TREE says it in words.
tree() {
	local p
	FS_PID="" WORKERS=() ZOMBIES=0 ODD=0
	children "$SERVER_PID"
	SERVER_KIDS=("${KIDS[@]}")
	for p in "${SERVER_KIDS[@]}"; do
		proc_stat "$p" || continue
		if [[ $PS_STATE == Z ]]; then ZOMBIES=$((ZOMBIES + 1)); fi
		if [[ $PS_COMM == job-fs ]]; then FS_PID=$p; else ODD=$((ODD + 1)); fi
	done
	if [[ -n $FS_PID ]]; then
		children "$FS_PID"
		WORKERS=("${KIDS[@]}")
	fi
	for p in "${WORKERS[@]}"; do
		proc_stat "$p" || continue
		if [[ $PS_STATE == Z ]]; then ZOMBIES=$((ZOMBIES + 1)); fi
		if [[ $PS_COMM != job-p ]]; then ODD=$((ODD + 1)); fi
	done
	TREE="server $SERVER_PID -> [${SERVER_KIDS[*]}], fork server ${FS_PID:-none} -> [${WORKERS[*]}], zombies $ZOMBIES, odd names $ODD"
}

# wait_tree SECONDS: until the server's only child is the fork server and
# its children are PROCESSES worker processes and the spare, none of them
# a zombie (a replacement and the new spare are made asynchronously).
wait_tree() {
	local limit
	now
	limit=$((NOW + $1 * 1000))
	while :; do
		tree
		if [[ ${#SERVER_KIDS[@]} == 1 && -n $FS_PID && $ZOMBIES == 0 &&
			$ODD == 0 && ${#WORKERS[@]} == $((PROCESSES + 1)) ]]; then
			return 0
		fi
		now
		if ((NOW >= limit)); then return 1; fi
		sleep 0.02
	done
}

# spinners: the worker processes burning CPU now (5 ticks or more in 0.3 s:
# a spin job, or a fresh one starting up: callers wait for the tree first),
# into SPINNERS; their start times into SPIN_START[pid].
declare -A SPIN_START=()
spinners() {
	local p
	local -A cpu=()
	tree
	for p in "${WORKERS[@]}"; do
		if proc_stat "$p"; then cpu[$p]=$PS_CPU; fi
	done
	sleep 0.3
	SPINNERS=()
	for p in "${!cpu[@]}"; do
		if proc_stat "$p" && ((PS_CPU - cpu[$p] >= 5)); then
			SPINNERS+=("$p")
			SPIN_START[$p]=$PS_START
		fi
	done
}

# gone PID START: no process PID started at START (a zombie is not gone).
gone() { ! proc_stat "$1" || [[ $PS_START != "$2" ]]; }

# wait_gone PID START SECONDS
wait_gone() {
	local limit
	now
	limit=$((NOW + $3 * 1000))
	while ! gone "$1" "$2"; do
		now
		if ((NOW >= limit)); then return 1; fi
		sleep 0.01
	done
}

# ---- 0. command line ---------------------------------------------------------

step_options() {
	local rc
	echo "# 0. bad options"
	for opt in "--bogus" "--threads abc" "--drain x" "--listen nonsense" \
		"--processes 257" "--processes x" "--kill-after 0" \
		"--kill-after -1" "--retain -1" "--retain x" "--retain 1e9" \
		"--max-records -1" "--max-records x" \
		"--max-records 1000000001" "--max-records 1.5" \
		"--http-threads 0" "--http-threads 65" "--http-threads x"; do
		rc=0
		# shellcheck disable=SC2086  # opt is split on purpose
		timeout -k 1 5 "$SERVER" --listen 127.0.0.1:0 $opt \
			>"$TMP/opt.out" 2>"$TMP/opt.err" </dev/null || rc=$?
		check "option '$opt': exit code" 2 "$rc"
		expect "option '$opt': message on stderr" "a message" "nothing" \
			test -s "$TMP/opt.err"
	done
}

# ---- 1. start ----------------------------------------------------------------

step_start() {
	echo "# 1. start (seed $SEED)"
	start_peer silent
	SILENT_PORT=$PEER_PORT
	start_peer eof --eof
	EOF_PORT=$PEER_PORT
	echo "     silent peer :$SILENT_PORT, eof peer :$EOF_PORT"

	start_server server --threads "$THREADS" --queue "$QUEUE" \
		--drain "$DRAIN" --grace "$GRACE" --processes "$PROCESSES" \
		--kill-after "$KILL_AFTER"
}

# start_server NAME OPTION...: a server on an ephemeral port, as the child
# of a reaper (REAPER_PID; its report goes to $TMP/NAME.reap); sets
# SERVER_PID, SERVER_OUT, SERVER_ERR and BASE. ASan builds start slowly:
# the listening line may take up to 10 s.
start_server() {
	local name=$1 port
	shift
	SERVER_OUT=$TMP/$name.out
	SERVER_ERR=$TMP/$name.err
	SERVER_REAP=$TMP/$name.reap
	"$REAPER" "$TMP/$name.pid" "$SERVER_REAP" "$SERVER" --listen 127.0.0.1:0 "$@" \
		>"$SERVER_OUT" 2>"$SERVER_ERR" </dev/null &
	REAPER_PID=$!
	if ! wait_line "$SERVER_OUT" '^listening on 127\.0\.0\.1:[0-9]+$' 10 \
		"$REAPER_PID"; then
		if [[ -s $TMP/$name.pid ]]; then BG_PIDS+=("$(<"$TMP/$name.pid")"); fi
		BG_PIDS+=("$REAPER_PID")
		fatal "server $*: no 'listening on 127.0.0.1:PORT' line within 10 s; stdout: $(cat "$SERVER_OUT")"
	fi
	# the server first (the EXIT trap stops it), then its reaper
	SERVER_PID=$(<"$TMP/$name.pid")
	BG_PIDS+=("$SERVER_PID" "$REAPER_PID")
	port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$SERVER_OUT")
	expect "listening line gives a real port" "1..65535" "$port" \
		test "$port" -gt 0 -a "$port" -le 65535
	BASE="http://127.0.0.1:$port"
	echo "     server $* (pid $SERVER_PID) at $BASE"
}

# wait_exit T0 SECONDS: waits (bounded) for the server to exit after a
# signal sent at T0 (ms); sets RC and ELAPSED (ms from T0 to exit). Checks
# the reaper's report: the server left no process behind, alive or zombie.
wait_exit() {
	local limit=$(($1 + $2 * 1000))
	while alive "$SERVER_PID"; do
		now
		if ((NOW >= limit)); then break; fi
		sleep 0.01
	done
	now
	ELAPSED=$((NOW - $1))
	if alive "$SERVER_PID"; then
		fatal "server still running $2 s after the signal"
	fi
	RC=0
	wait "$REAPER_PID" || RC=$?
	forget_pid "$SERVER_PID"
	forget_pid "$REAPER_PID"
	check "exit code after the signal" 0 "$RC"
	check "the server left no process, alive or zombie (reaper)" \
		"exit=0 left_alive=0 left_zombies=0" "$(cat "$SERVER_REAP" 2>/dev/null)"
	if [[ $RC != 0 && -s $SERVER_ERR ]]; then
		echo "--- server stderr (tail) ---"
		tail -n 40 "$SERVER_ERR"
	fi
	# UBSan reports do not change the exit code; ASan/LSan ones do
	local reports
	reports=$(grep -E 'runtime error:|Sanitizer' "$SERVER_ERR" | head -n 5) || true
	check "no sanitizer report on the server's stderr" "" "$reports"
}

# parse_summary: checks stdout is the listening line plus the summary line;
# sets SUM_RAN SUM_CANCELLED SUM_TIMED_OUT SUM_DROPPED SUM_KILLED
# SUM_CRASHED SUM_ABANDONED SUM_STOP_MS. Returns 1 when the summary line is
# missing or malformed.
parse_summary() {
	local line re='^summary: ran=([0-9]+) cancelled=([0-9]+) timed_out=([0-9]+) dropped=([0-9]+) killed=([0-9]+) crashed=([0-9]+) abandoned=([0-9]+) stop_ms=([0-9]+)$'
	line=$(tail -n 1 "$SERVER_OUT")
	check "stdout is the listening line and the summary" 2 \
		"$(wc -l <"$SERVER_OUT")" "$(tr '\n' '|' <"$SERVER_OUT")"
	if [[ ! $line =~ $re ]]; then
		bad "summary line: expected 'summary: ran=N cancelled=N timed_out=N dropped=N killed=N crashed=N abandoned=N stop_ms=M', got '$line'"
		return 1
	fi
	ok "summary line: $line"
	SUM_RAN=${BASH_REMATCH[1]}
	SUM_CANCELLED=${BASH_REMATCH[2]}
	SUM_TIMED_OUT=${BASH_REMATCH[3]}
	SUM_DROPPED=${BASH_REMATCH[4]}
	SUM_KILLED=${BASH_REMATCH[5]}
	SUM_CRASHED=${BASH_REMATCH[6]}
	SUM_ABANDONED=${BASH_REMATCH[7]}
	SUM_STOP_MS=${BASH_REMATCH[8]}
}

# ---- 2. basics ---------------------------------------------------------------

step_basics() {
	local id
	echo "# 2. basic jobs"
	submit_ok "sleep" sleep ms=50
	id=$JOB_ID
	finish_job "sleep 50 ms" "$id" 5 "done" 0
	check "sleep job kind" sleep "$(json_field "$BODY" kind)" "$BODY"
	check "sleep job id" "$id" "$(json_field "$BODY" id)" "$BODY"
	check "sleep job error" null "$(json_field "$BODY" error)" "$BODY"
	local sub st fin
	sub=$(json_field "$BODY" submitted_ms)
	st=$(json_field "$BODY" started_ms)
	fin=$(json_field "$BODY" finished_ms)
	if [[ $sub =~ ^[0-9]+$ && $st =~ ^[0-9]+$ && $fin =~ ^[0-9]+$ ]] &&
		((sub <= st && st <= fin && fin - st >= 40)); then
		ok "sleep job times: submitted <= started <= finished, >= 40 ms run"
	else
		bad "sleep job times: expected submitted <= started <= finished-40, got $sub/$st/$fin"
	fi
	cancel_check "finished sleep" "$id" already_finished
	get_job "$id"
	check "finished sleep unchanged by DELETE" done/0 "$JSTATE/$JSTATUS" "$BODY"

	submit_ok "cpu" cpu iterations=1000000
	finish_job "cpu 10^6" "$JOB_ID" 10 "done" 0
	check "cpu job kind" cpu "$(json_field "$BODY" kind)" "$BODY"

	submit_ok "fetch eof peer" fetch host=127.0.0.1 "port=$EOF_PORT"
	finish_job "fetch from --eof peer (hello\\n)" "$JOB_ID" 5 "done" 6

	# a port nobody listens on: the peer we start and stop right here
	start_peer gone
	local gone_port=$PEER_PORT gone_pid=${BG_PIDS[-1]}
	kill -TERM "$gone_pid"
	wait "$gone_pid" 2>/dev/null || true
	forget_pid "$gone_pid"
	submit_ok "fetch refused" fetch host=127.0.0.1 "port=$gone_port"
	if wait_job "$JOB_ID" 5; then
		check "fetch to a closed port: done with -ECONNREFUSED" done/-111 \
			"$JSTATE/$JSTATUS" "$BODY"
	else
		bad "fetch to a closed port: no status after 5 s: $BODY"
	fi

	submit_ok "pipeline" pipeline items=1000
	id=$JOB_ID
	finish_job "pipeline items=1000" "$id" 10 "done" 0
	check "pipeline job kind" pipeline "$(json_field "$BODY" kind)" "$BODY"
	check "pipeline job: exit_signal/output null" null/null \
		"$(json_field "$BODY" exit_signal)/$(json_field "$BODY" output)" "$BODY"
	# the parent token never fired, so SPEC maps 0 -> signalled here; either
	# way the finished job must keep its result
	cancel "$id"
	expect "DELETE finished pipeline" "200 signalled|already_finished" \
		"$CODE $ANSWER" test "$CODE" = 200 -a \
		\( "$ANSWER" = signalled -o "$ANSWER" = already_finished \)
	get_job "$id"
	check "finished pipeline unchanged by DELETE" done/0 "$JSTATE/$JSTATUS" "$BODY"

	stats
	check "GET /stats" 200 "$CODE" "$BODY"
	local f missing=""
	for f in "${STAT_FIELDS[@]}"; do
		has_field "$BODY" "$f" || missing+=" $f"
	done
	check "stats has every field" "" "$missing" "$BODY"
	check "stats.threads" "$THREADS" "$S_threads" "$BODY"
	check "stats.processes" "$PROCESSES" "$S_processes" "$BODY"

	submit_ok "spin" spin ms=20
	id=$JOB_ID
	finish_job "spin 20 ms" "$id" 10 "done" 0
	check "spin job kind" spin "$(json_field "$BODY" kind)" "$BODY"
	check "spin job that ran to its end: exit_signal 0" 0 \
		"$(json_field "$BODY" exit_signal)" "$BODY"
	check "spin job: started_ms null (SPEC)" null \
		"$(json_field "$BODY" started_ms)" "$BODY"
	spin_ran_in_worker "spin 20 ms"
	check_accounting "after basics"
}

# spin_ran_in_worker DESC: the job in BODY says "output":"pid=P", and P is
# a worker process: a child of the server's fork server, not the server.
spin_ran_in_worker() {
	local out pid
	out=$(json_field "$BODY" output)
	pid=${out#pid=}
	if [[ $out != pid=* || ! $pid =~ ^[1-9][0-9]*$ ]]; then
		bad "$1: output: expected pid=P, got '$out' [$BODY]"
		return 0
	fi
	tree
	if [[ $pid != "$SERVER_PID" && -n $FS_PID ]] && proc_stat "$pid" &&
		[[ $PS_PPID == "$FS_PID" && $PS_COMM == job-p ]]; then
		ok "$1: ran in worker process $pid (fork server $FS_PID, server $SERVER_PID)"
	else
		bad "$1: output pid $pid is not a worker process: $TREE"
	fi
}

# ---- 3. cancellation ---------------------------------------------------------

# fill_workers N: N long sleeps, each waited until running; ids in LONG.
fill_workers() {
	local i
	LONG=()
	for ((i = 0; i < $1; i++)); do
		submit_ok "long sleep" sleep "ms=$LONG_MS"
		LONG+=("$JOB_ID")
	done
	for i in "${LONG[@]}"; do
		QUIET=1 running_job "long sleep" "$i"
	done
}

# release DESC ID...: DELETEs running long sleeps, checks they end cancelled.
release() {
	local desc=$1 id
	shift
	for id in "$@"; do cancel_check "$desc" "$id" signalled; done
	for id in "$@"; do finish_job "$desc" "$id" 5 "done" -125; done
}

step_cancel() {
	local id q t0 lat
	echo "# 3. cancellation"
	fill_workers "$THREADS"
	local l=("${LONG[@]}")
	ok "$THREADS long sleeps running"

	submit_ok "queued sleep" sleep ms=100
	q=$JOB_ID
	get_job "$q"
	check "job behind busy workers: queued, status null" queued/null \
		"$JSTATE/$JSTATUS" "$BODY"
	check "queued job: started_ms null" null "$(json_field "$BODY" started_ms)" "$BODY"
	cancel_check "queued sleep" "$q" prevented
	get_job "$q"
	check "prevented job: cancelled/-125" cancelled/-125 "$JSTATE/$JSTATUS" "$BODY"
	check "prevented job: started_ms null" null "$(json_field "$BODY" started_ms)" "$BODY"

	now
	t0=$NOW
	cancel_check "running sleep" "${l[0]}" signalled
	finish_job "cancelled running sleep" "${l[0]}" 5 "done" -125
	now
	echo "     running sleep: DELETE to status in $((NOW - t0)) ms"
	cancel_check "sleep cancelled twice" "${l[0]}" already_finished

	# one worker is free: the fetch runs and blocks on the silent peer
	submit_ok "fetch silent peer" fetch host=127.0.0.1 "port=$SILENT_PORT"
	id=$JOB_ID
	running_job "fetch on silent peer" "$id"
	sleep 0.2
	get_job "$id"
	check "fetch on silent peer still running" running/null "$JSTATE/$JSTATUS" "$BODY"
	now
	t0=$NOW
	cancel_check "running fetch" "$id" signalled
	if wait_job "$id" 5; then
		now
		lat=$((NOW - t0))
		FETCH_CANCEL_MS=$lat
		echo "     fetch cancel latency: $lat ms"
		check "cancelled fetch: done/-125" done/-125 "$JSTATE/$JSTATUS" "$BODY"
		expect "fetch cancel latency < 1000 ms" "< 1000 ms" "$lat ms" test "$lat" -lt 1000
	else
		bad "cancelled fetch: no status 5 s after DELETE: $BODY"
	fi
	cancel_check "fetch cancelled twice" "$id" already_finished

	# two workers free: both pipeline tasks run
	release "free a second worker" "${l[1]}"
	submit_ok "long pipeline" pipeline items=1000000000
	id=$JOB_ID
	running_job "pipeline items=10^9" "$id"
	sleep 0.1
	cancel_check "running pipeline" "$id" signalled
	finish_job "cancelled pipeline" "$id" 5 "done" -125
	cancel_check "pipeline cancelled twice" "$id" already_finished

	# deadline passing in the queue: all workers busy again
	fill_workers 2
	l=("${l[2]}" "${l[3]}" "${LONG[@]}")
	submit_ok "sleep with timeout" sleep ms=10 timeout_ms=100
	id=$JOB_ID
	finish_job "deadline passed while queued" "$id" 5 cancelled -110
	check "timed-out job never started" null "$(json_field "$BODY" started_ms)" "$BODY"
	release "release workers" "${l[@]}"

	# deadline passing while running; not before it by the server's clock
	# (ours starts after the 202 reached us: on a busy machine that can be
	# tens of ms after the submission), and not much later by ours
	submit_ok "running sleep with timeout" sleep ms=10000 timeout_ms=300
	now
	t0=$NOW
	finish_job "deadline passed while running" "$JOB_ID" 5 "done" -110
	now
	local sub fin
	sub=$(json_field "$BODY" submitted_ms)
	fin=$(json_field "$BODY" finished_ms)
	expect "running deadline fired 300 ms after submission, not before (server clock)" \
		">= 300 ms" "$((fin - sub)) ms" test $((fin - sub)) -ge 300
	expect "running deadline fired within 3 s (our clock)" "<= 3000 ms" \
		"$((NOW - t0)) ms" test $((NOW - t0)) -le 3000

	check_accounting "after cancellation"
	check "stats.timed_out" 1 "$S_timed_out" "$BODY"
}

# ---- 4. isolated jobs --------------------------------------------------------

# killed_spin DESC ID STATUS SECONDS: waits for the job's end and checks it
# was killed: done, STATUS, exit_signal 9, empty output.
killed_spin() {
	if ! wait_job "$2" "$4"; then
		bad "$1: job $2 has no status after $4 s (last: $CODE $BODY)"
		return 0
	fi
	check "$1: job $2 state/status/exit_signal/output" "done/$3/9/" \
		"$JSTATE/$JSTATUS/$(json_field "$BODY" exit_signal)/$(json_field "$BODY" output)" \
		"$BODY"
}

# running_spinners DESC N: waits (5 s) until N worker processes burn CPU.
running_spinners() {
	local i
	for ((i = 0; i < 15; i++)); do
		spinners
		if ((${#SPINNERS[@]} == $2)); then break; fi
	done
	check "$1: worker processes burning CPU" "$2" "${#SPINNERS[@]}" "$TREE"
}

step_isolated() {
	local id a b c t0 lat fs spinner start
	echo "# 4. isolated jobs (spin: a loop that never looks at its token)"
	stats
	local base_killed=$S_killed base_crashed=$S_crashed
	if wait_tree 5; then
		ok "process tree: server -> fork server -> $PROCESSES workers + 1 spare, no zombie ($TREE)"
	else
		bad "process tree: expected server -> job-fs -> $((PROCESSES + 1)) job-p, no zombie; got $TREE"
	fi
	fs=$FS_PID

	# DELETE of a running spin: its token fires, it goes on looping, and
	# KILL_AFTER later its process is killed
	submit_ok "spin forever" spin "ms=$SPIN_MS"
	id=$JOB_ID
	running_job "spin forever" "$id"
	running_spinners "spin forever" 1
	spinner=${SPINNERS[0]:-0}
	start=${SPIN_START[$spinner]:-none}
	get_job "$id"
	check "spin still running" running/null "$JSTATE/$JSTATUS" "$BODY"
	now
	t0=$NOW
	cancel_check "running spin" "$id" signalled
	killed_spin "DELETE running spin" "$id" -125 10
	now
	lat=$((NOW - t0))
	SPIN_KILL_MS=$lat
	echo "     spin: DELETE to final status in $lat ms (--kill-after $KILL_AFTER_MS ms)"
	expect "spin killed --kill-after after the DELETE (within 5 s more)" \
		"$KILL_AFTER_MS..$((KILL_AFTER_MS + 5000)) ms" "$lat ms" \
		test "$lat" -ge "$KILL_AFTER_MS" -a "$lat" -le $((KILL_AFTER_MS + 5000))
	if wait_gone "$spinner" "$start" 5; then
		ok "spinning process $spinner is gone: killed and reaped, not a zombie"
	else
		bad "spinning process $spinner still there 5 s after its job ended (state $PS_STATE)"
	fi
	stats
	check "stats.killed counts it" $((base_killed + 1)) "$S_killed" "$BODY"
	check "stats.crashed unchanged" "$base_crashed" "$S_crashed" "$BODY"
	check "stats.processes back to --processes" "$PROCESSES" "$S_processes" "$BODY"
	if wait_tree 5 && [[ $FS_PID == "$fs" ]]; then
		ok "process tree back to $PROCESSES workers + 1 spare, same fork server ($TREE)"
	else
		bad "process tree after the kill: expected fork server $fs -> $((PROCESSES + 1)) job-p, got $TREE"
	fi
	cancel_check "killed spin cancelled twice" "$id" already_finished

	# a deadline on a spin: the token fires at 300 ms, the kill follows
	submit_ok "spin with a deadline" spin "ms=$SPIN_MS" timeout_ms=300
	id=$JOB_ID
	now
	t0=$NOW
	killed_spin "spin past its deadline" "$id" -110 10
	now
	lat=$((NOW - t0))
	expect "deadline spin ended after timeout_ms + --kill-after" \
		"$((300 + KILL_AFTER_MS - 100))..$((300 + KILL_AFTER_MS + 5000)) ms" "$lat ms" \
		test "$lat" -ge $((300 + KILL_AFTER_MS - 100)) -a "$lat" -le $((300 + KILL_AFTER_MS + 5000))

	# a worker process killed from outside while its job runs: nobody asked
	# for it, so the job crashed (-EOWNERDEAD, with the signal)
	submit_ok "spin to be killed from outside" spin "ms=$SPIN_MS"
	id=$JOB_ID
	running_job "spin to be killed from outside" "$id"
	running_spinners "spin to be killed from outside" 1
	spinner=${SPINNERS[0]:-0}
	start=${SPIN_START[$spinner]:-none}
	if proc_stat "$spinner" && [[ $PS_START == "$start" && $PS_COMM == job-p ]]; then
		kill -KILL "$spinner"
	fi
	finish_job "spin whose process was killed from outside" "$id" 10 "done" -130
	check "crashed spin: exit_signal/output" 9/ \
		"$(json_field "$BODY" exit_signal)/$(json_field "$BODY" output)" "$BODY"
	stats
	check "stats.crashed counts it" $((base_crashed + 1)) "$S_crashed" "$BODY"
	if wait_tree 5 && [[ $FS_PID == "$fs" ]]; then
		ok "process tree back after a crash ($TREE)"
	else
		bad "process tree after a crash: expected fork server $fs -> $((PROCESSES + 1)) job-p, got $TREE"
	fi

	# the server goes on: an ordinary job, then an isolated one
	submit_ok "sleep after the kills" sleep ms=20
	finish_job "sleep after the kills" "$JOB_ID" 5 "done" 0
	submit_ok "spin after the kills" spin ms=10
	finish_job "spin after the kills" "$JOB_ID" 10 "done" 0
	spin_ran_in_worker "spin after the kills"

	# two spins take both worker processes; a third one's worker thread
	# waits for a process: a DELETE ends that wait, nothing is killed
	submit_ok "spin a" spin "ms=$SPIN_MS"
	a=$JOB_ID
	submit_ok "spin b" spin "ms=$SPIN_MS"
	b=$JOB_ID
	running_job "spin a" "$a"
	running_job "spin b" "$b"
	running_spinners "spins a and b" 2
	submit_ok "spin c" spin "ms=$SPIN_MS"
	c=$JOB_ID
	running_job "spin c (a worker thread waits for a process)" "$c"
	sleep 0.2
	get_job "$c"
	check "spin c still waiting" running/null "$JSTATE/$JSTATUS" "$BODY"
	stats
	local base_cancelled=$S_cancelled
	cancel_check "spin waiting for a process" "$c" signalled
	finish_job "spin c: never reached a process" "$c" 5 cancelled -125
	check "spin c: exit_signal/output null" null/null \
		"$(json_field "$BODY" exit_signal)/$(json_field "$BODY" output)" "$BODY"
	cancel_check "running spin a" "$a" signalled
	cancel_check "running spin b" "$b" signalled
	killed_spin "spin a" "$a" -125 10
	killed_spin "spin b" "$b" -125 10
	stats
	check "stats.killed: 4 spins killed" $((base_killed + 4)) "$S_killed" "$BODY"
	check "stats.cancelled: spin c counted as cancelled" $((base_cancelled + 1)) \
		"$S_cancelled" "$BODY"
	if wait_tree 5 && [[ $FS_PID == "$fs" ]]; then
		ok "process tree back to $PROCESSES workers + 1 spare after 4 kills ($TREE)"
	else
		bad "process tree after 4 kills: expected fork server $fs -> $((PROCESSES + 1)) job-p, got $TREE"
	fi
	stats
	check "stats.processes after 4 kills" "$PROCESSES" "$S_processes" "$BODY"
	check_accounting "after isolated jobs"
	check "stats.crashed: the one killed from outside" $((base_crashed + 1)) \
		"$S_crashed" "$BODY"
}

# ---- 4b. scheduling ------------------------------------------------------------

# wait_runs ID N SECONDS: polls every 10 ms until the job's runs >= N; the
# last GET is in BODY, its runs in JRUNS.
wait_runs() {
	local limit
	now
	limit=$((NOW + $3 * 1000))
	while :; do
		get_job "$1"
		jget "$BODY" runs
		JRUNS=$JV
		if [[ $CODE == 200 && $JRUNS =~ ^[0-9]+$ ]] && ((JRUNS >= $2)); then
			return 0
		fi
		now
		if ((NOW >= limit)); then return 1; fi
		sleep 0.01
	done
}

# sched_fields BODY: "priority/delay_ms/period_ms/runs/last_status" of a job.
sched_fields() {
	local f out=""
	for f in priority delay_ms period_ms runs last_status; do
		jget "$1" "$f"
		out+=${out:+/}${JV:-missing}
	done
	printf '%s' "$out"
}

# end_periodic DESC ID OK_STATUS...: DELETEs a periodic job that is going
# on; the answer must be prevented (between runs) or signalled (in a run),
# the final state done, the status -125 or, after signalled, one of
# OK_STATUS (what a run returns when the cancel came as it ended). Then no
# run may follow: runs stays as it was when the status appeared.
end_periodic() {
	local desc=$1 id=$2 runs
	shift 2
	cancel "$id"
	expect "$desc: DELETE between or during runs" "200 prevented|signalled" \
		"$CODE $ANSWER" test "$CODE" = 200 -a \
		\( "$ANSWER" = prevented -o "$ANSWER" = signalled \)
	if ! wait_job "$id" 5; then
		bad "$desc: no status 5 s after DELETE: $BODY"
		return 0
	fi
	local got=$JSTATE/$JSTATUS want=done/-125 good=0 s
	if [[ $got == done/-125 ]]; then good=1; fi
	if [[ $ANSWER == signalled ]]; then
		for s in "$@"; do
			want+=" or done/$s"
			if [[ $got == "done/$s" ]]; then good=1; fi
		done
	fi
	expect "$desc: ended after DELETE ($ANSWER)" "$want" "$got [$BODY]" \
		test "$good" = 1
	jget "$BODY" runs
	runs=$JV
	# three periods or more: a run that followed the end would show
	sleep 0.3
	get_job "$id"
	check "$desc: no run after the end of the series (runs, state/status)" \
		"$runs $JSTATE/$JSTATUS" "$(json_field "$BODY" runs) $JSTATE/$JSTATUS" \
		"$BODY"
	cancel_check "$desc: DELETE again" "$id" already_finished
}

step_schedule() {
	local id id2 t0 t1 sub st fin DELAY_MS=1000
	echo "# 4b. scheduling: delay_ms, period_ms, priority"

	# a delayed job is queued, not started, until its delay has passed
	# (long enough for a few requests of a busy machine to fit in it);
	# checked only while less than the delay has passed since the POST
	# was sent (the server starts the clock later), so never flaky
	now
	t0=$NOW
	submit_ok "delayed sleep" sleep ms=20 delay_ms=$DELAY_MS
	id=$JOB_ID
	get_job "$id"
	now
	t1=$NOW
	local early_body=$BODY early_state=$JSTATE/$JSTATUS
	if ((t1 - t0 < DELAY_MS)); then
		jget "$early_body" started_ms
		check "delayed job before its delay: queued, status null, not started" \
			queued/null/null "$early_state/$JV" "$early_body"
	else
		echo "     (slow machine: GET $((t1 - t0)) ms after the POST; early state not checked)"
	fi
	stats
	now
	if ((NOW - t0 < DELAY_MS)); then
		check "delayed job before its delay: stats queued/running" 1/0 \
			"$S_queued/$S_running" "$BODY"
	else
		echo "     (slow machine: stats $((NOW - t0)) ms after the POST; not checked)"
	fi
	check "delayed job record: priority/delay_ms/period_ms/runs/last_status" \
		"normal/$DELAY_MS/0/null/null" "$(sched_fields "$early_body")" "$early_body"
	finish_job "delayed sleep" "$id" 10 "done" 0
	sub=$(json_field "$BODY" submitted_ms)
	st=$(json_field "$BODY" started_ms)
	fin=$(json_field "$BODY" finished_ms)
	if [[ $sub =~ ^[0-9]+$ && $st =~ ^[0-9]+$ && $fin =~ ^[0-9]+$ ]] &&
		((st - sub >= DELAY_MS && fin - st >= 20)); then
		ok "delayed job started $((st - sub)) ms after submission (delay_ms $DELAY_MS), ran $((fin - st)) ms"
	else
		bad "delayed job times: expected started >= submitted + $DELAY_MS and finished >= started + 20, got $sub/$st/$fin"
	fi

	# delays of an hour and of the largest value: queued until a DELETE
	submit_ok "sleep delayed by an hour" sleep ms=10 delay_ms=3600000
	id=$JOB_ID
	submit_ok "sleep with the largest delay" sleep ms=10 delay_ms=9223372036854 \
		priority=low
	id2=$JOB_ID
	get_job "$id2"
	check "largest delay: queued, record" \
		"queued/null low/9223372036854/0/null/null" \
		"$JSTATE/$JSTATUS $(sched_fields "$BODY")" "$BODY"
	cancel_check "sleep delayed by an hour, before it starts" "$id" prevented
	cancel_check "sleep with the largest delay, before it starts" "$id2" prevented
	for id in "$id" "$id2"; do
		get_job "$id"
		check "long-delayed job $id after DELETE: cancelled/-125, never started" \
			cancelled/-125/null \
			"$JSTATE/$JSTATUS/$(json_field "$BODY" started_ms)" "$BODY"
	done

	# a deadline that comes before the delay: times out without running
	submit_ok "delay beyond the deadline" sleep ms=10 delay_ms=400 timeout_ms=150
	id=$JOB_ID
	finish_job "delay_ms 400, timeout_ms 150: timed out unrun" "$id" 5 cancelled -110
	check "delay beyond the deadline: never started" null \
		"$(json_field "$BODY" started_ms)" "$BODY"
	sub=$(json_field "$BODY" submitted_ms)
	fin=$(json_field "$BODY" finished_ms)
	expect "delay beyond the deadline: ended at its deadline, not before" \
		">= 150 ms after submission" "$((fin - sub)) ms" \
		test $((fin - sub)) -ge 150

	# a periodic job: runs every period_ms until DELETE
	submit_ok "periodic sleep" sleep ms=10 period_ms=100
	id=$JOB_ID
	if wait_runs "$id" 3 10; then
		ok "periodic sleep: $JRUNS runs within 10 s"
	else
		bad "periodic sleep: expected 3 runs within 10 s, got $CODE $BODY"
	fi
	expect "periodic sleep between/during runs: queued or running, status null" \
		"queued/null or running/null" "$JSTATE/$JSTATUS" \
		test "$JSTATE/$JSTATUS" = queued/null -o "$JSTATE/$JSTATUS" = running/null
	jget "$BODY" runs
	check "periodic sleep record: priority/delay_ms/period_ms/last_status" \
		"normal/0/100/$JV/0" "$(sched_fields "$BODY")" "$BODY"
	sub=$(json_field "$BODY" submitted_ms)
	st=$(json_field "$BODY" started_ms)
	expect "periodic sleep: started_ms is the first run's (at once)" \
		"$sub..$((sub + 3000))" "$st" test "$st" -ge "$sub" -a "$st" -le $((sub + 3000))
	end_periodic "periodic sleep" "$id" 0

	# whatever a run returns, the series goes on: a fetch to a closed port
	start_peer closed
	local closed_port=$PEER_PORT closed_pid=${BG_PIDS[-1]}
	kill -TERM "$closed_pid"
	wait "$closed_pid" 2>/dev/null || true
	forget_pid "$closed_pid"
	submit_ok "periodic failing fetch" fetch host=127.0.0.1 "port=$closed_port" \
		period_ms=50 priority=high
	id=$JOB_ID
	if wait_runs "$id" 3 10; then
		ok "periodic failing fetch: $JRUNS runs, the series goes on"
	else
		bad "periodic failing fetch: expected 3 runs within 10 s, got $CODE $BODY"
	fi
	jget "$BODY" runs
	check "periodic failing fetch: status null, record" \
		"null high/0/50/$JV/-111" "$JSTATUS $(sched_fields "$BODY")" "$BODY"
	end_periodic "periodic failing fetch" "$id" -111

	# a periodic job ends at its deadline (450 ms: between the runs at
	# 400 and 500)
	submit_ok "periodic sleep with a deadline" sleep ms=10 period_ms=100 \
		timeout_ms=450
	id=$JOB_ID
	if wait_job "$id" 10; then
		# 0 only if a run had just returned when the deadline fired
		expect "periodic with a deadline: ended done/-110" "done/-110" \
			"$JSTATE/$JSTATUS [$BODY]" test "$JSTATE/$JSTATUS" = done/-110 \
			-o "$JSTATE/$JSTATUS" = done/0
		jget "$BODY" runs
		# due at 0, 100, 200, 300, 400 ms: 5 at most (fewer if late)
		expect "periodic with a deadline: runs before it" "1..5" \
			"${JV:-missing}" test "${JV:-0}" -ge 1 -a "${JV:-0}" -le 5
		sub=$(json_field "$BODY" submitted_ms)
		fin=$(json_field "$BODY" finished_ms)
		expect "periodic with a deadline: ended at it, not before" \
			">= 450 ms after submission" "$((fin - sub)) ms" \
			test $((fin - sub)) -ge 450
	else
		bad "periodic with a deadline: no status after 10 s: $BODY"
	fi

	# priorities: with every worker busy, queue low, normal, high, low,
	# high; one freed worker then starts them high first, FIFO within one
	# priority: started_ms strictly increasing in that order
	fill_workers "$THREADS"
	local busy=("${LONG[@]}") lo no hi lo2 hi2
	submit_ok "low" sleep ms=30 priority=low
	lo=$JOB_ID
	submit_ok "normal (0)" sleep ms=30 priority=0
	no=$JOB_ID
	submit_ok "high" sleep ms=30 priority=high
	hi=$JOB_ID
	submit_ok "low (-1)" sleep ms=30 priority=-1
	lo2=$JOB_ID
	submit_ok "high (1)" sleep ms=30 priority=1
	hi2=$JOB_ID
	stats
	check "5 prioritized jobs queued behind $THREADS busy workers" \
		"5/$THREADS" "$S_queued/$S_running" "$BODY"
	local names=""
	for id in "$lo" "$no" "$hi" "$lo2" "$hi2"; do
		get_job "$id"
		names+="$(json_field "$BODY" priority) "
	done
	check "priorities named in the records" "low normal high low high " "$names"
	release "free one worker" "${busy[0]}"
	local starts="" prev=-1 sorted=1
	for id in "$hi" "$hi2" "$no" "$lo" "$lo2"; do
		finish_job "prioritized job" "$id" 10 "done" 0
		st=$(json_field "$BODY" started_ms)
		starts+="$id:$st "
		if [[ ! $st =~ ^[0-9]+$ ]] || ((st <= prev)); then sorted=0; fi
		prev=${st:-0}
	done
	expect "one worker started high, high, normal, low, low (ids $hi $hi2 $no $lo $lo2)" \
		"strictly increasing started_ms" "$starts" test "$sorted" = 1
	release "release workers" "${busy[@]:1}"

	# delay and priority on a spin and on a pipeline (both its tasks)
	submit_ok "delayed spin" spin ms=10 delay_ms=100 priority=high
	id=$JOB_ID
	submit_ok "delayed pipeline" pipeline items=100 delay_ms=100 priority=low
	id2=$JOB_ID
	finish_job "delayed spin" "$id" 10 "done" 0
	check "delayed spin record" high/100/0/null/null "$(sched_fields "$BODY")" "$BODY"
	finish_job "delayed pipeline" "$id2" 10 "done" 0
	sub=$(json_field "$BODY" submitted_ms)
	st=$(json_field "$BODY" started_ms)
	expect "delayed pipeline: its consumer started after delay_ms" \
		">= 100 ms" "$((st - sub)) ms" test $((st - sub)) -ge 100
	check_accounting "after scheduling"
}

# ---- 5. mixed load -----------------------------------------------------------

declare -A KIND=() CANCEL=() ARGS=()
MIXED_IDS=()

# batch KEY METHOD PATH DATA ...(groups of 4): one curl process for all the
# requests, in order, over one connection. Results: B_CODE[KEY], and
# $TMP/batch/KEY.b (body) / KEY.h (headers).
batch() {
	local args=() first=1
	rm -rf "$TMP/batch"
	mkdir "$TMP/batch"
	while (($# >= 4)); do
		if ((first == 0)); then args+=(--next); fi
		first=0
		args+=(-sS -g --noproxy '*' --max-time "$CURL_MAX" -X "$2"
			-o "$TMP/batch/$1.b" -D "$TMP/batch/$1.h" -w "$1 %{http_code}\n")
		if [[ -n $4 ]]; then args+=(--data "$4"); fi
		args+=("$BASE$3")
		shift 4
	done
	timeout -k 2 60 curl "${args[@]}" >"$TMP/batch/codes" 2>"$TMP/batch/err" || true
	B_CODE=()
	local k c
	while read -r k c; do B_CODE[$k]=$c; done <"$TMP/batch/codes"
}
declare -A B_CODE=()

# batch_body KEY: the body of a batch answer, into BB (no subshell).
batch_body() {
	BB=""
	if [[ -f $TMP/batch/$1.b ]]; then IFS= read -r -d '' BB <"$TMP/batch/$1.b" || true; fi
}
# batch_header KEY NAME: a header of a batch answer, into BH (no subshell).
batch_header() {
	local line
	BH=""
	[[ -f $TMP/batch/$1.h ]] || return 0
	while IFS= read -r line; do
		line=${line%$'\r'}
		if [[ ${line,,} == "${2,,}":* ]]; then
			BH=${line#*:}
			BH=${BH#"${BH%%[![:space:]]*}"}
		fi
	done <"$TMP/batch/$1.h"
}

# random_job: a form body for a short job of a random kind.
random_job() {
	case $((RANDOM % 5)) in
	0) R_KIND=sleep R_DATA="kind=sleep&ms=$((1 + RANDOM % 50))" ;;
	1) R_KIND=cpu R_DATA="kind=cpu&iterations=$((1000 + RANDOM * 30))" ;;
	2) R_KIND=fetch R_DATA="kind=fetch&host=127.0.0.1&port=$EOF_PORT" ;;
	# at most 15 items: the producer never waits for room in the 16-slot
	# queue, so producers cannot hold every worker while their consumers
	# wait in the pool's queue
	3) R_KIND=pipeline R_DATA="kind=pipeline&items=$((1 + RANDOM % 15))" ;;
	# far shorter than --kill-after: a DELETE does not stop it, it ends
	4) R_KIND=spin R_DATA="kind=spin&ms=$((1 + RANDOM % 20))" ;;
	esac
	# some are scheduled: the answers and outcomes expected stay the same
	case $((RANDOM % 8)) in
	0) R_DATA+="&priority=high" ;;
	1) R_DATA+="&priority=low" ;;
	2) R_DATA+="&delay_ms=$((RANDOM % 30))" ;;
	esac
}

# submit_batch DATA...: submits forms in one curl; accepted jobs go to
# MIXED_IDS, 503s back to RETRY.
submit_batch() {
	local i spec=() d kind code body items=("$@")
	for ((i = 0; i < ${#items[@]}; i++)); do
		spec+=("s$i" POST /jobs "${items[i]#*|}")
	done
	batch "${spec[@]}"
	for ((i = 0; i < ${#items[@]}; i++)); do
		d=${items[i]}
		kind=${d%%|*}
		code=${B_CODE[s$i]:-000}
		batch_body "s$i"
		body=$BB
		if [[ $code == 202 ]]; then
			local id
			jget "$body" id
			id=$JV
			if [[ ! $id =~ ^[1-9][0-9]*$ ]]; then
				bad "mixed submit: 202 without an id: $body"
				continue
			fi
			KIND[$id]=$kind
			ARGS[$id]=${d#*|}
			MIXED_IDS+=("$id")
			if [[ $kind == pipeline ]]; then
				EXPECTED_TASKS=$((EXPECTED_TASKS + 2))
			else
				EXPECTED_TASKS=$((EXPECTED_TASKS + 1))
			fi
			SUBMITTED_NOW+=("$id")
		elif [[ $code == 503 ]]; then
			N503=$((N503 + 1))
			MIXED_503=$((MIXED_503 + 1))
			if [[ $kind == pipeline ]]; then PIPE_503=$((PIPE_503 + 1)); fi
			batch_header "s$i" Retry-After
			if [[ $BH != 1 ]]; then
				bad "mixed submit: 503 (queue full) without 'Retry-After: 1' (got '$BH'): $body"
			fi
			RETRY+=("$d")
		else
			bad "mixed submit ${d#*|}: expected 202 or 503, got $code $body"
		fi
	done
}

# cancel_batch ID...: DELETEs in one curl, records the answers in CANCEL.
cancel_batch() {
	(($# > 0)) || return 0
	local id spec=() body ans
	for id in "$@"; do spec+=("d$id" DELETE "/jobs/$id" ""); done
	batch "${spec[@]}"
	for id in "$@"; do
		batch_body "d$id"
		body=$BB
		jget "$body" cancel
		ans=$JV
		case "${B_CODE[d$id]:-000} $ans" in
		"200 prevented" | "200 signalled" | "200 already_finished")
			CANCEL[$id]=$ans
			;;
		*)
			bad "mixed DELETE job $id: expected 200 with a cancel answer, got ${B_CODE[d$id]:-000} $body"
			;;
		esac
	done
}

# expected_ok KIND: the status of a job that ran to the end.
expected_ok() { if [[ $1 == fetch ]]; then echo 6; else echo 0; fi; }

# judge ID STATE STATUS: empty when consistent, else what was expected.
judge() {
	local kind=${KIND[$1]} ans=${CANCEL[$1]:-none} st=$2 status=$3 okst
	okst=$(expected_ok "$kind")
	case $ans in
	none | already_finished)
		# a finished pipeline's parent token never fired: SPEC says signalled
		[[ $st/$status == done/$okst ]] || echo "done/$okst"
		;;
	prevented)
		[[ $st/$status == cancelled/-125 ]] || echo "cancelled/-125"
		;;
	signalled)
		if [[ $st/$status == done/-125 || $st/$status == done/$okst ]]; then
			return 0
		fi
		# a pipeline is signalled when either task had started: the
		# consumer may never have run; a spin is signalled while its
		# worker thread waits for a free process, and never runs then
		if [[ $kind == pipeline || $kind == spin ]] &&
			[[ $st/$status == cancelled/-125 ]]; then
			return 0
		fi
		echo "done/-125 or done/$okst"
		;;
	esac
}

step_mixed() {
	local i n d want
	echo "# 5. mixed load: $MIXED_JOBS jobs"
	MIXED_503=0
	RETRY=()
	local todo=()
	for ((i = 0; i < MIXED_JOBS; i++)); do
		random_job
		todo+=("$R_KIND|$R_DATA")
	done
	local t0
	now
	t0=$NOW
	i=0
	while ((i < ${#todo[@]})); do
		# mostly large batches, so that the queue fills up and the
		# DELETEs that follow find jobs queued, running and finished
		if ((RANDOM % 3 == 0)); then
			n=$((1 + RANDOM % 10))
		else
			n=$((40 + RANDOM % 60))
		fi
		SUBMITTED_NOW=()
		submit_batch "${todo[@]:i:n}"
		i=$((i + n))
		# cancel about a third of what was just accepted, at once,
		# newest first: those are the likeliest to be still queued
		local victims=() id k
		for ((k = ${#SUBMITTED_NOW[@]} - 1; k >= 0; k--)); do
			if ((RANDOM % 3 == 0)); then victims+=("${SUBMITTED_NOW[k]}"); fi
		done
		cancel_batch "${victims[@]}"
	done
	local first503=$MIXED_503 round=0
	while ((${#RETRY[@]} > 0 && round < 60)); do
		round=$((round + 1))
		sleep 0.25
		local again=("${RETRY[@]}")
		RETRY=()
		SUBMITTED_NOW=()
		submit_batch "${again[@]}"
	done
	now
	echo "     submitted in $((NOW - t0)) ms; 503 on first try: $first503," \
		"503 in total: $MIXED_503, retry rounds: $round"
	check "mixed: every job accepted in the end" "$MIXED_JOBS" "${#MIXED_IDS[@]}" \
		"${#RETRY[@]} still refused"
	local p=0 s=0 a=0
	for id in "${!CANCEL[@]}"; do
		case ${CANCEL[$id]} in
		prevented) p=$((p + 1)) ;;
		signalled) s=$((s + 1)) ;;
		already_finished) a=$((a + 1)) ;;
		esac
	done
	echo "     DELETE answers: prevented $p, signalled $s, already_finished $a"

	if wait_idle 60; then
		ok "mixed: pool idle within 60 s"
	else
		bad "mixed: pool not idle after 60 s: $BODY"
	fi
	# every job, in one curl
	local spec=() left=("${MIXED_IDS[@]}") tries=0 bad_jobs=0 body st status
	while ((${#left[@]} > 0 && tries < 20)); do
		tries=$((tries + 1))
		spec=()
		for id in "${left[@]}"; do spec+=("g$id" GET "/jobs/$id" ""); done
		batch "${spec[@]}"
		local pending=()
		for id in "${left[@]}"; do
			batch_body "g$id"
			body=$BB
			jget "$body" status
			status=$JV
			if [[ ${B_CODE[g$id]:-000} != 200 || -z $status || $status == null ]]; then
				if ((tries < 20)); then
					pending+=("$id")
					continue
				fi
			fi
			jget "$body" state
			st=$JV
			want=$(judge "$id" "$st" "$status")
			if [[ -z $want ]]; then
				QUIET=1 ok "mixed job $id"
			else
				bad_jobs=$((bad_jobs + 1))
				bad "mixed job $id (${KIND[$id]} ${ARGS[$id]}, DELETE said ${CANCEL[$id]:-nothing}): expected $want, got ${B_CODE[g$id]:-000} $body"
			fi
		done
		left=("${pending[@]}")
		if ((${#left[@]} > 0)); then sleep 0.25; fi
	done
	echo "     mixed jobs consistent: $((MIXED_JOBS - bad_jobs))/$MIXED_JOBS"
	check_accounting "after mixed load"
}

# ---- 6. error codes ----------------------------------------------------------

# bad_post DESC DATA: POST /jobs must be 400 with an "error" field.
bad_post() {
	local args=()
	if [[ -n $2 ]]; then args=(--data "$2"); else args=(--data ""); fi
	req POST /jobs "${args[@]}"
	local e
	e=$(json_field "$BODY" error)
	expect "400 for $1 ($2)" "400 {\"error\":...}" "$CODE $BODY" \
		test "$CODE" = 400 -a -n "$e" -a "$e" != null
}

# want DESC METHOD PATH CODE: status code and an "error" body.
want() {
	req "$2" "$3"
	local e
	e=$(json_field "$BODY" error)
	expect "$1: $2 $3 -> $4" "$4 {\"error\":...}" "$CODE $BODY" \
		test "$CODE" = "$4" -a -n "$e" -a "$e" != null
}

step_errors() {
	echo "# 6. error codes"
	bad_post "empty body" ""
	bad_post "empty kind" "kind="
	bad_post "unknown kind" "kind=bogus&ms=5"
	bad_post "no kind" "ms=5"
	bad_post "sleep without ms" "kind=sleep"
	bad_post "negative ms" "kind=sleep&ms=-1"
	bad_post "ms not a number" "kind=sleep&ms=abc"
	bad_post "ms with trailing junk" "kind=sleep&ms=5x"
	bad_post "empty ms" "kind=sleep&ms="
	bad_post "ms too large" "kind=sleep&ms=3600001"
	bad_post "ms overflowing" "kind=sleep&ms=99999999999999999999999"
	bad_post "cpu iterations 0" "kind=cpu&iterations=0"
	bad_post "cpu iterations > 10^12" "kind=cpu&iterations=1000000000001"
	bad_post "cpu without iterations" "kind=cpu"
	bad_post "fetch bad host" "kind=fetch&host=999.1.1.1&port=80"
	bad_post "fetch host name" "kind=fetch&host=localhost&port=80"
	bad_post "fetch port 0" "kind=fetch&host=127.0.0.1&port=0"
	bad_post "fetch port 65536" "kind=fetch&host=127.0.0.1&port=65536"
	bad_post "fetch without host" "kind=fetch&port=80"
	bad_post "pipeline items 0" "kind=pipeline&items=0"
	bad_post "pipeline items > 10^9" "kind=pipeline&items=1000000001"
	bad_post "timeout_ms 0" "kind=sleep&ms=5&timeout_ms=0"
	bad_post "timeout_ms too large" "kind=sleep&ms=5&timeout_ms=3600001"
	bad_post "timeout_ms not a number" "kind=sleep&ms=5&timeout_ms=abc"
	bad_post "spin without ms" "kind=spin"
	bad_post "spin ms too large" "kind=spin&ms=3600001"
	bad_post "spin with items" "kind=spin&ms=5&items=3"
	# scheduling: 9223372036854 ms is the largest whose ns fit in int64_t
	bad_post "negative delay_ms" "kind=sleep&ms=5&delay_ms=-1"
	bad_post "delay_ms not a number" "kind=sleep&ms=5&delay_ms=abc"
	bad_post "empty delay_ms" "kind=sleep&ms=5&delay_ms="
	bad_post "delay_ms with a sign" "kind=sleep&ms=5&delay_ms=%2B5"
	bad_post "delay_ms with a fraction" "kind=sleep&ms=5&delay_ms=1.5"
	bad_post "delay_ms overflowing ns" "kind=sleep&ms=5&delay_ms=9223372036855"
	bad_post "delay_ms overflowing int64" "kind=sleep&ms=5&delay_ms=99999999999999999999"
	bad_post "repeated delay_ms" "kind=sleep&ms=5&delay_ms=1&delay_ms=2"
	bad_post "negative period_ms" "kind=sleep&ms=5&period_ms=-5"
	bad_post "period_ms not a number" "kind=sleep&ms=5&period_ms=x"
	bad_post "period_ms overflowing ns" "kind=sleep&ms=5&period_ms=9223372036855"
	bad_post "period_ms overflowing uint64" "kind=sleep&ms=5&period_ms=18446744073709551616"
	bad_post "periodic spin" "kind=spin&ms=5&period_ms=100"
	bad_post "periodic pipeline" "kind=pipeline&items=5&period_ms=100"
	bad_post "unknown priority" "kind=sleep&ms=5&priority=urgent"
	bad_post "priority 2" "kind=sleep&ms=5&priority=2"
	bad_post "priority -2" "kind=sleep&ms=5&priority=-2"
	bad_post "priority +1" "kind=sleep&ms=5&priority=%2B1"
	bad_post "priority in capitals" "kind=sleep&ms=5&priority=HIGH"
	bad_post "empty priority" "kind=sleep&ms=5&priority="

	want "unknown job" GET /jobs/999999 404
	want "unknown job" DELETE /jobs/999999 404
	want "non-numeric id" GET /jobs/abc 400
	want "zero id" GET /jobs/0 400
	want "negative id" GET /jobs/-1 400
	want "non-numeric id" DELETE /jobs/abc 400
	want "unknown path" GET /nope 404
	want "unknown path" POST /nope 404
	want "wrong method" PUT /jobs 405
	want "wrong method" GET /jobs 405
	want "wrong method" POST /stats 405
	want "wrong method" DELETE /stats 405
	want "wrong method" PUT /jobs/1 405

	# queue full: every worker busy, QUEUE more queued, then one too many
	fill_workers "$THREADS"
	local busy=("${LONG[@]}") queued=() i
	for ((i = 0; i < QUEUE; i++)); do
		submit_ok "fill the queue ($i)" sleep "ms=$LONG_MS"
		queued+=("$JOB_ID")
	done
	ok "$QUEUE jobs queued behind $THREADS busy workers"
	stats
	check "stats with a full queue: queued/running" "$QUEUE/$THREADS" \
		"$S_queued/$S_running" "$BODY"
	submit kind=sleep ms=5
	local e ra
	e=$(json_field "$BODY" error)
	ra=$(header Retry-After)
	if [[ $CODE == 503 ]]; then N503=$((N503 + 1)); fi
	if [[ $CODE == 202 ]]; then
		EXPECTED_TASKS=$((EXPECTED_TASKS + 1))
		queued+=("$JOB_ID")
	fi
	expect "queue full: 503 with an error" "503 {\"error\":...}" "$CODE $BODY" \
		test "$CODE" = 503 -a -n "$e" -a "$e" != null
	check "queue full: Retry-After header" 1 "$ra"
	stats
	check "stats.rejected counts the refusal" "$N503" "$S_rejected" "$BODY"

	local id
	QUIET=1
	for id in "${queued[@]}"; do cancel_check "empty the queue" "$id" prevented; done
	QUIET=0
	ok "emptied the queue"
	release "release workers" "${busy[@]}"
	check_accounting "after error codes"
}

# ---- 7. shutdown -------------------------------------------------------------

step_shutdown() {
	local i id queued=() fetch spin p
	echo "# 7. shutdown"
	fill_workers $((THREADS - 2))
	submit_ok "fetch on silent peer" fetch host=127.0.0.1 "port=$SILENT_PORT"
	fetch=$JOB_ID
	running_job "fetch on silent peer" "$fetch"
	submit_ok "spin at shutdown" spin "ms=$SPIN_MS"
	spin=$JOB_ID
	running_job "spin at shutdown" "$spin"
	for ((i = 0; i < 5; i++)); do
		submit_ok "queued for shutdown" sleep ms=1000
		queued+=("$JOB_ID")
	done
	for id in "${queued[@]}"; do
		get_job "$id"
		check "job $id queued before SIGTERM" queued "$JSTATE" "$BODY"
	done
	stats
	local base_completed=$S_completed base_cancelled=$S_cancelled \
		base_timed_out=$S_timed_out base_dropped=$S_dropped \
		base_killed=$S_killed base_crashed=$S_crashed
	check "before SIGTERM: queued/running" "${#queued[@]}/$THREADS" \
		"$S_queued/$S_running" "$BODY"
	# every process the server has made, to look for after it exited
	local -A started=()
	if wait_tree 5; then
		ok "before SIGTERM: $TREE"
	else
		bad "before SIGTERM: expected server -> job-fs -> $((PROCESSES + 1)) job-p, got $TREE"
	fi
	for p in "$FS_PID" "${WORKERS[@]}"; do
		if [[ -n $p ]] && proc_stat "$p"; then started[$p]=$PS_START; fi
	done

	local t0
	now
	t0=$NOW
	kill -TERM "$SERVER_PID"
	sleep 0.2
	submit kind=sleep ms=1
	if [[ $CODE == 202 ]]; then EXPECTED_TASKS=$((EXPECTED_TASKS + 1)); fi
	expect "POST during shutdown" "503 (no Retry-After) or no connection" \
		"$CODE $BODY Retry-After='$(header Retry-After)'" \
		test "$CODE" = 000 -o \( "$CODE" = 503 -a -z "$(header Retry-After)" \)

	wait_exit "$t0" $((DRAIN + GRACE + 10))
	STOP_TOTAL_MS=$ELAPSED
	echo "     SIGTERM to exit: $STOP_TOTAL_MS ms"
	local budget=$(((DRAIN + GRACE) * 1000 + 1500))
	expect "SIGTERM to exit <= drain+grace+1.5 s" "<= $budget ms" \
		"$STOP_TOTAL_MS ms" test "$STOP_TOTAL_MS" -le "$budget"

	local left=()
	for p in "${!started[@]}"; do
		gone "$p" "${started[$p]}" || left+=("$p:$PS_STATE")
	done
	check "fork server and its ${#started[@]} children gone after the exit" \
		"" "${left[*]}"

	parse_summary || return 0
	local ran=$SUM_RAN can=$SUM_CANCELLED tmo=$SUM_TIMED_OUT \
		drop=$SUM_DROPPED aband=$SUM_ABANDONED stop=$SUM_STOP_MS \
		killed=$SUM_KILLED crashed=$SUM_CRASHED
	STOP_MS=$stop
	check "summary abandoned" 0 "$aband"
	check "summary ran (2 sleeps + fetch returned)" \
		$((base_completed + THREADS - 1)) "$ran"
	check "summary killed (the spin)" $((base_killed + 1)) "$killed"
	check "summary crashed" "$base_crashed" "$crashed"
	check "summary cancelled" "$base_cancelled" "$can"
	check "summary timed_out" "$base_timed_out" "$tmo"
	expect "summary dropped >= queued jobs left (${#queued[@]})" \
		">= $((base_dropped + ${#queued[@]}))" "$drop" \
		test "$drop" -ge $((base_dropped + ${#queued[@]}))
	check "summary dropped" $((base_dropped + ${#queued[@]})) "$drop"
	check "summary accounts for every task" "$EXPECTED_TASKS" \
		$((ran + can + tmo + drop + killed + crashed))
	# workers stay busy, so the drain runs to its end before the tokens
	# fire; the spin ignores its token and is killed --kill-after later
	expect "summary stop_ms: drain ran out, then the spin's --kill-after" \
		"$((DRAIN * 1000 + KILL_AFTER_MS - 100))..$(((DRAIN + GRACE) * 1000 + 500))" "$stop" \
		test "$stop" -ge $((DRAIN * 1000 + KILL_AFTER_MS - 100)) -a "$stop" -le $(((DRAIN + GRACE) * 1000 + 500))
}

# ---- 8. SIGINT, decimal --drain/--grace, grace kills a spin, periodic jobs ----

step_sigint() {
	local t0 q
	echo "# 8. SIGINT with --drain 0.5 --grace 0.5"
	# a busy server: the drain (0.5 s) runs out, the queued job is dropped
	start_server sigint --threads 2 --queue 4 --drain 0.5 --grace 0.5
	fill_workers 2
	submit_ok "queued" sleep ms=1000
	q=$JOB_ID
	get_job "$q"
	check "job $q queued before SIGINT" queued "$JSTATE" "$BODY"
	now
	t0=$NOW
	kill -INT "$SERVER_PID"
	wait_exit "$t0" 10
	expect "SIGINT to exit <= drain+grace+1.5 s" "<= 2500 ms" "$ELAPSED ms" \
		test "$ELAPSED" -le 2500
	if parse_summary; then
		check "summary after SIGINT: ran/cancelled/timed_out/dropped/killed/crashed/abandoned" \
			2/0/0/1/0/0/0 \
			"$SUM_RAN/$SUM_CANCELLED/$SUM_TIMED_OUT/$SUM_DROPPED/$SUM_KILLED/$SUM_CRASHED/$SUM_ABANDONED"
		expect "stop_ms with a 0.5 s drain" "400..1500" "$SUM_STOP_MS" \
			test "$SUM_STOP_MS" -ge 400 -a "$SUM_STOP_MS" -le 1500
	fi

	# a spin job whose --kill-after (60 s) is beyond the grace (0.5 s):
	# the end of the grace kills it; nothing is abandoned, exit code 0
	echo "# 8b. the end of the grace kills a spin job (--kill-after 60)"
	start_server grace --threads 2 --queue 4 --processes 1 --kill-after 60 \
		--drain 0.2 --grace 0.5
	submit_ok "spin at shutdown" spin "ms=$SPIN_MS"
	running_job "spin at shutdown" "$JOB_ID"
	now
	t0=$NOW
	kill -TERM "$SERVER_PID"
	wait_exit "$t0" 10
	expect "grace server: SIGTERM to exit <= drain+grace+1.5 s" "<= 2200 ms" \
		"$ELAPSED ms" test "$ELAPSED" -le 2200
	if parse_summary; then
		check "grace summary: ran/cancelled/timed_out/dropped/killed/crashed/abandoned" \
			0/0/0/0/1/0/0 \
			"$SUM_RAN/$SUM_CANCELLED/$SUM_TIMED_OUT/$SUM_DROPPED/$SUM_KILLED/$SUM_CRASHED/$SUM_ABANDONED"
		expect "grace summary: stop_ms = drain + grace" "600..1500" \
			"$SUM_STOP_MS" test "$SUM_STOP_MS" -ge 600 -a "$SUM_STOP_MS" -le 1500
	fi

	# an idle server without worker processes: spin is refused (501), and
	# the drain ends at once
	echo "# 8c. idle server, --processes 0"
	start_server idle --threads 2 --queue 4 --drain 5 --grace 5 --processes 0
	submit kind=spin ms=5
	local e
	e=$(json_field "$BODY" error)
	expect "spin with --processes 0: 501 with an error" "501 {\"error\":...}" \
		"$CODE $BODY" test "$CODE" = 501 -a -n "$e" -a "$e" != null
	stats
	check "--processes 0: stats.processes" 0 "$S_processes" "$BODY"
	tree
	check "--processes 0: the server has no child process" "" \
		"${SERVER_KIDS[*]}" "$TREE"
	now
	t0=$NOW
	kill -TERM "$SERVER_PID"
	wait_exit "$t0" 20
	expect "idle server: SIGTERM to exit well within the 5 s drain" "<= 1500 ms" \
		"$ELAPSED ms" test "$ELAPSED" -le 1500
	if parse_summary; then
		check "idle summary" "0/0/0/0/0/0/0" \
			"$SUM_RAN/$SUM_CANCELLED/$SUM_TIMED_OUT/$SUM_DROPPED/$SUM_KILLED/$SUM_CRASHED/$SUM_ABANDONED"
	fi

	# periodic jobs at shutdown: every series ends at its start, so a 5 s
	# drain has nothing to wait for; one that ran counts in ran, one still
	# waiting for its first run in dropped
	echo "# 8d. shutdown with periodic jobs (--drain 5)"
	start_server periodic --threads 2 --queue 4 --drain 5 --grace 1 \
		--processes 0
	submit_ok "periodic at shutdown" sleep ms=10 period_ms=50
	if wait_runs "$JOB_ID" 2 10; then
		ok "periodic at shutdown: $JRUNS runs before SIGTERM"
	else
		bad "periodic at shutdown: expected 2 runs within 10 s, got $CODE $BODY"
	fi
	submit_ok "periodic waiting for its first run" sleep ms=10 \
		delay_ms=3600000 period_ms=1000
	now
	t0=$NOW
	kill -TERM "$SERVER_PID"
	wait_exit "$t0" 20
	expect "periodic server: SIGTERM to exit well within the 5 s drain" \
		"<= 1500 ms" "$ELAPSED ms" test "$ELAPSED" -le 1500
	if parse_summary; then
		check "periodic summary: ran/cancelled/timed_out/dropped/killed/crashed/abandoned" \
			1/0/0/1/0/0/0 \
			"$SUM_RAN/$SUM_CANCELLED/$SUM_TIMED_OUT/$SUM_DROPPED/$SUM_KILLED/$SUM_CRASHED/$SUM_ABANDONED"
	fi
}

# ---- 9. record lifetime: --retain, --max-records -------------------------------

# wait_completed N SECONDS: until stats.completed >= N.
wait_completed() {
	local limit
	now
	limit=$((NOW + $2 * 1000))
	while :; do
		stats
		if [[ $CODE == 200 && $S_completed -ge $1 ]]; then return 0; fi
		now
		if ((NOW >= limit)); then return 1; fi
		sleep 0.02
	done
}

# wait_not_200 ID SECONDS: polls GET /jobs/ID until the answer is not 200
# (stats count a task completed just before its done runs, and the record
# finishes in done); CODE and BODY hold the last answer.
wait_not_200() {
	local limit
	now
	limit=$((NOW + $2 * 1000))
	while :; do
		req GET "/jobs/$1"
		if [[ $CODE != 200 ]]; then return 0; fi
		now
		if ((NOW >= limit)); then return 1; fi
		sleep 0.01
	done
}

# quick_job DESC: a sleep of 0 ms, waited for until it has its status.
quick_job() {
	submit_ok "$1" sleep ms=0
	if ! wait_job "$JOB_ID" 10; then
		fatal "$1: job $JOB_ID has no status after 10 s (last: $CODE $BODY)"
	fi
}

# stop_server: SIGTERM, a clean exit (no sanitizer report), the summary
# (SUM_*); returns 1 when the summary is missing.
stop_server() {
	local t0
	now
	t0=$NOW
	kill -TERM "$SERVER_PID"
	wait_exit "$t0" 20
	parse_summary
}

step_records() {
	local id i long delayed periodic pipe ids=()
	echo "# 9a. --retain 0: a finished job's record is dropped (410)"
	start_server retain0 --threads 2 --queue 1024 --processes 0 --retain 0 \
		--http-threads 4
	submit_ok "retain 0" sleep ms=0
	id=$JOB_ID
	if wait_completed 1 10; then
		ok "retain 0: job $id completed (stats)"
	else
		bad "retain 0: job $id not completed after 10 s: $BODY"
	fi
	if wait_not_200 "$id" 10; then
		check "retain 0: GET of finished job $id" 410 "$CODE" "$BODY"
	else
		bad "retain 0: GET of finished job $id still 200 after 10 s: $BODY"
	fi
	want "retain 0: expired job" GET "/jobs/$id" 410
	want "retain 0: expired job" DELETE "/jobs/$id" 410
	want "retain 0: an id never issued" GET "/jobs/$((id + 1))" 404
	want "retain 0: an id never issued" DELETE "/jobs/$((id + 1))" 404
	want "retain 0: an id beyond every id" GET /jobs/99999999999999999999 404
	want "retain 0: an id still malformed" GET /jobs/0 400
	# an unfinished job is never dropped, whatever --retain says
	submit_ok "retain 0: long sleep" sleep "ms=$LONG_MS"
	long=$JOB_ID
	running_job "retain 0: long sleep" "$long"
	get_job "$long"
	check "retain 0: running job $long kept" "200 running" "$CODE $JSTATE" "$BODY"
	cancel_check "retain 0: running job" "$long" signalled
	if wait_not_200 "$long" 10; then
		check "retain 0: GET of job $long once cancelled" 410 "$CODE" "$BODY"
	else
		bad "retain 0: job $long still 200 10 s after its DELETE: $BODY"
	fi
	record_race
	# the race's DELETEs may prevent some of its jobs (cancelled)
	if stop_server; then
		check "retain 0 summary: ran+cancelled/timed_out/dropped/killed/crashed/abandoned" \
			"$((2 + RACE_OK))/0/0/0/0/0" \
			"$((SUM_RAN + SUM_CANCELLED))/$SUM_TIMED_OUT/$SUM_DROPPED/$SUM_KILLED/$SUM_CRASHED/$SUM_ABANDONED"
	fi

	echo "# 9b. --max-records 3 (--retain 3600.5): the oldest finished go first"
	start_server cap3 --threads 2 --queue 16 --processes 0 --retain 3600.5 \
		--max-records 3 --http-threads 1
	for ((i = 0; i < 6; i++)); do
		quick_job "cap 3: quick job $i"
		ids+=("$JOB_ID")
	done
	for ((i = 0; i < 6; i++)); do
		get_job "${ids[i]}"
		if ((i < 3)); then
			check "cap 3: job ${ids[i]} (of 6 finished) expired" 410 "$CODE" "$BODY"
		else
			check "cap 3: job ${ids[i]} (of 6 finished) kept" "200 done/0" \
				"$CODE $JSTATE/$JSTATUS" "$BODY"
		fi
	done
	cancel_check "cap 3: a finished job kept" "${ids[5]}" already_finished
	want "cap 3: DELETE of an expired job" DELETE "/jobs/${ids[0]}" 410
	want "cap 3: an id never issued" GET "/jobs/$((${ids[5]} + 1))" 404

	# running, delayed (queued) and periodic (queued between runs) jobs
	# stay while 10 quick jobs finish past the cap
	submit_ok "cap 3: long sleep" sleep "ms=$LONG_MS"
	long=$JOB_ID
	running_job "cap 3: long sleep" "$long"
	submit_ok "cap 3: delayed" sleep ms=0 "delay_ms=$LONG_MS"
	delayed=$JOB_ID
	submit_ok "cap 3: periodic" sleep ms=0 period_ms=20
	periodic=$JOB_ID
	if wait_runs "$periodic" 1 10; then
		ok "cap 3: periodic job $periodic ran"
	else
		bad "cap 3: periodic job $periodic did not run within 10 s: $CODE $BODY"
	fi
	for ((i = 0; i < 10; i++)); do
		quick_job "cap 3: quick job past the cap ($i)"
	done
	want "cap 3: the oldest of the last quick jobs" GET "/jobs/$((JOB_ID - 3))" 410
	get_job "$long"
	check "cap 3: running job $long kept" "200 running/null" \
		"$CODE $JSTATE/$JSTATUS" "$BODY"
	get_job "$delayed"
	check "cap 3: delayed job $delayed kept" "200 queued/null" \
		"$CODE $JSTATE/$JSTATUS" "$BODY"
	get_job "$periodic"
	check "cap 3: periodic job $periodic kept" "200 null" \
		"$CODE $JSTATUS" "$BODY"
	cancel_check "cap 3: running job" "$long" signalled
	finish_job "cap 3: cancelled running job" "$long" 10 done -125
	cancel_check "cap 3: delayed job" "$delayed" prevented
	finish_job "cap 3: cancelled delayed job" "$delayed" 10 cancelled -125
	cancel "$periodic"
	expect "cap 3: DELETE periodic job $periodic" "200 prevented|signalled" \
		"$CODE $ANSWER" test "$CODE" = 200 -a \( "$ANSWER" = prevented -o \
		"$ANSWER" = signalled \)
	if wait_job "$periodic" 10; then
		ok "cap 3: periodic job $periodic ended ($JSTATE/$JSTATUS)"
	else
		bad "cap 3: periodic job $periodic has no status after 10 s: $BODY"
	fi
	# now finished: the newest three, kept; then a pipeline (two done
	# callbacks) pushes the oldest out
	get_job "$long"
	check "cap 3: job $long, finished, among the newest 3" 200 "$CODE" "$BODY"
	submit_ok "cap 3: pipeline" pipeline items=100
	pipe=$JOB_ID
	finish_job "cap 3: pipeline" "$pipe" 10 done 0
	# its status is the consumer's; the record finishes with the producer's
	# done, which may come a moment later
	if wait_not_200 "$long" 10; then
		check "cap 3: job $long pushed out by the pipeline" 410 "$CODE" "$BODY"
	else
		bad "cap 3: job $long still 200 10 s after the pipeline ended: $BODY"
	fi
	get_job "$pipe"
	check "cap 3: finished pipeline $pipe kept" "200 done/0" \
		"$CODE $JSTATE/$JSTATUS" "$BODY"
	for ((i = 0; i < 3; i++)); do
		quick_job "cap 3: quick job after the pipeline ($i)"
	done
	want "cap 3: finished pipeline pushed out" GET "/jobs/$pipe" 410
	# 6 + 10 + 3 quick, the pipeline's 2 tasks, the periodic one (ran)
	# and the long sleep (ran), the delayed one cancelled
	if stop_server; then
		check "cap 3 summary: ran/cancelled/timed_out/dropped/killed/crashed/abandoned" \
			23/1/0/0/0/0/0 \
			"$SUM_RAN/$SUM_CANCELLED/$SUM_TIMED_OUT/$SUM_DROPPED/$SUM_KILLED/$SUM_CRASHED/$SUM_ABANDONED"
	fi
}

# record_race: lookups racing with expiry (run on the --retain 0 server,
# 4 HTTP threads): one curl submits RACE_N 1 ms jobs while three others GET
# and DELETE
# each id in turn (4 times, to keep pace with the POSTs), each curl over
# one connection, so records expire while handlers hold them. Every
# answer must be one the contract allows.
RACE_N=300
RACE_OK=0
record_race() {
	local first last pids=() p n=0 codes bad_codes
	first=$((JOB_ID + 1))
	last=$((JOB_ID + RACE_N))
	curl -sS --noproxy '*' --max-time 60 -o /dev/null -w '%{http_code}\n' \
		--data kind=sleep --data ms=1 "$BASE/jobs?n=[1-$RACE_N]" \
		>"$TMP/race.post" 2>"$TMP/race.err" &
	pids+=($!)
	for p in GET GET DELETE; do
		n=$((n + 1))
		curl -sS --noproxy '*' --max-time 60 -o /dev/null -w '%{http_code}\n' \
			-X "$p" "$BASE/jobs/[$first-$last]?r=[1-4]" \
			>"$TMP/race.$p.$n" 2>>"$TMP/race.err" &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || true; done
	RACE_OK=$(grep -c '^202$' "$TMP/race.post" || true)
	codes=$(cat "$TMP"/race.GET.* "$TMP"/race.DELETE.* | sort | uniq -c |
		tr -s ' \n' ' ')
	bad_codes=$(cat "$TMP/race.post" "$TMP"/race.GET.* "$TMP"/race.DELETE.* |
		grep -cvE '^(200|202|404|410|503)$' || true)
	check "race: $RACE_N POSTs (202: $RACE_OK) against 2 GET and 1 DELETE loops, answers 200/404/410 only ($codes)" \
		0 "$bad_codes"
	expect "race: most POSTs accepted" ">= $((RACE_N / 2))" "$RACE_OK" \
		test "$RACE_OK" -ge $((RACE_N / 2))
	if wait_idle 20; then
		ok "race: pool idle afterwards"
	else
		bad "race: pool not idle after 20 s: $BODY"
	fi
}

# ---- main --------------------------------------------------------------------

FETCH_CANCEL_MS="?"
SPIN_KILL_MS="?"
STOP_MS="?"
STOP_TOTAL_MS="?"
for tool in curl timeout; do
	command -v "$tool" >/dev/null || fatal "$tool not found"
done
step_options
step_start
step_basics
step_cancel
step_isolated
step_schedule
step_mixed
step_errors
step_shutdown
step_sigint
step_records
echo "fetch cancel latency: $FETCH_CANCEL_MS ms; spin DELETE to killed: $SPIN_KILL_MS ms (--kill-after $KILL_AFTER_MS ms); stop_ms: $STOP_MS; SIGTERM to exit: $STOP_TOTAL_MS ms"
summary
if ((FAIL > 0)); then exit 1; fi
exit 0
