#!/usr/bin/env bash
# End-to-end test of the jobserver's Redis mode (examples/jobserver/SPEC.md,
# "Redis mode"), driven by curl over loopback.
#
# Usage: jobserver_redis_e2e.sh PATH/TO/jobserver PATH/TO/reaper
#
# It starts a redis-server of its own on a free loopback port
# (tests/redis/redis_lib.sh) and three job servers, nodes a, b and c of one
# cluster, each with one worker thread and one worker process, each the
# child of `reaper` (a subreaper that reports any process a server left
# when it exited). Then: bad Redis options exit 2 (1 when Redis cannot be
# reached, with no listening line); a job submitted on a runs and b shows it; six 300 ms jobs
# submitted on a run on at least two nodes; a DELETE on c stops a running
# 60 s sleep wherever it runs (signalled, done/-125 within 5 s), prevents a
# delayed one, and kills a spin job's process; timeouts, idempotency keys,
# 400s of what Redis mode refuses, 404 of an unknown id; SIGTERM of the
# node that runs a 3 s sleep: it exits promptly and another node runs the
# job to its end (attempts 2); Redis stopped: 503 with a JSON error, and
# the nodes still stop cleanly. Every curl call has --max-time, every wait
# a bound, and the EXIT trap stops whatever the script started. It ends
# with "e2e redis: N passed, M failed" and exits 1 if any check failed;
# 77 (meson: skipped) when redis-server is not installed.
#
# JSON is parsed with bash regexes (objects are flat), so jq is not needed.
set -euo pipefail

SERVER=${1:?usage: jobserver_redis_e2e.sh JOBSERVER REAPER}
REAPER=${2:?usage: jobserver_redis_e2e.sh JOBSERVER REAPER}
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../redis/redis_lib.sh
. "$HERE/../redis/redis_lib.sh"

for tool in redis-server redis-cli python3; do
	if ! command -v "$tool" >/dev/null; then
		echo "jobserver_redis_e2e: $tool is not installed (scripts/deps.sh installs it): skipped"
		exit 77
	fi
done

NODES=(a b c)
NODE_OPTS=(--threads 1 --processes 1 --kill-after 0.3 --drain 0.2
	--claim-after 5 --http-threads 2)
CURL_MAX=5               # --max-time of every curl transfer
LONG_MS=60000            # a sleep that outlives the test unless cancelled

TMP=$(mktemp -d "${TMPDIR:-/tmp}/jobserver_redis_e2e.XXXXXX")
declare -A PID=() REAPER_PID=() BASE=()
PASS=0
FAIL=0

# ---- process handling ------------------------------------------------------

alive() { kill -0 "$1" 2>/dev/null; }

# Stops every node still running (SIGTERM, up to 10 s, then SIGKILL) and
# Redis, by the pids this script started.
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
	local n i
	for n in "${!PID[@]}"; do
		kill -TERM "${PID[$n]}" 2>/dev/null || true
	done
	for n in "${!PID[@]}"; do
		for ((i = 0; i < 1000; i++)); do
			alive "${PID[$n]}" || break
			sleep 0.01
		done
		kill -KILL "${PID[$n]}" 2>/dev/null || true
		wait "${REAPER_PID[$n]}" 2>/dev/null || true
	done
	redis_stop KILL
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { NOW=$((${EPOCHREALTIME//[!0-9]/} / 1000)); }    # ms, into NOW

# ---- checks ----------------------------------------------------------------

ok() {
	PASS=$((PASS + 1))
	echo "ok   $1"
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
summary() { echo "e2e redis: $PASS passed, $FAIL failed"; }
fatal() {
	local n
	bad "$1"
	for n in "${NODES[@]}"; do
		if [[ -s $TMP/$n.err ]]; then
			echo "--- node $n stderr (tail) ---"
			tail -n 20 "$TMP/$n.err"
		fi
	done
	summary
	exit 1
}

# ---- JSON and HTTP ---------------------------------------------------------

# jget BODY NAME: the value of a flat JSON field into JV (strings unquoted,
# "null" for null), empty when absent.
jget() {
	local re="\"$2\"[[:space:]]*:[[:space:]]*(\"[^\"]*\"|[^,}[:space:]]+)"
	JV=""
	if [[ $1 =~ $re ]]; then
		JV=${BASH_REMATCH[1]}
		JV=${JV#\"}
		JV=${JV%\"}
	fi
}

# req NODE METHOD PATH [curl args...]: one request to NODE; sets CODE (000
# when no answer) and BODY.
req() {
	local node=$1 method=$2 path=$3
	shift 3
	rm -f "$TMP/body"
	CODE=$(curl -sS -g --noproxy '*' --max-time "$CURL_MAX" -X "$method" \
		-o "$TMP/body" -w '%{http_code}' "$@" "${BASE[$node]}$path" \
		2>"$TMP/curl.err") || true
	[[ -n $CODE ]] || CODE=000
	BODY=""
	if [[ -f $TMP/body ]]; then BODY=$(<"$TMP/body"); fi
}

# submit NODE FIELD=VALUE...: POST /jobs; JOB_ID is set on 202 (else empty).
submit() {
	local node=$1 kv args=()
	shift
	for kv in "$@"; do args+=(--data "$kv"); done
	req "$node" POST /jobs "${args[@]}"
	JOB_ID=""
	if [[ $CODE == 202 ]]; then
		jget "$BODY" id
		JOB_ID=$JV
	fi
}

# submit_ok DESC NODE FIELD=VALUE...: a submit that must be accepted with
# a library id (24 hex digits).
submit_ok() {
	local desc=$1
	shift
	submit "$@"
	if [[ $CODE == 202 && $JOB_ID =~ ^[0-9a-f]{24}$ ]]; then return 0; fi
	fatal "$desc: POST on $1 ${*:2}: expected 202 {\"id\":\"<24 hex>\"}, got $CODE $BODY"
}

# get_job NODE ID: GET /jobs/ID into BODY; JSTATE, JSTATUS, JATTEMPTS,
# JNODE, JOUTPUT from it.
get_job() {
	req "$1" GET "/jobs/$2"
	jget "$BODY" state
	JSTATE=$JV
	jget "$BODY" status
	JSTATUS=$JV
	jget "$BODY" attempts
	JATTEMPTS=$JV
	jget "$BODY" node
	JNODE=$JV
	jget "$BODY" output
	JOUTPUT=$JV
}

# wait_job NODE ID SECONDS: polls every 10 ms until the status is not null.
wait_job() {
	local limit
	now
	limit=$((NOW + $3 * 1000))
	while :; do
		get_job "$1" "$2"
		if [[ $CODE == 200 && -n $JSTATUS && $JSTATUS != null ]]; then
			return 0
		fi
		now
		if ((NOW >= limit)); then return 1; fi
		sleep 0.01
	done
}

# finish_job DESC NODE ID SECONDS STATE STATUS: waits for the end (read on
# NODE) and checks it; ENDED is 1 when the job has a status, else 0.
finish_job() {
	ENDED=0
	if ! wait_job "$2" "$3" "$4"; then
		bad "$1: job $3 has no status after $4 s (last: $CODE $BODY)"
		return 0
	fi
	ENDED=1
	check "$1: job $3 state/status" "$5/$6" "$JSTATE/$JSTATUS" "$BODY"
}

# running_job DESC NODE ID: waits (5 s) until the job runs; RUNNER is its
# node.
running_job() {
	local limit
	now
	limit=$((NOW + 5000))
	while :; do
		get_job "$2" "$3"
		if [[ $CODE == 200 && $JSTATE == running ]]; then break; fi
		now
		if ((NOW >= limit)); then
			fatal "$1: job $3 expected running within 5 s, got $CODE $BODY"
		fi
		sleep 0.01
	done
	RUNNER=$JNODE
	if [[ -n ${BASE[$RUNNER]:-} ]]; then
		ok "$1: job $3 running on node $RUNNER"
	else
		fatal "$1: job $3 runs on an unknown node '$RUNNER': $BODY"
	fi
}

# cancel_check DESC NODE ID ANSWER: DELETE /jobs/ID on NODE.
cancel_check() {
	req "$2" DELETE "/jobs/$3"
	jget "$BODY" cancel
	local answer=$JV
	jget "$BODY" id
	check "$1: DELETE job $3 on node $2" "200 $4 id=$3" "$CODE $answer id=$JV" \
		"$BODY"
}

# want DESC NODE METHOD PATH CODE [curl args...]: one request whose code
# must be CODE, with a JSON error body when CODE is not 2xx.
want() {
	local desc=$1 node=$2 method=$3 path=$4 code=$5
	shift 5
	req "$node" "$method" "$path" "$@"
	if [[ $code != 2* ]]; then
		jget "$BODY" error
		if [[ -z $JV ]]; then
			bad "$desc: $method $path on $node: expected a JSON error, got '$BODY'"
		fi
	fi
	check "$desc: $method $path on $node" "$code" "$CODE" "$BODY"
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

# start_node NAME: a server on an ephemeral port, node NAME of the cluster,
# as the child of a reaper. ASan builds start slowly: 10 s for the
# listening line.
start_node() {
	local name=$1 port
	"$REAPER" "$TMP/$name.pid" "$TMP/$name.reap" "$SERVER" \
		--listen 127.0.0.1:0 --redis "$REDIS_URL" --node "$name" \
		"${NODE_OPTS[@]}" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
	REAPER_PID[$name]=$!
	if ! wait_line "$TMP/$name.out" '^listening on 127\.0\.0\.1:[0-9]+$' 10 \
		"${REAPER_PID[$name]}"; then
		if [[ -s $TMP/$name.pid ]]; then PID[$name]=$(<"$TMP/$name.pid"); fi
		fatal "node $name: no listening line within 10 s: $(cat "$TMP/$name.out" "$TMP/$name.err")"
	fi
	PID[$name]=$(<"$TMP/$name.pid")
	port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/$name.out")
	BASE[$name]="http://127.0.0.1:$port"
	echo "     node $name (pid ${PID[$name]}) at ${BASE[$name]}"
}

# stop_node NAME SECONDS: SIGTERM, then waits (bounded) for the exit; sets
# ELAPSED (ms). Checks the exit code, the reaper's report, the summary
# line (SUM_STOP_MS) and the absence of sanitizer reports.
stop_node() {
	local name=$1 t0 limit rc=0 line reports
	local re='^summary: ran=[0-9]+ cancelled=[0-9]+ timed_out=[0-9]+ dropped=[0-9]+ killed=[0-9]+ crashed=[0-9]+ abandoned=0 stop_ms=([0-9]+)$'
	now
	t0=$NOW
	limit=$((t0 + $2 * 1000))
	kill -TERM "${PID[$name]}"
	while alive "${PID[$name]}"; do
		now
		if ((NOW >= limit)); then
			fatal "node $name still running $2 s after SIGTERM"
		fi
		sleep 0.01
	done
	now
	ELAPSED=$((NOW - t0))
	wait "${REAPER_PID[$name]}" || rc=$?
	unset "PID[$name]"
	check "node $name: exit code after SIGTERM" 0 "$rc"
	check "node $name left no process, alive or zombie (reaper)" \
		"exit=0 left_alive=0 left_zombies=0" "$(cat "$TMP/$name.reap" 2>/dev/null)"
	line=$(tail -n 1 "$TMP/$name.out")
	SUM_STOP_MS=""
	if [[ $line =~ $re ]]; then
		ok "node $name: summary line: $line"
		SUM_STOP_MS=${BASH_REMATCH[1]}
	else
		bad "node $name: summary line: got '$line'"
	fi
	reports=$(grep -E 'runtime error:|Sanitizer' "$TMP/$name.err" | head -n 5) || true
	check "node $name: no sanitizer report on stderr" "" "$reports"
}

# ---- 1b. options -------------------------------------------------------------

step_options() {
	local opt rc closed
	echo "# 1b. Redis options"
	for opt in "--node a" "--claim-after 1" \
		"--redis REDIS --node a.b/c" "--redis REDIS --node ''" \
		"--redis REDIS --node 0123456789012345678901234567890123456789012345678901234567890123" \
		"--redis REDIS --claim-after 0" "--redis REDIS --claim-after 0.009" \
		"--redis REDIS --claim-after x" "--redis REDIS --claim-after 1000001" \
		"--redis http://127.0.0.1:1" "--redis redis://127.0.0.1:99999"; do
		rc=0
		# shellcheck disable=SC2086  # opt is split on purpose
		eval timeout -k 1 10 '"$SERVER"' --listen 127.0.0.1:0 \
			${opt//REDIS/\"\$REDIS_URL\"} >"$TMP/opt.out" 2>"$TMP/opt.err" \
			</dev/null || rc=$?
		check "option '$opt': exit code" 2 "$rc"
		if [[ -s $TMP/opt.err ]]; then
			ok "option '$opt': message on stderr"
		else
			bad "option '$opt': no message on stderr"
		fi
	done
	# nobody listens there: the server cannot start (exit 1, a message)
	closed=$(redis_free_port)
	rc=0
	timeout -k 1 20 "$SERVER" --listen 127.0.0.1:0 \
		--redis "redis://127.0.0.1:$closed" >"$TMP/opt.out" \
		2>"$TMP/opt.err" </dev/null || rc=$?
	check "Redis unreachable at the start: exit code" 1 "$rc" \
		"$(cat "$TMP/opt.err")"
	check "Redis unreachable at the start: no listening line" "" \
		"$(cat "$TMP/opt.out")"
}

# ---- 1. start ----------------------------------------------------------------

step_start() {
	local n
	echo "# 1. start: redis-server and nodes ${NODES[*]}"
	mkdir -p "$TMP/redis"
	redis_start "$TMP/redis" || fatal "redis-server did not start"
	echo "     redis-server (pid $REDIS_PID) at $REDIS_URL"
	for n in "${NODES[@]}"; do start_node "$n"; done
}

# ---- 2. basics -----------------------------------------------------------------

step_basics() {
	local id closed
	echo "# 2. basic jobs: submitted on one node, seen on another"
	submit_ok "sleep" a kind=sleep ms=50
	id=$JOB_ID
	finish_job "sleep 50 ms submitted on a, read on b" b "$id" 10 "done" 0
	check "sleep job: attempts" 1 "$JATTEMPTS" "$BODY"
	if [[ -n ${BASE[$JNODE]:-} ]]; then
		ok "sleep job: node '$JNODE' is one of a, b, c"
	else
		bad "sleep job: node: expected a, b or c, got '$JNODE' [$BODY]"
	fi
	check "sleep job: output" null "$JOUTPUT" "$BODY"
	jget "$BODY" id
	check "sleep job: id" "$id" "$JV" "$BODY"
	get_job c "$id"
	check "the same record on node c" "200 done/0" "$CODE $JSTATE/$JSTATUS" \
		"$BODY"
	cancel_check "finished sleep" c "$id" already_finished
	get_job a "$id"
	check "finished sleep unchanged by DELETE" done/0 "$JSTATE/$JSTATUS" "$BODY"

	submit_ok "cpu" b kind=cpu iterations=1000000
	finish_job "cpu 10^6" c "$JOB_ID" 10 "done" 0

	closed=$(redis_free_port)
	submit_ok "fetch" c kind=fetch host=127.0.0.1 "port=$closed"
	finish_job "fetch to a closed port: -ECONNREFUSED" a "$JOB_ID" 10 "done" -111

	spin_output

	submit_ok "priority normal is accepted" a kind=sleep ms=1 priority=normal
	finish_job "priority normal" a "$JOB_ID" 10 "done" 0
	submit_ok "period_ms 0 is accepted" a kind=sleep ms=1 period_ms=0
	finish_job "period_ms 0" a "$JOB_ID" 10 "done" 0
}

# spin_output: spin jobs (20 ms) end done/0 with output "pid=P", every one
# (an isolated job's output is read once its done has returned).
spin_output() {
	local i
	for ((i = 0; i < 5; i++)); do
		submit_ok "spin" a kind=spin ms=20
		finish_job "spin 20 ms" b "$JOB_ID" 10 "done" 0
		if [[ $JOUTPUT =~ ^pid=[1-9][0-9]*$ ]]; then
			ok "spin job $i: output $JOUTPUT"
		else
			bad "spin job $i: output: expected pid=P, got '$JOUTPUT' [$BODY]"
		fi
	done
}

# ---- 3. spread -------------------------------------------------------------------

step_spread() {
	local ids=() id i runners=() distinct
	echo "# 3. six 300 ms jobs on node a (one worker per node): others take some"
	for ((i = 0; i < 6; i++)); do
		submit_ok "spread job $i" a kind=sleep ms=300
		ids+=("$JOB_ID")
	done
	for id in "${ids[@]}"; do
		finish_job "spread" b "$id" 15 "done" 0
		if ((ENDED)); then runners+=("$JNODE"); fi
	done
	distinct=$(printf '%s\n' "${runners[@]}" | sort -u | tr '\n' ' ')
	if (($(printf '%s\n' "${runners[@]}" | sort -u | wc -l) >= 2)); then
		ok "spread: the six jobs ran on nodes: $distinct(${runners[*]})"
	else
		bad "spread: expected at least two distinct nodes, got: ${runners[*]}"
	fi
}

# ---- 4. cancellation --------------------------------------------------------------

step_cancel() {
	local id t0 del
	echo "# 4. DELETE on any node"
	submit_ok "long sleep" a kind=sleep "ms=$LONG_MS"
	id=$JOB_ID
	running_job "long sleep" b "$id"
	# c, or a when c runs it: the cancel always crosses nodes
	del=c
	if [[ $RUNNER == c ]]; then del=a; fi
	now
	t0=$NOW
	cancel_check "running sleep (on node $RUNNER)" "$del" "$id" signalled
	finish_job "cancelled running sleep" b "$id" 5 "done" -125
	now
	echo "     DELETE on $del to done/-125 read on b: $((NOW - t0)) ms (ran on $RUNNER)"
	cancel_check "cancelled sleep, again" b "$id" already_finished

	submit_ok "delayed sleep" b kind=sleep ms=10 "delay_ms=$LONG_MS"
	id=$JOB_ID
	get_job a "$id"
	check "delayed sleep: queued, not started" \
		"200 queued/null attempts=0 node=null" \
		"$CODE $JSTATE/$JSTATUS attempts=$JATTEMPTS node=$JNODE" "$BODY"
	cancel_check "delayed sleep" c "$id" prevented
	get_job a "$id"
	check "prevented delayed sleep" "cancelled/-125 attempts=0" \
		"$JSTATE/$JSTATUS attempts=$JATTEMPTS" "$BODY"

	submit_ok "long spin" a kind=spin ms=3600000
	id=$JOB_ID
	running_job "long spin" c "$id"
	cancel_check "running spin (on node $RUNNER)" b "$id" signalled
	# its process is killed --kill-after (0.3 s) later
	finish_job "cancelled spin" a "$id" 5 "done" -125

	submit_ok "sleep with a timeout" c kind=sleep "ms=$LONG_MS" timeout_ms=300
	finish_job "timeout_ms 300 while running" a "$JOB_ID" 5 "done" -110
	submit_ok "delayed past its timeout" c kind=sleep ms=10 delay_ms=500 \
		timeout_ms=200
	finish_job "timeout_ms before delay_ms" b "$JOB_ID" 5 cancelled -110
	check "delayed past its timeout: never ran" 0 "$JATTEMPTS" "$BODY"
}

# ---- 5. idempotency keys ---------------------------------------------------------

step_keys() {
	local first
	echo "# 5. key: a second submit with the same key returns the first id"
	submit_ok "key k-$$ on a" a kind=sleep ms=10 "key=k-$$"
	first=$JOB_ID
	submit_ok "key k-$$ on b" b kind=sleep ms=20 "key=k-$$"
	check "same key, same id" "$first" "$JOB_ID"
	finish_job "keyed job" c "$first" 10 "done" 0
	submit_ok "key k-$$ once finished" c kind=sleep ms=10 "key=k-$$"
	check "same key after the end, same id (record kept --retain)" \
		"$first" "$JOB_ID"
	submit_ok "another key" a kind=sleep ms=10 "key=other-$$"
	if [[ $JOB_ID != "$first" ]]; then
		ok "another key, another id"
	else
		bad "another key: got the first job's id $first"
	fi
}

# ---- 6. errors ------------------------------------------------------------------

step_errors() {
	echo "# 6. what Redis mode refuses, unknown ids"
	want "period_ms" a POST /jobs 400 --data kind=sleep --data ms=10 \
		--data period_ms=1000
	want "pipeline" b POST /jobs 400 --data kind=pipeline --data items=10
	want "bad kind" c POST /jobs 400 --data kind=bogus --data ms=10
	want "priority high" a POST /jobs 400 --data kind=sleep --data ms=10 \
		--data priority=high
	want "priority low" a POST /jobs 400 --data kind=sleep --data ms=10 \
		--data priority=-1
	want "negative ms" b POST /jobs 400 --data kind=sleep --data ms=-1
	want "missing ms" b POST /jobs 400 --data kind=sleep
	want "empty key" c POST /jobs 400 --data kind=sleep --data ms=1 --data key=
	want "key of 257 bytes" c POST /jobs 400 --data kind=sleep --data ms=1 \
		--data "key=$(printf 'k%.0s' {1..257})"
	want "unknown parameter" a POST /jobs 400 --data kind=sleep --data ms=1 \
		--data zzz=1
	want "unknown id" a GET /jobs/0123456789abcdef01234567 404
	want "unknown id" b DELETE /jobs/0123456789abcdef01234567 404
	want "short unknown id" c GET /jobs/abc 404
	want "id with a bad character" a GET /jobs/abc%21 400
	want "id too long" a GET "/jobs/$(printf 'a%.0s' {1..32})" 400
	want "wrong method" b PUT /jobs/0123456789abcdef01234567 405
	want "unknown path" c GET /nothing 404
	want "stats" a GET /stats 200
	jget "$BODY" threads
	check "stats: the local pool's threads" 1 "$JV" "$BODY"
}

# ---- 7. a node stops while it runs a job ----------------------------------------

step_handover() {
	local id runner other n
	echo "# 7. SIGTERM of the node that runs a job: another node finishes it"
	submit_ok "3 s sleep" a kind=sleep ms=3000
	id=$JOB_ID
	running_job "3 s sleep" b "$id"
	runner=$RUNNER
	check "3 s sleep: first attempt" 1 "$JATTEMPTS" "$BODY"
	stop_node "$runner" 10
	if ((ELAPSED <= 3000)); then
		ok "node $runner exited $ELAPSED ms after SIGTERM (--drain 0.2)"
	else
		bad "node $runner took $ELAPSED ms to exit (--drain 0.2)"
	fi
	if [[ -n $SUM_STOP_MS ]] && ((SUM_STOP_MS < 2000)); then
		ok "node $runner: stop_ms $SUM_STOP_MS"
	else
		bad "node $runner: stop_ms '$SUM_STOP_MS', expected under 2000"
	fi
	other=""
	for n in "${NODES[@]}"; do
		if [[ -n ${PID[$n]:-} ]]; then other=$n; fi
	done
	finish_job "handed-back sleep" "$other" "$id" 20 "done" 0
	if ((ENDED)); then
		check "handed-back sleep: attempts" 2 "$JATTEMPTS" "$BODY"
		if [[ $JNODE != "$runner" && -n ${PID[$JNODE]:-} ]]; then
			ok "handed-back sleep: finished on node $JNODE"
		else
			bad "handed-back sleep: node '$JNODE' (stopped node: $runner) [$BODY]"
		fi
	fi
}

# ---- 8. Redis goes away ----------------------------------------------------------

step_redis_down() {
	local n
	echo "# 8. Redis stopped: 503 with a JSON error; the nodes still stop"
	redis_stop TERM
	for n in "${NODES[@]}"; do
		[[ -n ${PID[$n]:-} ]] || continue
		want "Redis down: submit" "$n" POST /jobs 503 --data kind=sleep \
			--data ms=1
		want "Redis down: status" "$n" GET /jobs/0123456789abcdef01234567 503
		want "Redis down: cancel" "$n" DELETE /jobs/0123456789abcdef01234567 503
		want "Redis down: stats" "$n" GET /stats 200
		want "Redis down: still a 400" "$n" POST /jobs 400 --data kind=pipeline \
			--data items=1
	done
	for n in "${NODES[@]}"; do
		[[ -n ${PID[$n]:-} ]] || continue
		stop_node "$n" 15
		echo "     node $n: SIGTERM to exit $ELAPSED ms with Redis down"
	done
}

# ---- main ------------------------------------------------------------------------

for tool in curl timeout; do
	command -v "$tool" >/dev/null || fatal "$tool not found"
done
step_start
step_options
step_basics
step_spread
step_cancel
step_keys
step_errors
step_handover
step_redis_down
summary
if ((FAIL > 0)); then exit 1; fi
exit 0
