#!/usr/bin/env bash
# Load test of examples/jobserver: many tiny jobs through ab, with the
# server's memory watched, to show whether job records come back (--retain,
# --max-records) or pile up.
#
# Usage: bench/jobserver_load.sh [--requests N] [--concurrency C]
#            [--keepalive] [JOBSERVER] [-- SERVER-OPTION...]
#
#   JOBSERVER      the binary (built by meson; this script builds nothing).
#                  Default: build-bench/examples/jobserver/jobserver, else
#                  build-plain/examples/jobserver/jobserver.
#   --requests N   ab -n (default 1000000)
#   --concurrency C  ab -c (default 32)
#   --keepalive    ab -k (HTTP/1.0 keep-alive; default: a connection per
#                  request, like the issue's measurement)
#   after --        server options, added to the defaults
#                  --threads 2 --queue 4096 --processes 0 (later ones win:
#                  e.g. -- --retain 1 --max-records 100000 --http-threads 2)
#
# It starts the server on an ephemeral port (--listen 127.0.0.1:0), runs
#   ab -r -n N -c C -p BODY -T application/x-www-form-urlencoded URL/jobs
# with BODY "kind=sleep&ms=0", samples VmRSS of the server from
# /proc/PID/status once a second, then stops the server with SIGTERM and
# prints: requests/s, p50/p99 latency (ab's percentile table), non-2xx
# answers (503 "queue full" is expected when the pool falls behind: use a
# big --queue), RSS at start, max and end, and RSS growth per 100k
# requests over the whole run and over its second half (RSS samples are
# by time: the second half assumes a steady rate). Needs ab
# (apache2-utils; installed through scripts/deps.sh when missing).
set -euo pipefail

cd "$(dirname "$0")/.."

requests=1000000
concurrency=32
keepalive=()
server=""
server_opts=(--threads 2 --queue 4096 --processes 0)
while (($#)); do
	case $1 in
	--requests) requests=${2:?--requests needs a value}; shift 2 ;;
	--concurrency) concurrency=${2:?--concurrency needs a value}; shift 2 ;;
	--keepalive) keepalive=(-k); shift ;;
	--) shift; server_opts+=("$@"); break ;;
	-h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) echo "jobserver_load: unknown option $1" >&2; exit 2 ;;
	*) server=$1; shift ;;
	esac
done
if [[ ! $requests =~ ^[1-9][0-9]*$ || ! $concurrency =~ ^[1-9][0-9]*$ ]]; then
	echo "jobserver_load: --requests and --concurrency are positive integers" >&2
	exit 2
fi
if [[ -z $server ]]; then
	for b in build-bench build-plain; do
		if [[ -x $b/examples/jobserver/jobserver ]]; then
			server=$b/examples/jobserver/jobserver
			break
		fi
	done
fi
if [[ -z $server || ! -x $server ]]; then
	echo "jobserver_load: no jobserver binary (give its path, e.g. build-plain/examples/jobserver/jobserver after ninja -C build-plain)" >&2
	exit 2
fi
command -v ab >/dev/null || scripts/deps.sh apache2-utils
command -v ab >/dev/null || { echo "jobserver_load: ab not found" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/jobserver_load.XXXXXX")
server_pid=""
sampler_pid=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
	if [[ -n $sampler_pid ]]; then kill "$sampler_pid" 2>/dev/null || true; fi
	if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$server_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$server_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

cmd=("$server" --listen 127.0.0.1:0 "${server_opts[@]}")
echo "server: ${cmd[*]}"
"${cmd[@]}" >"$tmp/server.out" 2>"$tmp/server.err" </dev/null &
server_pid=$!
port=""
for _ in $(seq 200); do
	port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$tmp/server.out")
	[[ -n $port ]] && break
	kill -0 "$server_pid" 2>/dev/null || break
	sleep 0.05
done
if [[ -z $port ]]; then
	echo "jobserver_load: the server did not start:" >&2
	cat "$tmp/server.err" >&2
	exit 1
fi

printf 'kind=sleep&ms=0' >"$tmp/body"
ab_cmd=(ab -r "${keepalive[@]}" -n "$requests" -c "$concurrency" -p "$tmp/body"
	-T application/x-www-form-urlencoded "http://127.0.0.1:$port/jobs")
echo "load:   ${ab_cmd[*]}   (body: kind=sleep&ms=0)"

rss_start=$(rss_kb "$server_pid")
# one sample a second: "seconds rss_kb"
(
	t=0
	while kill -0 "$server_pid" 2>/dev/null; do
		echo "$t $(rss_kb "$server_pid")"
		sleep 1
		t=$((t + 1))
	done
) >"$tmp/rss" &
sampler_pid=$!

t0=$(date +%s.%N)
rc=0
"${ab_cmd[@]}" >"$tmp/ab.out" 2>"$tmp/ab.err" || rc=$?
t1=$(date +%s.%N)
rss_end=$(rss_kb "$server_pid")
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", b - a }') $rss_end" >>"$tmp/rss"

kill -TERM "$server_pid"
src=0
wait "$server_pid" || src=$?
server_pid=""
if ((rc != 0)); then
	echo "jobserver_load: ab failed (exit $rc):" >&2
	tail -n 5 "$tmp/ab.err" >&2
	exit 1
fi

ab_field() { sed -n "s/^$1:[[:space:]]*//p" "$tmp/ab.out" | head -n 1; }
pct() { awk -v p="$1%" '$1 == p { print $2 }' "$tmp/ab.out"; }
rps=$(ab_field 'Requests per second' | awk '{ print $1 }')
complete=$(ab_field 'Complete requests')
failed=$(ab_field 'Failed requests')
failed_kinds=$(sed -n 's/^[[:space:]]*(Connect: \([0-9]*\), Receive: \([0-9]*\), Length: [0-9]*, Exceptions: \([0-9]*\))/connect \1, receive \2, exceptions \3/p' "$tmp/ab.out")
non2xx=$(ab_field 'Non-2xx responses')
elapsed=$(ab_field 'Time taken for tests' | awk '{ print $1 }')

echo
echo "requests:        $complete of $requests in ${elapsed:-?} s, concurrency $concurrency"
echo "requests/s:      $rps"
echo "latency:         p50 $(pct 50) ms, p99 $(pct 99) ms (ab: connect to last byte)"
echo "non-2xx:         ${non2xx:-0} (503 when the queue is full)"
# ids grow in length ({"id":9}, {"id":10}): ab counts those as "Length"
# failures, which are not failures
echo "failed:          ${failed_kinds:-none} (ab's $failed 'failed' include Length: ids grow in length)"
awk -v n="$requests" -v s="$rss_start" -v e="$rss_end" '
	{ t[NR] = $1; r[NR] = $2; if ($2 > max) max = $2 }
	END {
		mid = r[1]
		for (i = 1; i <= NR; i++) if (t[i] <= t[NR] / 2) mid = r[i]
		printf "RSS:             start %.1f MB, max %.1f MB, end %.1f MB (%d samples)\n",
		       s / 1024, max / 1024, e / 1024, NR
		printf "RSS growth:      %.1f KB per 100k requests over the run, %.1f KB per 100k over its second half\n",
		       (e - s) * 100000 / n, (e - mid) * 100000 / (n / 2)
		step = NR > 20 ? int((NR + 19) / 20) : 1
		line = "RSS timeline:   "
		for (i = 1; i <= NR; i += step)
			line = line sprintf(" %ds:%.1f", t[i], r[i] / 1024)
		if ((NR - 1) % step != 0)
			line = line sprintf(" %ds:%.1f", t[NR], r[NR] / 1024)
		print line " (MB)"
	}' "$tmp/rss"
echo "server:          $(tail -n 1 "$tmp/server.out") (exit $src)"
if [[ -s $tmp/server.err ]]; then
	echo "server stderr (tail):"
	tail -n 5 "$tmp/server.err"
fi
