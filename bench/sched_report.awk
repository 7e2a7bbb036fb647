# sched_report.awk: turns the scheduling runs' lines (bench/sched_driver.c,
# every rep of every peer) into sched.csv and sched.md. POSIX awk (mawk is
# enough).
#
#   awk -f bench/sched_report.awk -v csv=OUT.csv -v md=OUT.md -v date="..." \
#       -v machine="..." -v command="..." -v reps=R [-v sizes="..."] \
#       sched-raw.txt
#
# Per (scenario, config, figure, peer): median, min and max over the reps;
# each cell of the table is "median [min-max]". Ranked rows (the figures a
# user picks a library by) also name the best other library (floor never
# counts: it is not a pool), ctpool / best, and whether ctpool is ahead;
# context rows (the load the flood put on the pool, the low tasks'
# durations) are not ranked.

function parse(s,    k, v, m) {
	for (k in F)
		delete F[k]
	while (match(s, /^[A-Za-z0-9_]+=/)) {
		k = substr(s, 1, RLENGTH - 1)
		s = substr(s, RLENGTH + 1)
		if (substr(s, 1, 1) == "\"") {
			s = substr(s, 2)
			m = index(s, "\"")
			if (m == 0) m = length(s) + 1
			v = substr(s, 1, m - 1)
			s = substr(s, m + 1)
		} else {
			m = index(s, " ")
			if (m == 0) { v = s; s = "" }
			else { v = substr(s, 1, m - 1); s = substr(s, m) }
		}
		F[k] = v
		sub(/^ +/, "", s)
	}
}

function sort_num(a, n,    i, j, t) {
	for (i = 2; i <= n; i++) {
		t = a[i]
		for (j = i - 1; j >= 1 && a[j] > t; j--)
			a[j + 1] = a[j]
		a[j + 1] = t
	}
}

# STAT_med/min/max/n of val[key, p, 1..]; 0 when there is none.
function stats(key, p,    n, i, a) {
	n = ((key, p) in cnt) ? cnt[key, p] : 0
	STAT_n = n
	if (n == 0) return 0
	for (i = 1; i <= n; i++) a[i] = val[key, p, i]
	sort_num(a, n)
	STAT_min = a[1]; STAT_max = a[n]
	STAT_med = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	return 1
}

function fmt(v,    a) {
	a = v < 0 ? -v : v
	if (a >= 1e6) return sprintf("%.2fM", v / 1e6)
	if (a >= 1e4) return sprintf("%.1fk", v / 1e3)
	if (v == int(v)) return sprintf("%d", v)
	if (a >= 100) return sprintf("%.0f", v)
	if (a >= 1) return sprintf("%.1f", v)
	return sprintf("%.2f", v)
}

function beats(v, w, bet) {
	return bet == "higher" ? v > w : v < w
}

function ranked(fig) {
	return fig ~ /^(late|wake|hi_start|hi_after_free)_p(50|99)_us$/ ||
	    fig == "submit_cancel_ns"
}

function csvq(s) {
	gsub(/"/, "\"\"", s)
	return "\"" s "\""
}

function add_row(key) {
	if (!(key in row_seen)) { row_seen[key] = 1; rows[++nrows] = key }
}

function table_row(key,    kp, i, p, line, cell, best, bestv, bestlo,
                   besthi, cv, clo, chi, have_c, ratio, ahead, bet) {
	split(key, kp, SUBSEP)
	bet = (key in better) ? better[key] : "lower"
	line = "| " kp[1] " | " kp[2] " | " kp[3] " | " unit[key] " |"
	best = ""; have_c = 0
	for (i = 1; i <= npeers; i++) {
		p = peers[i]
		if (stats(key, p)) {
			cell = fmt(STAT_med) " [" fmt(STAT_min) "–" fmt(STAT_max) "]"
			if (p == "ctpool") {
				have_c = 1; cv = STAT_med; clo = STAT_min; chi = STAT_max
			} else if (p != "floor" && (best == "" ||
			    beats(STAT_med, bestv, bet))) {
				best = p; bestv = STAT_med
				bestlo = STAT_min; besthi = STAT_max
			}
		} else if ((key, p) in skipwhy) {
			cell = "n/a"
		} else {
			cell = "—"
		}
		line = line " " cell " |"
	}
	if (!ranked(kp[3])) {
		print line " (context) | | |" > md
		return
	}
	ratio = "n/a"; ahead = "n/a"
	if (best != "" && have_c) {
		if (bestv == 0) ratio = cv == 0 ? "1.00" : "inf"
		else ratio = sprintf("%.2f", cv / bestv)
		if (cv == bestv) ahead = "tie"
		else if (bet == "higher") ahead = cv > bestv ? "yes" : "no"
		else ahead = cv < bestv ? "yes" : "no"
		if (cnt[key, "ctpool"] > 1 && clo <= besthi && bestlo <= chi &&
		    cv != bestv)
			ahead = ahead " (ranges overlap)"
	}
	print line " " (best == "" ? "—" : best) " | " ratio " | " ahead " |" > md
}

BEGIN {
	split("ctpool textbook glib libuv asio floor", preferred, " ")
}

{
	parse($0)
	if (!("peer" in F)) next
	p = F["peer"]
	if (!(p in peer_seen)) { peer_seen[p] = 1; seen_order[++nseen] = p }
	if ("version" in F) version[p] = F["version"]
	if ("error" in F) {
		errors[++nerrors] = p " " F["scenario"] "/" F["config"] ": " \
		    F["error"]
		next
	}
	if (!("figure" in F)) next
	key = F["scenario"] SUBSEP F["config"] SUBSEP F["figure"]
	add_row(key)
	if ("skip" in F) { skipwhy[key, p] = F["skip"]; next }
	unit[key] = F["unit"]; better[key] = F["better"]
	val[key, p, ++cnt[key, p]] = F["value"] + 0
}

END {
	for (i = 1; i in preferred; i++)
		if (preferred[i] in peer_seen) {
			peers[++npeers] = preferred[i]; done[preferred[i]] = 1
		}
	for (i = 1; i <= nseen; i++)
		if (!(seen_order[i] in done)) peers[++npeers] = seen_order[i]

	print "scenario,config,figure,unit,better,peer,median,min,max,runs,note" > csv
	for (r = 1; r <= nrows; r++) {
		key = rows[r]; split(key, kp, SUBSEP)
		for (i = 1; i <= npeers; i++) {
			p = peers[i]
			if (stats(key, p))
				printf "%s,%s,%s,%s,%s,%s,%.10g,%.10g,%.10g,%d,\n",
				    kp[1], kp[2], kp[3], unit[key], better[key], p,
				    STAT_med, STAT_min, STAT_max, STAT_n > csv
			else if ((key, p) in skipwhy)
				printf "%s,%s,%s,,,%s,,,,0,%s\n", kp[1], kp[2],
				    kp[3], p, csvq("n/a: " skipwhy[key, p]) > csv
		}
	}

	print "# ctpool scheduling side by side" > md
	print "" > md
	print "- Date: " date > md
	print "- Machine: " machine > md
	print "- Command: `" command "`" > md
	vers = ""
	for (i = 1; i <= npeers; i++)
		vers = vers (i > 1 ? ", " : "") peers[i] " " version[peers[i]]
	print "- Peers: " vers > md
	if (sizes != "") print "- Sizes: " sizes "; 2 workers." > md
	print "- Each cell: median [min–max] over " reps " run(s) of the " \
	    "figure, one process per run, peers interleaved (the order " \
	    "rotates every rep). A p50/p99 is taken within one run; the " \
	    "range is over runs." > md
	print "- floor is no pool: the kernel alone (clock_nanosleep to the " \
	    "same due times, under the same load; one condition-variable " \
	    "wake). It is never the best peer." > md
	print "- best peer: the best median among the other libraries; " \
	    "ahead: ctpool's median beats it (\"ranges overlap\": the order " \
	    "may be noise). Context rows are not ranked. n/a: the library " \
	    "has no such feature (reasons below); —: no result." > md
	print "" > md
	hdr = "| scenario | config | figure | unit |"
	sep = "|---|---|---|---|"
	for (i = 1; i <= npeers; i++) { hdr = hdr " " peers[i] " |"; sep = sep "---|" }
	print hdr " best peer | ctpool/best | ahead |" > md
	print sep "---|---|---|" > md
	for (r = 1; r <= nrows; r++)
		table_row(rows[r])

	print "" > md
	print "## What the rows measure (bench/sched_driver.c has the details)" > md
	print "" > md
	print "- sched-timer idle/busy: late = start of a delayed task minus " \
	    "its due time (the driver's clock before the submit + the delay). " \
	    "Delays uniform in 1 us steps (Sizes), the same draws for every " \
	    "peer. busy: 4 tasks of 50 us (each resubmits itself when it " \
	    "ends) keep the 2 workers busy and 2 tasks waiting; a due task queues behind them; flood_tasks_per_s " \
	    "is the load each pool actually ran." > md
	print "- libuv and GLib time in whole milliseconds: to never start " \
	    "early they round the due time up to the next ms, which adds " \
	    "0-1 ms (0.5 ms on average) to their lateness; asio and ctpool " \
	    "take nanoseconds." > md
	print "- sched-cancel: ns per (submit a delayed task, cancel it, " \
	    "release its handle) with the pending delayed tasks of Sizes (delays " \
	    "1-2 h, random order). libuv, GLib and asio run it on their " \
	    "timer loop's thread (where their timers live), ctpool and " \
	    "textbook on the caller; the clock runs until every cancelled " \
	    "notification arrived (libuv's close callbacks, asio's aborted " \
	    "handlers)." > md
	print "- sched-priority: submit-to-start of a high-priority task while " \
	    "2 workers run 100 us low-priority tasks with more waiting " \
	    "(Sizes; each resubmits itself when it ends); " \
	    "hi_after_free = start minus the first end of a low task after " \
	    "the submit (the pool's own hand-over); low_task_* = how long " \
	    "the running low tasks really took (wall clock: preemption " \
	    "included), the bound a non-preemptive pool cannot beat; " \
	    "wake = submit-to-start on the same pool, idle." > md

	nw = 0
	for (r = 1; r <= nrows; r++) {
		key = rows[r]; split(key, kp, SUBSEP)
		for (i = 1; i <= npeers; i++) {
			p = peers[i]
			if (!((key, p) in skipwhy)) continue
			w = skipwhy[key, p]
			if (!((p, w) in where)) { wlist[++nw] = p SUBSEP w; where[p, w] = "" }
			if (index(" " where[p, w] ",", " " kp[1] "/" kp[2] ",") == 0)
				where[p, w] = where[p, w] (where[p, w] == "" ? "" : ", ") \
				    kp[1] "/" kp[2]
		}
	}
	if (nw) {
		print "" > md
		print "## Not offered (n/a)" > md
		print "" > md
		for (i = 1; i <= nw; i++) {
			split(wlist[i], pw, SUBSEP)
			print "- " pw[1] " (" where[pw[1], pw[2]] "): " pw[2] > md
		}
	}
	if (nerrors) {
		print "" > md
		print "## Errors" > md
		print "" > md
		for (i = 1; i <= nerrors; i++) print "- " errors[i] > md
	}
}
