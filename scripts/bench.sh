#!/usr/bin/env bash
# Compares ctpool side by side with other thread pools: installs what is
# missing, builds build-bench (release), runs every scenario for every peer
# that was built, and writes the report. Then the same for isolated tasks:
# bench_isolated against Python's process pools (bench/isolated_peers.py,
# run by Debian's /usr/bin/python3: pebble and ProcessPoolExecutor) and
# the physical floors (bench_isolated --floor). Then scheduling (delayed
# tasks, their cancellation, priorities): bench_sched_<peer> against
# libuv, GLib, asio, a textbook heap pool and the kernel's floor.
#
# Usage: scripts/bench.sh [--quick] [--reps R] [--builddir DIR] [PART ...]
#   --quick   tiny sizes, one rep (a smoke test, under a minute of runs);
#             results go to bench/results/quick/
#   --reps R  repetitions of every run (default 5)
#   --builddir DIR  build and run there (default build-bench)
#   PART      peers (the pool scenarios and isolated tasks: raw.txt ...
#             table.md below) and/or sched (sched-raw.txt, sched.csv,
#             sched.md); default both
#
# Every run is one process (build-bench/bench/bench_<peer> <scenario> ...);
# for rep in 1..R, for each scenario config, the peers run one after another
# in an order rotated by rep, so slow drifts of a noisy machine spread over
# all peers. Outputs in bench/results/:
#   raw.txt           every line the drivers printed
#   isolated-raw.txt  every line of the isolated-task runs
#   stop-samples.txt  every idle/busy stop sample (for the plot)
#   stderr.txt        what the runs printed on stderr
#   latest.csv        median/min/max per (scenario, config, figure, peer)
#                     (isolated rows: scenario isolated-*)
#   table.md          the side-by-side tables
#   stop-latency.png  CDF of the stop latencies
#   sched-raw.txt     every line of the scheduling runs
#   sched.csv         median/min/max per (scenario, config, figure, peer)
#   sched.md          the scheduling table: median [min-max] per peer
# Exits non-zero (after the report) if any run failed or printed an error.
set -euo pipefail
cd "$(dirname "$0")/.."

command_line="$0${*:+ $*}"
reps=5
quick=0
builddir=build-bench
do_peers=0 do_sched=0
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
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
	peers) do_peers=1 ;;
	sched) do_sched=1 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done
((do_peers || do_sched)) || do_peers=1 do_sched=1

# ---- dependencies --------------------------------------------------------
scripts/deps.sh g++ libglib2.0-dev libuv1-dev libtbb-dev libboost-dev \
	gnuplot-nox python3-pebble
# Debian's python3, which has python3-pebble (a `python3` earlier on PATH,
# e.g. pyenv's, may not)
python=/usr/bin/python3

# ---- build -----------------------------------------------------------------
setup=(--buildtype=release -Db_sanitize=none -Dtests=disabled -Dexamples=disabled)
if [[ -f $builddir/build.ninja ]]; then
	# --reconfigure: the set of peers depends on what is installed now
	meson setup --reconfigure "$builddir" "${setup[@]}" >"$builddir/setup.log"
else
	mkdir -p "$builddir"
	meson setup "$builddir" "${setup[@]}" >/tmp/ctpool-bench-setup.$$.log ||
		{ cat /tmp/ctpool-bench-setup.$$.log; exit 1; }
	mv /tmp/ctpool-bench-setup.$$.log "$builddir/setup.log"
fi
grep '^Message: bench:' "$builddir/setup.log" | sed 's/^Message: //' || true
ninja -C "$builddir" >/dev/null

peers=()
for p in ctpool textbook glib libuv tbb asio; do
	[[ -x $builddir/bench/bench_$p ]] && peers+=("$p")
done
sched_peers=()
for p in ctpool textbook glib libuv asio floor; do
	[[ -x $builddir/bench/bench_sched_$p ]] && sched_peers+=("$p")
done
((do_peers)) && echo "bench: peers: ${peers[*]}"
((do_sched)) && echo "bench: sched peers: ${sched_peers[*]}"

# ---- runs --------------------------------------------------------------------
if ((quick)); then
	out=bench/results/quick
	reps=1
	tput=20000 wake=50 idle=50 busy=20 ntask=20000
	iso_rt=300 iso_kill=3 iso_coop=20 iso_tput=1000
	s_delays=300 s_max_ms=20 s_inflight=50 s_pending=20000 s_ops=20000
	s_samples=100 s_wake=50 s_depth=32
else
	out=bench/results
	tput=1000000 wake=2000 idle=200 busy=100 ntask=100000
	iso_rt=20000 iso_kill=200 iso_coop=1000 iso_tput=20000
	s_delays=10000 s_max_ms=100 s_inflight=100 s_pending=1000000
	s_ops=200000 s_samples=1000 s_wake=200 s_depth=256
fi
mkdir -p "$out"
raw=$out/raw.txt samples=$out/stop-samples.txt errlog=$out/stderr.txt
isoraw=$out/isolated-raw.txt schedraw=$out/sched-raw.txt
if ((do_peers)); then
	: >"$raw"
	: >"$isoraw"
	: >"$samples"
	: >"$errlog"
fi
if ((do_sched)); then
	: >"$schedraw"
	((do_peers)) || errlog=$out/sched-stderr.txt
	((do_peers)) || : >"$errlog"
fi

# scenario configs: "label|driver arguments"
configs=(
	"throughput p1w2|throughput --producers 1 --workers 2 --tasks $tput"
	"throughput p2w2|throughput --producers 2 --workers 2 --tasks $tput"
	"throughput p1w4|throughput --producers 1 --workers 4 --tasks $tput"
	"throughput p2w4|throughput --producers 2 --workers 4 --tasks $tput"
	"throughput p1w2-group|throughput --into group --producers 1 --workers 2 --tasks $tput"
	"throughput p2w2-group|throughput --into group --producers 2 --workers 2 --tasks $tput"
	"wake w4|wake --workers 4 --samples $wake"
	"idle-stop w4|idle-stop --workers 4 --samples $idle"
	"busy-stop flag|busy-stop --workers 4 --wait flag --samples $busy"
	"busy-stop sleep|busy-stop --workers 4 --wait sleep --samples $busy"
	"busy-stop poll|busy-stop --workers 4 --wait poll --samples $busy"
	"busy-stop queue|busy-stop --workers 4 --wait queue --samples $busy"
	"cancel handle|cancel --by handle --workers 2 --tasks $ntask"
	"cancel group|cancel --by group --workers 2 --tasks $ntask"
	"memory w2|memory --workers 2 --tasks $ntask"
)

# isolated tasks: "label|arguments" for bench_isolated and isolated_peers.py
iso_configs=(
	"roundtrip t1p1|roundtrip --procs 1 --n $iso_rt"
	"roundtrip t2p2|roundtrip --procs 2 --n $iso_rt"
	"kill|kill --n $iso_kill --timeout-ms 10 --kill-after-ms 10"
	"cancel-kill|cancel-kill --n $iso_kill --kill-after-ms 10"
	"coop-cancel|coop-cancel --n $iso_coop"
	"throughput t2p2|throughput --procs 2 --n $iso_tput"
	"throughput t4p4|throughput --procs 4 --n $iso_tput"
)
iso_peers=(ctpool pebble ProcessPoolExecutor floor)

# scheduling: "label|bench_sched_<peer> arguments" (2 workers throughout)
sched_sizes="timer: $s_delays delays uniform 1-$s_max_ms ms, $s_inflight in flight; cancel: 1000 and $s_pending pending, $s_ops pairs; priority: $s_samples samples, $s_depth low tasks waiting, $s_wake wake samples"
sched_configs=(
	"timer idle|timer --mode idle --delays $s_delays --max-ms $s_max_ms --inflight $s_inflight"
	"timer busy|timer --mode busy --delays $s_delays --max-ms $s_max_ms --inflight $s_inflight"
	"cancel 1k|cancel --pending 1000 --ops $s_ops"
	"cancel|cancel --pending $s_pending --ops $s_ops"
	"priority|priority --samples $s_samples --wake-samples $s_wake --depth $s_depth"
)

failures=()
run_cmd() { # peer, raw file, command...
	local peer=$1 out=$2 rc=0 text
	shift 2
	echo "== $*" >>"$errlog"
	text=$(timeout 300 "$@" 2>>"$errlog") || rc=$?
	[[ -n $text ]] && printf '%s\n' "$text" >>"$out"
	if ((rc != 0)) || [[ -z $text ]] || grep -q ' error=' <<<"$text"; then
		local why
		why=$(grep -o 'error=.*' <<<"$text" | head -n 1 || true)
		((rc == 124)) && why="timed out after 300 s${why:+; $why}"
		[[ -z $text && -z $why ]] && why="no output"
		failures+=("$* (exit $rc)${why:+: $why}")
		printf ' [%s FAILED]' "$peer" >&2
	fi
}
run_one() { # peer, driver arguments...
	local peer=$1
	shift
	run_cmd "$peer" "$raw" "$builddir/bench/bench_$peer" "$@" \
		--samples-out "$samples"
}
run_iso() { # peer, arguments...
	local peer=$1
	shift
	case $peer in
	ctpool) run_cmd "$peer" "$isoraw" "$builddir/bench/bench_isolated" "$@" ;;
	floor) run_cmd "$peer" "$isoraw" "$builddir/bench/bench_isolated" --floor "$@" ;;
	*) run_cmd "$peer" "$isoraw" "$python" bench/isolated_peers.py --peer "$peer" "$@" ;;
	esac
}

start=$SECONDS
np=${#peers[@]}
for ((rep = 1; do_peers && rep <= reps; rep++)); do
	for c in "${configs[@]}"; do
		label=${c%%|*}
		read -r -a args <<<"${c#*|}"
		printf 'bench: rep %d/%d %-16s' "$rep" "$reps" "$label" >&2
		for ((k = 0; k < np; k++)); do
			peer=${peers[(k + rep - 1) % np]}
			printf ' %s' "$peer" >&2
			run_one "$peer" "${args[@]}"
		done
		printf '  (%ds)\n' $((SECONDS - start)) >&2
	done
	ni=${#iso_peers[@]}
	for c in "${iso_configs[@]}"; do
		label=${c%%|*}
		read -r -a args <<<"${c#*|}"
		printf 'bench: rep %d/%d isolated %-16s' "$rep" "$reps" "$label" >&2
		for ((k = 0; k < ni; k++)); do
			peer=${iso_peers[(k + rep - 1) % ni]}
			printf ' %s' "$peer" >&2
			run_iso "$peer" "${args[@]}"
		done
		printf '  (%ds)\n' $((SECONDS - start)) >&2
	done
done

ns=${#sched_peers[@]}
for ((rep = 1; do_sched && rep <= reps; rep++)); do
	for c in "${sched_configs[@]}"; do
		label=${c%%|*}
		read -r -a args <<<"${c#*|}"
		printf 'bench: rep %d/%d sched %-16s' "$rep" "$reps" "$label" >&2
		for ((k = 0; k < ns; k++)); do
			peer=${sched_peers[(k + rep - 1) % ns]}
			printf ' %s' "$peer" >&2
			run_cmd "$peer" "$schedraw" "$builddir/bench/bench_sched_$peer" \
				"${args[@]}"
		done
		printf '  (%ds)\n' $((SECONDS - start)) >&2
	done
done

# ---- report ------------------------------------------------------------------
model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
machine="$(nproc) CPUs, ${model:-unknown CPU}, Linux $(uname -r)"
if ((do_sched)); then
	awk -f bench/sched_report.awk -v csv="$out/sched.csv" \
		-v md="$out/sched.md" -v sizes="$sched_sizes" \
		-v date="$(date -u '+%Y-%m-%d %H:%M:%S UTC')" -v machine="$machine" \
		-v command="$command_line" -v reps="$reps" "$schedraw"
	echo "bench: wrote $out/sched.csv and $out/sched.md"
fi
if ((do_peers)); then
	awk -f bench/report.awk -v csv="$out/latest.csv" -v md="$out/table.md" \
		-v date="$(date -u '+%Y-%m-%d %H:%M:%S UTC')" -v machine="$machine" \
		-v command="$command_line" -v reps="$reps" "$raw"
	"$python" bench/isolated_peers.py report "$isoraw" --csv "$out/latest.csv" \
		--md "$out/table.md" --reps "$reps" || failures+=("isolated report failed")
	echo "bench: wrote $out/latest.csv and $out/table.md ($((SECONDS - start)) s of runs)"

	if command -v gnuplot >/dev/null; then
		tmp=$(mktemp -d)
		sort -k1,1 -k2,2 -k3,3g "$samples" >"$tmp/sorted"
		awk -f bench/ecdf.awk -v want=idle-stop -v raw="$raw" "$tmp/sorted" >"$tmp/idle.dat"
		awk -f bench/ecdf.awk -v want=busy-stop -v raw="$raw" "$tmp/sorted" >"$tmp/busy.dat"
		nidle=$(grep -c '^"' "$tmp/idle.dat" || true)
		nbusy=$(grep -c '^"' "$tmp/busy.dat" || true)
		term=png
		gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo && term=pngcairo
		if gnuplot -e "term='$term'; out='$out/stop-latency.png'; idle='$tmp/idle.dat'; nidle=$nidle; busy='$tmp/busy.dat'; nbusy=$nbusy" \
			bench/plot.gp 2>"$tmp/gnuplot.err"; then
			echo "bench: wrote $out/stop-latency.png"
		else
			cat "$tmp/gnuplot.err" >&2
			failures+=("gnuplot failed")
		fi
		rm -rf "$tmp"
	else
		echo "bench: gnuplot not found: no plot" >&2
	fi
	cat "$out/table.md"
fi
((do_sched)) && cat "$out/sched.md"
if ((${#failures[@]})); then
	echo >&2
	echo "bench: ${#failures[@]} run(s) failed:" >&2
	printf '  %s\n' "${failures[@]}" >&2
	exit 1
fi
