# report.awk: turns bench/results/raw.txt (the drivers' lines, every rep of
# every peer) into latest.csv and table.md. POSIX awk (mawk is enough).
#
#   awk -f bench/report.awk -v csv=OUT.csv -v md=OUT.md -v date="..." \
#       -v machine="..." -v command="..." -v reps=R raw.txt
#
# Per (scenario, config, figure, peer): median, min, max over the reps.
# The table has one row per (scenario, config, figure): ctpool's median,
# every peer's median, the best other peer, ctpool/best and whether ctpool is
# ahead. For shutdown rows (idle-stop, busy-stop) the best peer is chosen only
# among peers that join every thread (joins=1) and left none alive
# (threads_alive_after == 0 in every rep); the others are shown, marked.
# One extra row per busy-stop percentile compares each library's own idiom:
# ctpool's token sleep (config sleep) against the peers' flag loop (flag).

# Splits one driver line into F[key] = value (values may be "quoted").
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

function add_row(key) {
	if (!(key in row_seen)) { row_seen[key] = 1; rows[++nrows] = key }
}

function add_peer(p) {
	if (!(p in peer_seen)) { peer_seen[p] = 1; seen_order[++nseen] = p }
}

# Sorts a[1..n] numerically (insertion sort: n is the number of reps).
function sort_num(a, n,    i, j, t) {
	for (i = 2; i <= n; i++) {
		t = a[i]
		for (j = i - 1; j >= 1 && a[j] > t; j--)
			a[j + 1] = a[j]
		a[j + 1] = t
	}
}

# Fills STAT_med/min/max/n for values V[key, peer, 1..]; 0 when none.
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
	if (a >= 1) return sprintf("%.2f", v)
	return sprintf("%.3f", v)
}

function csvq(s) {
	gsub(/"/, "\"\"", s)
	return "\"" s "\""
}

function is_stop_row(sc, fig) {
	return (sc == "idle-stop" || sc == "busy-stop") &&
	    fig != "threads_alive_after"
}

# Threads alive after the stop for (scenario, config, peer): the worst rep.
function alive(sc, cf, p) {
	return ((sc, cf, p) in alive_max) ? alive_max[sc, cf, p] : ""
}

# 1 when peer p may be ranked in a stop row of (sc, cf).
function qualifies(sc, cf, p) {
	return joins[p] == 1 && alive(sc, cf, p) == 0 && alive(sc, cf, p) != ""
}

# Emits one table row. key_of[p] says where each peer's values live
# (normally the row's own key; the idiom rows mix two configs).
function table_row(label_sc, label_cf, fig, u, bet,    i, p, k, cell, best,
                   bestv, bestlo, besthi, cv, clo, chi, ratio, ahead, line,
                   q, sc_of, cf_of) {
	best = ""
	line = "| " label_sc " | " label_cf " | " fig " | " u " |"
	for (i = 1; i <= npeers; i++) {
		p = peers[i]; k = key_of[p]
		split(k, parts, SUBSEP); sc_of = parts[1]; cf_of = parts[2]
		if (stats(k, p)) {
			cell = fmt(STAT_med)
			q = 1
			if (is_stop_row(sc_of, fig) && !qualifies(sc_of, cf_of, p)) {
				q = 0
				cell = cell " (threads not joined: " \
				    (alive(sc_of, cf_of, p) == "" ? "?" : \
				    alive(sc_of, cf_of, p)) " alive)"
			}
			if (p == "ctpool") {
				cv = STAT_med; clo = STAT_min; chi = STAT_max
			} else if (q && (best == "" ||
			    (bet == "higher" ? STAT_med > bestv : STAT_med < bestv))) {
				best = p; bestv = STAT_med
				bestlo = STAT_min; besthi = STAT_max
			}
		} else if ((k, p) in skipwhy) {
			cell = "n/a"
			if (p == "ctpool") cv = ""
		} else {
			cell = "—"
			if (p == "ctpool") cv = ""
		}
		line = line " " cell " |"
	}
	if (!((key_of["ctpool"], "ctpool") in cnt)) cv = ""
	if (best == "" || cv == "") {
		ratio = "n/a"; ahead = "n/a"
		if (best == "") best = "—"
	} else {
		if (bestv == 0 && cv == 0) ratio = "1.00"
		else if (bestv == 0) ratio = "inf"
		else ratio = sprintf("%.2f", cv / bestv)
		if (bet == "lower" && bestv > 0 && cv > 0 && cv != bestv)
			ratio = ratio (cv < bestv ? \
			    sprintf(" (%.1fx faster)", bestv / cv) : \
			    sprintf(" (%.1fx slower)", cv / bestv))
		if (cv == bestv) ahead = "tie"
		else if (bet == "higher") ahead = cv > bestv ? "yes" : "no"
		else ahead = cv < bestv ? "yes" : "no"
		# the min-max ranges over reps overlap: the order may be noise
		if (cnt[key_of["ctpool"], "ctpool"] > 1 && clo <= besthi &&
		    bestlo <= chi && cv != bestv)
			ahead = ahead " (ranges overlap)"
	}
	line = line " " best " | " ratio " | " ahead " |"
	print line > md
}

# Two extra rows after the busy-stop ones: each library's own idiom for a
# busy stop, ctpool's token sleep (config sleep) against the peers' flag loop.
function idiom_rows(    f, fig, ks, kf, i) {
	for (f = 1; f <= 2; f++) {
		fig = f == 1 ? "busy_stop_p50_us" : "busy_stop_p99_us"
		ks = "busy-stop" SUBSEP "sleep" SUBSEP fig
		kf = "busy-stop" SUBSEP "flag" SUBSEP fig
		if (!((ks, "ctpool") in cnt)) continue
		for (i = 1; i <= npeers; i++)
			key_of[peers[i]] = peers[i] == "ctpool" ? ks : kf
		table_row("busy-stop", "idiom: ctpool sleep vs peers flag", fig,
		    "us", "lower")
	}
}

BEGIN {
	split("ctpool textbook glib libuv tbb asio", preferred, " ")
}

{
	parse($0)
	if (!("peer" in F)) next
	p = F["peer"]; add_peer(p)
	if ("version" in F) version[p] = F["version"]
	if ("joins" in F) joins[p] = F["joins"] + 0
	if ("error" in F) {
		errors[++nerrors] = p " " F["scenario"] "/" F["config"] ": " \
		    F["error"]
		next
	}
	if (!("figure" in F)) next
	key = F["scenario"] SUBSEP F["config"] SUBSEP F["figure"]
	add_row(key)
	if ("skip" in F) {
		skipwhy[key, p] = F["skip"]
		next
	}
	unit[key] = F["unit"]; better[key] = F["better"]
	val[key, p, ++cnt[key, p]] = F["value"] + 0
	if (F["figure"] == "threads_alive_after") {
		k2 = F["scenario"] SUBSEP F["config"] SUBSEP p
		if (!(k2 in alive_max) || F["value"] + 0 > alive_max[k2])
			alive_max[k2] = F["value"] + 0
	}
}

END {
	# peer columns: ctpool first, then the usual order, then any others
	for (i = 1; i in preferred; i++)
		if (preferred[i] in peer_seen) { peers[++npeers] = preferred[i]; done[preferred[i]] = 1 }
	for (i = 1; i <= nseen; i++)
		if (!(seen_order[i] in done)) peers[++npeers] = seen_order[i]

	# ---- CSV: every (scenario, config, figure, peer) --------------------
	print "scenario,config,figure,unit,better,peer,median,min,max,runs," \
	    "threads_alive_after,note" > csv
	for (r = 1; r <= nrows; r++) {
		key = rows[r]; split(key, kp, SUBSEP)
		for (i = 1; i <= npeers; i++) {
			p = peers[i]
			if (!stats(key, p) && !((key, p) in skipwhy)) continue
			ta = (kp[1] == "idle-stop" || kp[1] == "busy-stop") ? \
			    alive(kp[1], kp[2], p) : ""
			note = ""
			if ((key, p) in skipwhy) note = "skip: " skipwhy[key, p]
			else if (is_stop_row(kp[1], kp[3]) &&
			    !qualifies(kp[1], kp[2], p))
				note = "threads not joined"
			if (STAT_n > 0)
				printf "%s,%s,%s,%s,%s,%s,%.10g,%.10g,%.10g,%d,%s,%s\n",
				    kp[1], kp[2], kp[3], unit[key], better[key], p,
				    STAT_med, STAT_min, STAT_max, STAT_n, ta,
				    csvq(note) > csv
			else
				printf "%s,%s,%s,%s,%s,%s,,,,0,%s,%s\n", kp[1],
				    kp[2], kp[3], unit[key], better[key], p, ta,
				    csvq(note) > csv
		}
	}

	# ---- table.md -------------------------------------------------------
	print "# ctpool side by side" > md
	print "" > md
	print "- Date: " date > md
	print "- Machine: " machine > md
	print "- Command: `" command "`" > md
	vers = ""
	for (i = 1; i <= npeers; i++)
		vers = vers (i > 1 ? ", " : "") peers[i] " " version[peers[i]] \
		    (joins[peers[i]] == 1 ? "" : " (does not join its threads)")
	print "- Peers: " vers > md
	print "- Each cell: median over " reps " run(s), one process per " \
	    "run, peers interleaved; min/max and run counts in latest.csv." > md
	print "- Best peer: the best median among the other peers; for stop " \
	    "rows only among peers that joined every thread and left none " \
	    "alive. ratio = ctpool / best; ahead: ctpool's median beats the " \
	    "best (\"ranges overlap\": the min-max ranges over runs overlap, " \
	    "so the order may be noise)." > md
	print "- n/a: the peer has no such operation (reasons below); " \
	    "—: no result." > md
	print "" > md
	hdr = "| scenario | config | figure | unit |"
	sep = "|---|---|---|---|"
	for (i = 1; i <= npeers; i++) { hdr = hdr " " peers[i] " |"; sep = sep "---|" }
	print hdr " best peer | ctpool/best | ahead |" > md
	print sep "---|---|---|" > md
	for (r = 1; r <= nrows; r++) {
		key = rows[r]; split(key, kp, SUBSEP)
		for (i = 1; i <= npeers; i++) key_of[peers[i]] = key
		b = (key in better) ? better[key] : "lower"
		u = (key in unit) ? unit[key] : ""
		table_row(kp[1], kp[2], kp[3], u, b)
		# after the last busy-stop row: each library's own idiom
		split(rows[r + 1], kn, SUBSEP)
		if (kp[1] == "busy-stop" && (r == nrows || kn[1] != "busy-stop"))
			idiom_rows()
	}

	print "" > md
	print "## What the rows measure (bench/driver.c has the details)" > md
	print "" > md
	print "- throughput pPwW: P producer threads submit N jobs (each one " \
	    "relaxed increment) to a fresh pool of W workers with room for " \
	    "all N; the clock runs from releasing the producers until " \
	    "wait_idle returns." > md
	print "- throughput pPwW-group: the same, every job submitted into " \
	    "one group that all the producers share (ctpool: a parent " \
	    "token; textbook: a tag; oneTBB: a task_group), as a server " \
	    "files a request's jobs to cancel them with one call; nothing " \
	    "is cancelled. Peers without groups are skipped." > md
	print "- wake: submit to job start on a pool idle for 1 ms before " \
	    "each sample (parked workers)." > md
	print "- idle-stop: shutdown of an idle pool of 4 workers, joining " \
	    "them for peers that join; threads_alive_after counts threads " \
	    "still alive 100 ms after the last shutdown." > md
	print "- busy-stop: stopping 4 workers that are all inside a blocking " \
	    "job. The clock starts right after every job has started to " \
	    "wait; a flag loop has then just begun a 10 ms sleep, so the " \
	    "flag peers show about one full period (a stop at a random " \
	    "moment would wait 5 ms on average). ctpool's rows are its " \
	    "cancellable waits, which its shutdown fires." > md
	print "- cancel: the clock covers the cancel calls only, with every " \
	    "job still queued behind blocked workers. A library may only " \
	    "mark the jobs (a group flag) and discard them later on its " \
	    "workers; that later work is not in the figure." > md
	print "- memory: heap seen by a malloc interposer: live bytes with N " \
	    "jobs queued (the pool's own structures, e.g. a preallocated " \
	    "queue, amortised over N), and malloc calls per submit in a " \
	    "second, warm round." > md

	# reasons, once per (peer, reason), with the rows they apply to
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
