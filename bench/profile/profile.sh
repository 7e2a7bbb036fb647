#!/usr/bin/env bash
# Profiles the rows of issue 11 (the four throughput rows and the two cancel
# rows of scripts/bench.sh) for ctpool and for the textbook mutex+condvar
# pool, with the side-by-side driver itself (bench/driver.c), so the figures
# are those of the very runs the table is made of. Changes nothing in the
# tree: it builds in its own directory and writes to --out.
#
# Usage: bench/profile/profile.sh [--out DIR] [--builddir DIR] [--reps R]
#                                 [--tasks N] [--cancel-tasks N] [--quick]
#   --out DIR        results (default /tmp/ctpool-profile)
#   --builddir DIR   build (default /tmp/ctpool-prof-build): release, as
#                    scripts/bench.sh builds it, plus -g (symbols and lines
#                    for the tools; no change to the code) and
#                    -fno-omit-frame-pointer (perf call graphs)
#   --reps R         timed runs per row for the wall-clock figures (default 5)
#   --tasks N        tasks per throughput run (default 1000000, as bench.sh)
#   --cancel-tasks N queued tasks per cancel run (default 100000)
#   --quick          20000 / 5000 tasks, 1 rep: a smoke test of this script
#
# What it measures, for each peer (ctpool, textbook) and row:
#   A. sizes: `gdb ptype /o` of the task object and the pool's structures
#   B. timing and counters of the real run (perf stat, R runs; medians):
#      tasks/s (the driver's own clock), CPU time, context switches, futex
#      system calls, each per task. Noisy: a shared 2-vCPU machine.
#   C. where the CPU time goes in the real run (perf record: cpu-clock
#      samples every 100 us of CPU, user and kernel, plus the futex and
#      sched_switch tracepoints; bench/profile/perfsum.py): CPU ns per task
#      by role (producer / worker / main) and function, futex calls by
#      operation and context switches by kind, per task. One run.
#   D. instructions (deterministic up to scheduling: callgrind serialises
#      the threads, so lock contention and spinning differ from a real run)
#      per task by role and function, lock-prefixed atomics (Ge, callgrind
#      --collect-bus) per task and where each one is, mutex calls per task
#      (bench/profile/cgsum.py).
#   E. cancel rows: the cancel calls alone (callgrind --toggle-collect on
#      the adapters' cancel functions, with its cache simulation for data
#      misses per cancel), and their wall-clock time over R runs.
#   F. memory: the driver's memory scenario (heap bytes per queued task).
# Run time: about 6-8 minutes on 2 vCPUs.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

out=/tmp/ctpool-profile
builddir=/tmp/ctpool-prof-build
reps=5 tasks=1000000 ntask=100000
usage() { sed -n '9,19p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
	case $1 in
	--out) out=$2; shift ;;
	--builddir) builddir=$2; shift ;;
	--reps) reps=$2; shift ;;
	--tasks) tasks=$2; shift ;;
	--cancel-tasks) ntask=$2; shift ;;
	--quick) reps=1 tasks=20000 ntask=5000 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done
for tool in perf valgrind callgrind_annotate gdb python3 addr2line nm; do
	command -v $tool >/dev/null || { echo "profile: $tool not found" >&2; exit 1; }
done
here=$repo/bench/profile
mkdir -p "$out"
log=$out/summary.md

# ---- build -------------------------------------------------------------------
setup=(--buildtype=release -Db_sanitize=none -Dtests=disabled
	-Dexamples=disabled -Dredis=disabled
	"-Dc_args=-g -fno-omit-frame-pointer"
	"-Dcpp_args=-g -fno-omit-frame-pointer")
if [[ ! -f $builddir/build.ninja ]]; then
	meson setup "$builddir" "${setup[@]}" >"$out/setup.log"
fi
ninja -C "$builddir" bench/bench_ctpool bench/bench_textbook >/dev/null
peers=(ctpool textbook)
exe() { echo "$builddir/bench/bench_$1"; }

# `cmd` lines say exactly what ran; every table below follows its command
cmdline() { printf '\n`%s`\n\n' "$*" >>"$log"; }

{
	echo "# ctpool profile: raw figures"
	echo
	echo "- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "- Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r)"
	echo "- Load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other jobs share this machine: wall-clock figures are noisy)"
	echo "- Source: $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" status --porcelain src include/ctpool.h bench/driver.c bench/peer_ctpool.c bench/peer_textbook.c | grep -q . && echo ' + uncommitted changes in src/, include/ctpool.h or the bench adapters' || echo ', src/, include/ctpool.h and the bench adapters as committed')"
	echo "- Build: \`meson setup $builddir ${setup[*]}\`"
	echo "- Command: \`bench/profile/profile.sh --reps $reps --tasks $tasks --cancel-tasks $ntask --out $out\`"
} >"$log"

# ---- A. sizes ------------------------------------------------------------------
{
	echo
	echo "## A. Sizes"
	echo
	echo '```'
	gdb -batch -ex 'ptype /o struct ctp_task' -ex 'ptype /o struct ctp_token' \
		-ex 'echo sizeof(struct ctp_pool), sizeof(struct ctp__worker), sizeof(pthread_mutex_t):\n' -ex 'print sizeof(struct ctp_pool)' \
		-ex 'print sizeof(struct ctp__worker)' \
		-ex 'print sizeof(pthread_mutex_t)' \
		"$builddir/libctpool.so" 2>/dev/null | grep -v '^\s*$'
	echo '```'
} >>"$log"
cmdline "gdb -batch -ex 'ptype /o struct ctp_task' ... $builddir/libctpool.so"

# ---- rows ----------------------------------------------------------------------
rows=("1 2" "1 4" "2 2" "2 4")

# B: perf stat per run; prints "tasks/s cpu_ms switches futex" per run
stat_run() { # peer args...
	local peer=$1 f=$out/stat.tmp
	shift
	perf stat -x, -o "$f" -e task-clock,context-switches,cpu-migrations,syscalls:sys_enter_futex \
		-- "$(exe "$peer")" "$@" >"$out/stat.line" 2>>"$out/stderr.txt"
	local v
	v=$(grep -o 'value=[0-9.]*' "$out/stat.line" | head -1 | cut -d= -f2)
	local e
	e=$(grep -o 'elapsed_ms=[0-9.]*' "$out/stat.line" | cut -d= -f2)
	awk -F, -v v="$v" -v e="$e" '
		$3 == "task-clock" { cpu = $1 }
		$3 == "context-switches" { cs = $1 }
		$3 == "cpu-migrations" { mig = $1 }
		$3 ~ /sys_enter_futex/ { fx = $1 }
		END { printf "%s %s %s %s %s %s\n", v, e, cpu, cs, fx, mig }' "$f"
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
minmax() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'; }

echo "profile: B. timing and counters ($reps runs per row)" >&2
{
	echo
	echo "## B. Real runs: timing and counters (perf stat; median of $reps runs, [min-max])"
	echo
	echo "Per task: CPU ns = task-clock of the whole process / N; switches and futex calls of the whole process / N. Wall-clock figures are noisy (shared machine)."
	echo
	echo "| row | peer | tasks/s | elapsed ms | CPU ns/task | context switches/task | futex calls/task | migrations |"
	echo "|---|---|---|---|---|---|---|---|"
} >>"$log"
bstat() { # label n peer args...
	local label=$1 n=$2 peer=$3
	shift 3
	local res=$out/stat.$peer.${label// /_}
	: >"$res"
	for ((r = 0; r < reps; r++)); do
		stat_run "$peer" "$@" >>"$res"
	done
	printf '| %s | %s | %s [%s] | %s | %s | %s | %s | %s |\n' "$label" "$peer" \
		"$(cut -d' ' -f1 "$res" | median)" "$(cut -d' ' -f1 "$res" | minmax)" \
		"$(cut -d' ' -f2 "$res" | median)" \
		"$(cut -d' ' -f3 "$res" | awk -v n="$n" '{ print $1 * 1e6 / n }' | median | xargs printf '%.0f')" \
		"$(cut -d' ' -f4 "$res" | awk -v n="$n" '{ print $1 / n }' | median | xargs printf '%.4f')" \
		"$(cut -d' ' -f5 "$res" | awk -v n="$n" '{ print $1 / n }' | median | xargs printf '%.4f')" \
		"$(cut -d' ' -f6 "$res" | median)" >>"$log"
}
for row in "${rows[@]}"; do
	set -- $row
	for peer in "${peers[@]}"; do
		bstat "throughput p$1w$2" "$tasks" "$peer" throughput --producers "$1" \
			--workers "$2" --tasks "$tasks"
	done
done
for by in handle group; do
	for peer in "${peers[@]}"; do
		bstat "cancel $by" "$ntask" "$peer" cancel --by $by --workers 2 --tasks "$ntask"
	done
done
cmdline "perf stat -x, -e task-clock,context-switches,cpu-migrations,syscalls:sys_enter_futex -- $builddir/bench/bench_<peer> throughput --producers P --workers W --tasks $tasks   (and: cancel --by handle|group --workers 2 --tasks $ntask; the cancel rows' elapsed ms is the cancel calls alone, the counters are the whole process)"

# ---- C. perf record per row ------------------------------------------------------
echo "profile: C. perf record" >&2
{
	echo
	echo "## C. Real runs: where the CPU time goes (perf record, one run per row)"
	echo
	echo "CPU ns/task = samples x 100,000 ns / N, by thread role; the function is the innermost source function of the sampled instruction (addr2line -i), or the symbol (libc, kernel). The tracepoints and sampling slow the run (perf_swevent_*, _raw_spin_unlock_irqrestore, finish_task_switch are partly perf's own cost)."
} >>"$log"
for row in "${rows[@]}"; do
	set -- $row
	for peer in "${peers[@]}"; do
		data=$out/perf.$peer.p$1w$2.data
		perf record -q -o "$data" -e cpu-clock -c 100000 \
			-e syscalls:sys_enter_futex -e sched:sched_switch \
			-- "$(exe "$peer")" throughput --producers "$1" --workers "$2" \
			--tasks "$tasks" >"$out/perf.$peer.p$1w$2.line" 2>>"$out/stderr.txt"
		{
			echo
			echo "### $peer throughput p$1w$2: $(grep -o 'value=[0-9]*' "$out/perf.$peer.p$1w$2.line" | cut -d= -f2) tasks/s under perf"
			cmdline "perf record -e cpu-clock -c 100000 -e syscalls:sys_enter_futex -e sched:sched_switch -- $(exe "$peer") throughput --producers $1 --workers $2 --tasks $tasks; bench/profile/perfsum.py --tasks $tasks --workers $2 --period 100000 $data"
			python3 "$here/perfsum.py" --tasks "$tasks" --workers "$2" \
				--period 100000 "$data"
		} >>"$log"
	done
done

# C2: the hottest single instructions of libctpool in ctpool's p1w2 and p2w2
# recordings (samples on the instruction after a stall: the one before it is
# the one that waited), with their source lines
lib=$(readlink -f "$builddir/libctpool.so")
{
	echo
	echo "### Hottest instructions of libctpool (ctpool p1w2, p2w2)"
	echo
	echo "Samples (x 100 us) at sym+offset, the source line(s) (innermost first), and the instruction just before (the stalled one)."
	for cfg in p1w2 p2w2; do
		echo
		echo "$cfg:"
		echo '```'
		perf script -i "$out/perf.ctpool.$cfg.data" -F event,ip,sym,symoff,dso 2>/dev/null |
			awk '/cpu-clock/ && /libctpool/ { print $3 }' | sort | uniq -c |
			sort -rn | awk 'NR <= 8' | while read -r n so; do
				s=${so%+0x*} off=${so##*+}
				base=$(nm "$lib" | awk -v s="$s" '$3 == s && !f { print $1; f = 1 }')
				[[ -n $base ]] || continue
				a=$((0x$base + off))
				src=$(addr2line -i -e "$lib" "$(printf '0x%x' $a)" | xargs -n1 basename | tr '\n' ' ')
				ins=$(objdump -d --no-show-raw-insn --start-address=$((a - 12)) --stop-address=$a "$lib" | grep -E '^ +[0-9a-f]+:' | tail -1 | cut -f2-)
				printf '%6d %-28s %-40s before: %s\n' "$n" "$so" "$src" "$ins"
			done
		echo '```'
	done
	cmdline "perf script -i $out/perf.ctpool.<cfg>.data -F event,sym,symoff,dso | (count by sym+offset); addr2line -i; objdump -d"
} >>"$log"

# ---- D. callgrind per row ------------------------------------------------------------
echo "profile: D. callgrind" >&2
{
	echo
	echo "## D. Instructions and atomics per task (callgrind)"
	echo
	echo "Valgrind runs one thread at a time: these are the costs of the code paths with almost no lock contention; spinning (scout_poll) and futex sleeps depend on that schedule and are smaller than in section C."
} >>"$log"
for row in "${rows[@]}"; do
	set -- $row
	for peer in "${peers[@]}"; do
		cg=$out/cg.$peer.p$1w$2
		rm -f "$cg".*
		valgrind --tool=callgrind --separate-threads=yes --collect-bus=yes \
			--collect-systime=yes --callgrind-out-file="$cg.%p" \
			"$(exe "$peer")" throughput --producers "$1" --workers "$2" \
			--tasks "$tasks" >"$cg.line" 2>"$cg.log"
		{
			echo
			echo "### $peer throughput p$1w$2"
			cmdline "valgrind --tool=callgrind --separate-threads=yes --collect-bus=yes --collect-systime=yes $(exe "$peer") throughput --producers $1 --workers $2 --tasks $tasks; bench/profile/cgsum.py --tasks $tasks --lines $cg.*-*"
			python3 "$here/cgsum.py" --tasks "$tasks" --lines --role producer "$cg".*-*
			python3 "$here/cgsum.py" --tasks "$tasks" --lines --role worker "$cg".*-*
		} >>"$log"
	done
done

# ---- E. cancel rows -----------------------------------------------------------------
echo "profile: E. cancel" >&2
{
	echo
	echo "## E. Cancel rows: the cancel calls alone (callgrind --toggle-collect, cache simulation)"
	echo
	echo "Per cancelled task. D1/LL misses are valgrind's simulation of this CPU's caches for the one thread that cancels (no other core's traffic)."
} >>"$log"
for by in handle group; do
	for peer in "${peers[@]}"; do
		cg=$out/cgc.$peer.$by
		rm -f "$cg".*
		valgrind --tool=callgrind --separate-threads=yes --collect-bus=yes \
			--cache-sim=yes --toggle-collect='cp_cancel*' \
			--toggle-collect='tp_cancel*' --callgrind-out-file="$cg.%p" \
			"$(exe "$peer")" cancel --by $by --workers 2 --tasks "$ntask" \
			>"$cg.line" 2>"$cg.log"
		{
			echo
			echo "### $peer cancel by $by"
			cmdline "valgrind --tool=callgrind --separate-threads=yes --collect-bus=yes --cache-sim=yes --toggle-collect='cp_cancel*' --toggle-collect='tp_cancel*' $(exe "$peer") cancel --by $by --workers 2 --tasks $ntask; bench/profile/cgsum.py --tasks $ntask --lines $cg.*-*"
			python3 "$here/cgsum.py" --tasks "$ntask" --lines --top 16 "$cg".*-*
		} >>"$log"
	done
done

# ---- F. memory -----------------------------------------------------------------------
{
	echo
	echo "## F. Memory (the driver's memory scenario)"
	echo
	echo '```'
	for peer in "${peers[@]}"; do
		"$(exe "$peer")" memory --workers 2 --tasks "$ntask" 2>>"$out/stderr.txt" |
			sed 's/ better=[a-z]*//; s/ version=[^ ]*//'
	done
	echo '```'
} >>"$log"
cmdline "$builddir/bench/bench_<peer> memory --workers 2 --tasks $ntask"

echo "profile: done: $log" >&2
