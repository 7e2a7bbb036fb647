#!/usr/bin/env bash
# Compares libctpool-redis side by side with RQ and Celery, the job queues a
# user would pick instead, on one redis-server of its own: installs what is
# missing (scripts/deps.sh), builds cluster_bench (release), starts
# redis-server on a free loopback port in a temp dir (tests/redis/
# redis_lib.sh), runs every scenario for every peer, and writes the report.
#
# Usage: bench/cluster.sh [--quick] [--reps R] [--builddir DIR]
#   --quick   tiny sizes, one rep (a smoke test, well under a minute); every
#             job is still counted; results go to bench/results/quick/
#   --reps R  repetitions of every run (default 3)
#   --builddir DIR  build and run there (default build-cluster)
#
# Peers: ctpool-redis (bench/cluster_bench.c: node processes with a
# ctp_pool of 2 threads each), RQ and Celery (bench/cluster_peers.py, run by
# Debian's /usr/bin/python3: python3-rq, python3-celery, python3-redis), and
# the floor (cluster_bench --floor: the bare Redis trip under a figure).
# Every run is one process that starts its own nodes or workers; for rep in
# 1..R, for each scenario config, the peers run one after another in an
# order rotated by rep, with FLUSHALL before each run. Outputs in
# bench/results/ (bench/results/quick/ with --quick):
#   cluster-raw.txt     every line the runs printed
#   cluster-stderr.txt  what they printed on stderr
#   cluster.md          median [min-max] per figure per peer
# Exits non-zero (after the report) if a run of ctpool-redis or the floor
# failed or printed an error, or the report failed. A run of RQ or Celery
# that fails is listed on stderr and in cluster.md (its cells show —) but
# does not change the exit status: it is a fact about that peer, not a
# defect here (Celery's revoke(terminate=True) can miss a task its worker
# has not yet recorded as active, and the job then runs on: seen once in
# CI), and a smoke test that fails on it would block every landing.
set -euo pipefail
cd "$(dirname "$0")/.."

command_line="$0${*:+ $*}"
reps=3
quick=0
builddir=build-cluster
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
	case $1 in
	--quick) quick=1 ;;
	--reps)
		[[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || { usage >&2; exit 2; }
		reps=$2
		shift
		;;
	--builddir)
		[[ $# -ge 2 && -n $2 ]] || { usage >&2; exit 2; }
		builddir=$2
		shift
		;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

# ---- dependencies --------------------------------------------------------
scripts/deps.sh python3-rq python3-celery python3-redis
# Debian's python3, which has the packages above (a `python3` earlier on
# PATH, e.g. pyenv's, may not)
python=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1 # no bench/__pycache__ from the RQ workers

# ---- build -----------------------------------------------------------------
setup=(--buildtype=release -Db_sanitize=none -Dtests=disabled -Dexamples=disabled
	-Dredis=enabled)
if [[ -f $builddir/build.ninja ]]; then
	meson setup --reconfigure "$builddir" "${setup[@]}" >"$builddir/setup.log"
else
	mkdir -p "$builddir"
	meson setup "$builddir" "${setup[@]}" >/tmp/ctpool-cluster-setup.$$.log ||
		{ cat /tmp/ctpool-cluster-setup.$$.log; exit 1; }
	mv /tmp/ctpool-cluster-setup.$$.log "$builddir/setup.log"
fi
ninja -C "$builddir" bench/cluster_bench >/dev/null
exe=$builddir/bench/cluster_bench

# ---- redis-server of our own -------------------------------------------------
# shellcheck source=../tests/redis/redis_lib.sh
. tests/redis/redis_lib.sh
rdir=$(mktemp -d)
unset REDIS_PORT
trap 'redis_stop; rm -rf "$rdir"' EXIT
redis_start "$rdir"
url=$REDIS_URL
redis_version=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')

# ---- sizes -------------------------------------------------------------------
if ((quick)); then
	out=bench/results/quick
	reps=1
	jobs=300 samples=30 cancels=10 recovers=2
else
	out=bench/results
	jobs=5000 samples=500 cancels=200 recovers=5
fi
claim_ms=1000
sizes="throughput: $jobs jobs per run; submit-to-start: $samples samples per run; cancel: $cancels per run; recovery: $recovers SIGKILLs per run, claim_after $claim_ms ms; first min(n/10, 20) latency samples of a run are warm-up, not counted"
mkdir -p "$out"
raw=$out/cluster-raw.txt errlog=$out/cluster-stderr.txt md=$out/cluster.md
: >"$raw"
: >"$errlog"

# scenario configs: "label|peers|arguments" (peers: which run it)
all="ctpool-redis RQ Celery"
configs=(
	"throughput 1 node|$all|throughput --nodes 1 --jobs $jobs"
	"throughput 3 nodes|$all|throughput --nodes 3 --jobs $jobs"
	"start 3 nodes|$all floor|start --nodes 3 --samples $samples"
	"cancel 3 nodes|$all floor|cancel --nodes 3 --samples $cancels"
	"recover 3 nodes|$all|recover --nodes 3 --samples $recovers --claim-after-ms $claim_ms"
)

failures=() peer_failures=()
run_cmd() { # peer, command...
	local peer=$1 rc=0 text why
	shift
	redis-cli -p "$REDIS_PORT" flushall >/dev/null
	echo "== $*" >>"$errlog"
	text=$(timeout 600 "$@" 2>>"$errlog") || rc=$?
	[[ -n $text ]] && printf '%s\n' "$text" >>"$raw"
	if ((rc != 0)) || [[ -z $text ]] || grep -q ' error=' <<<"$text"; then
		why=$(grep -o 'error=.*' <<<"$text" | head -n 1 || true)
		((rc == 124)) && why="timed out after 600 s${why:+; $why}"
		[[ -z $text && -z $why ]] && why="no output"
		case $peer in
		ctpool-redis | floor) failures+=("$* (exit $rc)${why:+: $why}") ;;
		*) peer_failures+=("$* (exit $rc)${why:+: $why}") ;;
		esac
		printf ' [%s FAILED]' "$peer" >&2
	fi
}
run_peer() { # peer, arguments...
	local peer=$1
	shift
	case $peer in
	ctpool-redis) run_cmd "$peer" "$exe" "$@" --url "$url" ;;
	floor) run_cmd "$peer" "$exe" --floor "$@" --url "$url" ;;
	*) run_cmd "$peer" "$python" bench/cluster_peers.py --peer "$peer" "$@" \
		--url "$url" ;;
	esac
}

start=$SECONDS
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((rep = 1; rep <= reps; rep++)); do
	for c in "${configs[@]}"; do
		label=${c%%|*}
		rest=${c#*|}
		read -r -a peers <<<"${rest%%|*}"
		read -r -a args <<<"${rest#*|}"
		np=${#peers[@]}
		printf 'cluster: rep %d/%d %-20s' "$rep" "$reps" "$label" >&2
		for ((k = 0; k < np; k++)); do
			peer=${peers[(k + rep - 1) % np]}
			printf ' %s' "$peer" >&2
			if [[ $peer == floor ]]; then
				# the floor has no nodes: its samples only
				fargs=("${args[0]}")
				for ((a = 1; a < ${#args[@]}; a += 2)); do
					[[ ${args[a]} == --nodes ]] ||
						fargs+=("${args[a]}" "${args[a + 1]}")
				done
				run_peer floor "${fargs[@]}"
			else
				run_peer "$peer" "${args[@]}"
			fi
		done
		printf '  (%ds)\n' $((SECONDS - start)) >&2
	done
done

# ---- report ------------------------------------------------------------------
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
machine="$(nproc) CPUs, ${model:-unknown CPU}, $(free -g | awk '/^Mem:/ {print $2}') GiB, Linux $(uname -r)"
versions=$("$python" -c 'import kombu, redis, sys
print("kombu %s, redis-py %s, Python %s" % (kombu.__version__, redis.__version__, sys.version.split()[0]))')
"$python" bench/cluster_peers.py report "$raw" --md "$md" --reps "$reps" \
	--date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" --machine "$machine" \
	--redis "$redis_version" --command "$command_line" --sizes "$sizes" \
	--versions "$versions" \
	--load "before the runs $load_before, after them (ours included) $load_after" ||
	failures+=("report failed")
echo "cluster: wrote $raw and $md ($((SECONDS - start)) s of runs)"
cat "$md"
if ((${#peer_failures[@]})); then
	echo >&2
	echo "cluster: ${#peer_failures[@]} run(s) of RQ or Celery failed" \
		"(reported above; not counted as a failure here):" >&2
	printf '  %s\n' "${peer_failures[@]}" >&2
fi
if ((${#failures[@]})); then
	echo >&2
	echo "cluster: ${#failures[@]} run(s) failed:" >&2
	printf '  %s\n' "${failures[@]}" >&2
	exit 1
fi
