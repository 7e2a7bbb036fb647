/*
 * sched.pml: the scheduling states of the run queue (commit 5741428,
 * "Scheduling", with the fixes of 60cbd85): delayed tasks in the timer's due heap (CTP__Q_DELAYED),
 * periodic tasks (CTP__Q_HELD while a worker has them, re-placed by the
 * worker after each run), priority lists, ctp_task_reschedule, the timer's
 * promotion, the `timer.armed` flag of pool_unqueue, and what the
 * shutdown does with all of them (close_queue, the drop step, the drain).
 * Checked exhaustively with spin (scripts/model.sh). See README.md,
 * "sched.pml".
 *
 * One step of this model is one atomic instruction or one lock section of
 * the C code (the file/function is named beside each part). As in
 * ctpool.pml, a lock section that touches only what its locks protect is
 * one step; one that also touches a word changed without the lock (a task's
 * state word, `timer.armed`, `closed` read by run_task) splits there.
 *
 * Two locks: timer->lock (tlock) over the due heap, the reservations
 * (timer->dres, task->dres) and `stop`; runq.lock (qlock) over the lists,
 * count, held, closed, the idle list, `current`, qstate and resched. A task
 * changes to or from DELAYED only under both. The order is always tlock,
 * then qlock. Where the C code drops qlock, makes its after-unlock wake-ups
 * (q_unlock) and only then drops tlock, the model drops both at once and
 * wakes after: that only adds interleavings (nothing else can take tlock
 * earlier in the C code), so it is an over-approximation.
 *
 * Time is abstract. A task placed in the due heap waits for a due time
 * that is either SHORT (the timer may promote it at any moment) or LONG
 * (it never comes: a delay of hours, or INT64_MAX). The timer promotes any
 * SHORT task of the heap (any order: due times are arbitrary).
 *
 * Tasks (NT <= 2): task t has kind K<t> and priority P<t> (spin -D; list 1
 * is popped first):
 *   K_ONCE   no delay, no period: the fast path (linked in admit)
 *   K_DELAY  a one-shot task with a delay: admit, then enqueue places it
 *            (due heap, SHORT, or LONG with -DLONG_DELAY; or at once, if
 *            the submitter was slower than the delay)
 *   K_PER    periodic, no delay: the fast path (t->dres is set)
 *   K_PERD   periodic with a delay: admit, then enqueue places it
 * A periodic task's next due time after a run is at once (the run overran)
 * or SHORT (or LONG, a period of hours, with -DLONG_PERIOD), or what a
 * reschedule made during the run asked for.
 * With -DDEADLINE a non-fast task's deadline may fire from its admission
 * on (before enqueue: a fire that catches it RESERVED).
 *
 * Processes: NW workers (no scout: a worker that finds the lists empty
 * parks; ctpool.pml checks the scout); the timer thread (promotion; exits
 * at stop); one submitter (tasks 1..NT in turn; CAP >= NT, so no waiting
 * for room, which ctpool.pml checks); one canceller (ctp_task_cancel of
 * one task once it has the handle, or its deadline with -DDEADLINE, or
 * nothing); with -DRESCHED=t one ctp_task_reschedule(t, delay) call (delay
 * 0, SHORT, or LONG with -DLONG); one shutdown caller (drain 0, or
 * CTP_FOREVER; a LONG due time of a one-shot task makes a forever drain
 * wait forever, by contract, so a run has one or the other: ghost
 * drainfv/anylong). A periodic run may cancel its own token (unless
 * -DNO_SELF).
 *
 * Planted bugs (each must make spin report an error):
 *   BUG_REQUEUE_NO_CLOSED_CHECK  requeue re-places a periodic task even when
 *                                the queue is closed: the series waits for
 *                                its next due time after the close (the
 *                                pop ends it then), so with a period of
 *                                hours (-DLONG_PERIOD) a forever drain
 *                                never ends.
 *   BUG_UNQUEUE_NO_TIMER_LOCK    pool_unqueue ignores `armed` and
 *                                DELAYED: a cancelled delayed task stays in
 *                                the due heap, holding its slot.
 *   BUG_ARMED_AFTER_LOOK         ctp_task_reschedule reserves its place in
 *                                the due heap (and sets `armed`) after its
 *                                look at the token, not before: the Dekker
 *                                pair with the fire's load of `armed` is
 *                                broken.
 *   BUG_PROMOTE_NO_WAKE          pool_promote links without
 *                                q_wake_for_work: a lost wake-up.
 * and a bug this model found in src/ (fixed in 60cbd85; README.md,
 * "Findings of sched.pml"), kept as a planted bug:
 *   BUG_PLACE_NO_DRAINED_BUMP    place() bumps `drained` (q_linked_closed)
 *                                only when it links, not when it puts the
 *                                task in the due heap: a delayed task
 *                                enqueued after the drop step's look makes
 *                                the drop step wait for its due time (with
 *                                a LONG one, forever: invalid end state).
 * and one the fuzzer found (fixed after 2e79146), the old code kept:
 *   BUG_SKIP_STARTED_RUN         run_task skips a periodic run it has
 *                                started (RUNNING) when it sees `closed`,
 *                                instead of next_task ending the series
 *                                before the start: a ctp_task_cancel in
 *                                between answers -EINPROGRESS for a run
 *                                whose fn is never called (ip_owed).
 * (BUG_SKIP_END_AS_RAN, the other bug this model found in 60cbd85, lived
 * in that skip path, which is gone: so is its planted bug.)
 */

#ifndef NW
#define NW 1
#endif
#ifndef NT
#define NT 1
#endif
#ifndef CAP
#define CAP NT
#endif

/* task kinds */
#define K_ONCE  1
#define K_DELAY 2
#define K_PER   3
#define K_PERD  4

#ifndef K1
#define K1 K_PER
#endif
#ifndef K2
#define K2 K_DELAY
#endif
#ifndef P1
#define P1 0
#endif
#ifndef P2
#define P2 1
#endif

/* due times */
#define D_NOW   1
#define D_SHORT 2
#define D_LONG  3

/* task phases: CTP_TASK_* (the token state word) */
#define QUEUED    1
#define RUNNING   2
#define DONE      3
#define CANCELLED 4

/* fired reasons (0 = not fired) */
#define R_CANCEL 1   /* -ECANCELED */
#define R_SHUT   2   /* -ESHUTDOWN */
#define R_TIME   3   /* -ETIMEDOUT */

#define S_RAN    9   /* what fn returns */

/* enum ctp__qstate */
#define Q_OUT  0
#define Q_RES  1     /* CTP__Q_RESERVED */
#define Q_LINK 2     /* CTP__Q_LINKED */
#define Q_DEL  3     /* CTP__Q_DELAYED: in the due heap */
#define Q_HELD 4     /* CTP__Q_HELD: a periodic task a worker took */

/* ---- the task: set before publication ---- */
byte kind[NT + 1];
bool per[NT + 1];         /* t->period > 0 */
byte prio[NT + 1];        /* t->prio: list 0 (low) or 1 (high) */

/* ---- the task state word: (phase, reason), changed only by CASes ---- */
byte phase[NT + 1];
byte reason[NT + 1];
bool ran[NT + 1];         /* t->ran: a periodic run returned */

/* ---- ghosts, for the properties ---- */
byte done_count[NT + 1];
byte status[NT + 1];      /* given to done */
bool acc[NT + 1];         /* accepted */
byte fireable[NT + 1];    /* the canceller may fire it now, this reason */
bool handle[NT + 1];      /* the submit returned it: reschedule may run */
bool won_queued[NT + 1];  /* a fire CAS caught it QUEUED: never starts */
bool started[NT + 1];     /* fn was called (at least once) */
bool fnrun[NT + 1];       /* the current run (since the last start CAS)
                             has called fn */
bool ip_owed[NT + 1];     /* ctp_task_cancel answered -EINPROGRESS (its
                             CAS caught RUNNING) and the run it caught has
                             not called fn yet: it must (API.md) */
bool late[NT + 1];        /* started once the queue was closed */
bool dueok[NT + 1];       /* its due time has come: placed in a list at
                             once, or promoted */
bool dlong[NT + 1];       /* in the due heap for a LONG due time */
bool drainfv;             /* the shutdown is draining forever (CTP_FOREVER;
                             cleared when that wait ends, which keeps the
                             states after it shared with a drain of 0) */
bool anylong;             /* a one-shot task was given a LONG due time: a
                             forever drain would wait for it forever (the
                             contract), so the two exclude each other */
bool passed[NW];          /* the cancel step has read this worker's
                             current */
bool collected[NT + 1];   /* the cancel step took it from a current */
bool claimed[NW];         /* taken off the idle list, not yet relocked */
bool sub_done;            /* the submitter returned */
byte rsv_pending;         /* reservations a reschedule holds for itself */
byte st_completed, st_cancelled, st_timed_out, st_dropped; /* ctp_stats */
hidden byte ck_i, ck_r, ck_l, ck_h;  /* scratch of q_check */

/* ---- timer.c: struct ctp__timer (timer->lock) ---- */
byte tlock;               /* timer->lock: 0 free, else the holder's _pid */
byte tdres;               /* timer->dres: due heap reservations */
bool dres[NT + 1];        /* t->dres */
bool armed;               /* timer.armed (seq_cst, set once) */
bool tstop;               /* timer->stop */

/* ---- pool.c: struct ctp__runq (runq.lock) ---- */
byte qlock;
chan lst[2] = [NT] of { byte };  /* the priority lists (head .. tail) */
byte qs[NT + 1];          /* each task's qstate */
byte count;               /* admitted tasks holding a slot */
byte held;                /* runq.held: tasks in HELD */
bool closed;
byte rs[NT + 1];          /* t->resched: 0 none, else a due time */
byte waking;
byte istack[NW];          /* runq.idle (LIFO) ... */
byte nidle;               /* ... of this many workers */
byte current[NW];         /* worker->current */
bool stopping;
byte dr;                  /* runq.drained event count */
byte nf;                  /* runq.not_full event count (bumped only) */
byte pk[NW];              /* worker->park */

/* ---- the rest of the pool ---- */
byte alive;               /* threads not yet exited (workers, timer) */
byte unfinished;          /* accepted - finished (pool_idle) */
byte finishing;           /* fire segments whose done has not returned */

/* runq.lock held (and timer->lock for what it protects): the accounting */
inline q_check() {
	ck_i = 1; ck_r = 0; ck_l = 0; ck_h = 0;
	do
	:: ck_i <= NT ->
		if
		:: qs[ck_i] != Q_OUT -> ck_r++
		:: else -> skip
		fi;
		if
		:: qs[ck_i] == Q_LINK -> ck_l++
		:: qs[ck_i] == Q_HELD -> ck_h++; assert(per[ck_i])
		:: qs[ck_i] == Q_DEL -> assert(dres[ck_i])  /* its place */
		:: else -> skip
		fi;
		ck_i++
	:: else -> break
	od;
	/* a slot for each task RESERVED, LINKED, DELAYED or HELD */
	assert(count == ck_r && count <= CAP && held == ck_h &&
	       len(lst[0]) + len(lst[1]) == ck_l);
	ck_i = 0; ck_r = 0;
	do
	:: ck_i < NW ->
		if
		:: claimed[ck_i] -> ck_r++
		:: else -> skip
		fi;
		ck_i++
	:: else -> break
	od;
	assert(waking == ck_r);
	ck_i = 0; ck_r = 0; ck_l = 0; ck_h = 0
}

/* timer->lock held: every reservation is a task's or a reschedule's own */
inline t_check() {
	ck_i = 1; ck_r = 0;
	do
	:: ck_i <= NT ->
		if
		:: dres[ck_i] -> ck_r++
		:: else -> skip
		fi;
		ck_i++
	:: else -> break
	od;
	assert(tdres == ck_r + rsv_pending);
	ck_i = 0; ck_r = 0
}

inline q_unlock() { q_check(); assert(qlock == _pid); qlock = 0 }
/* both locks (the model drops them together: see the top) */
inline qt_unlock() {
	q_check(); t_check();
	assert(qlock == _pid && tlock == _pid);
	qlock = 0; tlock = 0
}

/* pool.c q_release (lock held) */
inline q_release() {
	count--;
	if
	:: closed -> adr = true
	:: else -> skip
	fi
}

/* pool.c q_wake_for_work (lock held): no scout in this model */
inline q_wake_for_work() {
	if
	:: nidle > 0 && aw == 0 && len(lst[0]) + len(lst[1]) > waking ->
		nidle--;
		aw = istack[nidle] + 1;
		istack[nidle] = 0;
		waking++;
		claimed[aw - 1] = true
	:: else -> skip
	fi
}

/* q_unlock's second half, after the release */
inline q_after() {
	if
	:: aw != 0 -> d_step { pk[aw - 1] = 0; aw = 0 }
	:: else -> skip
	fi;
	if
	:: anf -> d_step { nf++; anf = false }
	:: else -> skip
	fi;
	if
	:: adr -> d_step { dr++; adr = false }
	:: else -> skip
	fi
}

/* q_link + q_wake_for_work + q_linked_closed (lock held) */
inline link_wake(t) {
	lst[prio[t]]!t;
	qs[t] = Q_LINK;
	dueok[t] = true;
	q_wake_for_work();
	if
	:: closed -> adr = true
	:: else -> skip
	fi
}

/* pool.c place (both locks held): t holds a slot, in no list nor heap */
inline place(t, d) {
	if
	:: d == D_NOW -> link_wake(t)
	:: else ->
		assert(dres[t]);        /* ctp__timer_dinsert */
		qs[t] = Q_DEL;
		dueok[t] = false;
		dlong[t] = (d == D_LONG)
#ifndef BUG_PLACE_NO_DRAINED_BUMP
		;
		/* q_linked_closed: the drop step takes from the due heap too
		 * (60cbd85) */
		if
		:: closed -> adr = true
		:: else -> skip
		fi
#endif
	fi
}

/* pool.c q_first: the first task of the highest priority, or 0 */
inline q_first(t) {
	if
	:: len(lst[1]) > 0 -> lst[1]?<t>
	:: else ->
		if
		:: len(lst[0]) > 0 -> lst[0]?<t>
		:: else -> t = 0
		fi
	fi
}

/* token.c fire_cas: sets the reason; QUEUED -> CANCELLED in the same CAS.
 * old = the phase it replaced, 0 for -EALREADY. A task caught queued is
 * retired in the same step as far as the statistics go (task.c
 * ctp__task_retire: a periodic series that ran ends DONE and counts as
 * completed). */
inline fire_cas(t, r, old) {
	d_step {
		if
		:: reason[t] != 0 || phase[t] == DONE || phase[t] == CANCELLED ->
			old = 0
		:: else ->
			old = phase[t];
			reason[t] = r;
			/* a cancel (the canceller's R_CANCEL; a run's own
			 * cancel is inside fn) that answers -EINPROGRESS */
			if
			:: r == R_CANCEL && old == RUNNING && !fnrun[t] ->
				ip_owed[t] = true
			:: else -> skip
			fi;
			if
			:: phase[t] == QUEUED ->
				phase[t] = CANCELLED;
				won_queued[t] = true;
				if
				:: ran[t] -> phase[t] = DONE; st_completed++
				:: !ran[t] && r == R_TIME -> st_timed_out++
				:: !ran[t] && r == R_SHUT -> st_dropped++
				:: !ran[t] && r == R_CANCEL -> st_cancelled++
				fi
			:: else -> skip
			fi
		fi
	}
}

/* pool.c pool_unqueue for one task; timed: `armed` as read after the
 * fire's CAS (the timer lock is then held too) */
inline unqueue_one(t, timed) {
	if
	:: qs[t] == Q_LINK ->
		lst[prio[t]]??eval(t);
		qs[t] = Q_OUT;
		q_release()
#ifndef BUG_UNQUEUE_NO_TIMER_LOCK
	:: qs[t] == Q_DEL ->
		assert(timed);
		qs[t] = Q_OUT;          /* ctp__timer_ddelete */
		q_release()
#endif
	:: qs[t] == Q_HELD ->
		qs[t] = Q_OUT;
		held--;
		q_release()
	:: qs[t] == Q_RES ->
		qs[t] = Q_OUT;
		q_release()
	:: else -> skip
	fi;
#ifndef BUG_UNQUEUE_NO_TIMER_LOCK
	if
	:: dres[t] ->
		assert(timed);
		dres[t] = false;
		tdres--
	:: else -> skip
	fi
#endif
}

/* token.c ctp__token_fire of a task token: the guard (finishing++), the
 * CAS; caught queued: pool_unqueue (load `armed`, then the timer
 * lock if set, runq.lock), the done, then the finished count and the
 * guard down in one atomic.
 * Caller's locals: aw, anf, adr, tm. */
inline fire_task(t, r, old) {
	finishing++;
	fire_cas(t, r, old);
	if
	:: old == QUEUED ->
#ifdef BUG_UNQUEUE_NO_TIMER_LOCK
		tm = false;
#else
		tm = armed;
#endif
		if
		:: tm ->
			d_step {
				tlock == 0 && qlock == 0 ->
				unqueue_one(t, tm);
				q_check();
				t_check()
			}
		:: else ->
			d_step {
				qlock == 0 ->
				unqueue_one(t, tm);
				q_check()
			}
		fi;
		q_after();
		/* the done, then the finished count and the guard down
		 * (pool_segment_done: one atomic; one step with the done:
		 * only the order matters) */
		d_step {
			/* nothing of it stays queued, nor in the timer */
			assert(qs[t] == Q_OUT && !dres[t]);
			assert(done_count[t] == 0);
			done_count[t]++;
			status[t] = r;
			tm = false;
			unfinished--;
			finishing--
		}
	:: else -> finishing--
	fi;
	old = 0
}

/* task.c ctp__task_finish_ran's end: the due heap reservation, the done,
 * the finished count */
inline finish_ran(t, st) {
	if
	:: dres[t] ->
		d_step {
			tlock == 0 ->
			dres[t] = false;
			tdres--;
			t_check()
		}
	:: else -> skip
	fi;
	d_step {
		assert(done_count[t] == 0);
		done_count[t]++;
		status[t] = st;
		st = 0;
		unfinished--
	}
}

/* pool.c worker_main / next_task / next_popped / q_take / run_task /
 * requeue / release_held (no scout: a worker that finds nothing parks) */
proctype worker(byte w)
{
	byte t, aw, old, st, d;
	bool anf, adr, stop, skp, ok, shut, tm;

next_task:
	atomic { qlock == 0 -> qlock = _pid; current[w] = 0; stop = stopping }
loop:
	if
	:: stop -> d_step { q_unlock() }; goto leave
	:: else -> skip
	fi;
	/* q_take: the first of the highest priority; a periodic one keeps
	 * its slot (HELD), another gives it back (OUT) */
	d_step {
		q_first(t);
		if
		:: t != 0 ->
			lst[prio[t]]??eval(t);
			if
			:: per[t] -> qs[t] = Q_HELD; held++
			:: else -> qs[t] = Q_OUT; q_release()
			fi;
			current[w] = t
		:: else -> skip
		fi
	}
	if
	:: t != 0 ->
		d_step { q_wake_for_work(); q_unlock() }
		q_after();
#ifndef BUG_SKIP_STARTED_RUN
		/* next_task: a periodic series is not started again once
		 * the queue is closed: fired with -ESHUTDOWN before the
		 * start (`closed` read without the lock), which then fails */
		if
		:: per[t] && closed -> fire_task(t, R_SHUT, old)
		:: else -> skip
		fi;
#endif
		/* ctp__task_start: CAS QUEUED -> RUNNING */
		d_step {
			if
			:: phase[t] == QUEUED ->
				phase[t] = RUNNING;
				assert(!passed[w] || collected[t]);
				/* not after its token fired; not while DELAYED,
				 * nor before its due time came */
				assert(reason[t] == 0 && !won_queued[t]);
				assert(qs[t] != Q_DEL && dueok[t]);
				/* the close ends a series: at most the start
				 * racing it comes after it */
				assert(!(closed && late[t]));
				late[t] = closed;
				fnrun[t] = false
			:: else -> t = 0
			fi
		}
		if
		:: t == 0 -> goto next_task
		:: else -> skip
		fi;
		if
		:: !per[t] ->
			/* fn, then finish_ran: RUNNING -> DONE (completed
			 * counted before) */
			d_step {
				started[t] = true;
				fnrun[t] = true;
				ip_owed[t] = false;
				assert(phase[t] == RUNNING);
				phase[t] = DONE;
				st_completed++;
				st = S_RAN
			}
			finish_ran(t, st)
		:: else ->
			/* run_task, periodic: fn. With BUG_SKIP_STARTED_RUN
			 * the old run_task: a run started once the queue was
			 * closed is skipped (skp) */
			d_step {
#ifdef BUG_SKIP_STARTED_RUN
				skp = closed;
#else
				skp = false;
#endif
				if
				:: !skp ->
					started[t] = true;
					fnrun[t] = true;
					ip_owed[t] = false
				:: else -> skip
				fi
			}
			if
			:: !skp ->
#ifndef NO_SELF
				/* fn may cancel its own token */
				if
				:: fire_task(t, R_CANCEL, old)
				:: skip
				fi;
#endif
				st = S_RAN
			:: else -> skip
			fi;
			/* requeue: ran, then the CAS RUNNING -> QUEUED unless
			 * it fired */
			d_step {
				if
				:: !skp -> ran[t] = true
				:: else -> skip
				fi;
				if
				:: phase[t] == RUNNING && reason[t] == 0 ->
					phase[t] = QUEUED; ok = true
				:: else -> ok = false
				fi
			}
			if
			:: ok ->
				/* both locks: re-place it unless a fire took it
				 * out (OUT) or the queue is closed */
				atomic {
					tlock == 0 && qlock == 0 ->
					tlock = _pid; qlock = _pid;
					if
					:: qs[t] == Q_HELD ->
#ifndef BUG_REQUEUE_NO_CLOSED_CHECK
						if
						:: closed -> shut = true
						:: else ->
#endif
							held--;
							/* next_due */
							if
							:: rs[t] != 0 -> d = rs[t]; rs[t] = 0
							:: else ->
								if
								:: d = D_NOW
								:: d = D_SHORT
#ifdef LONG_PERIOD
								/* a period of hours */
								:: d = D_LONG
#endif
								fi
							fi;
							place(t, d);
							d = 0
#ifndef BUG_REQUEUE_NO_CLOSED_CHECK
						fi
#endif
					:: else -> skip
					fi;
					qt_unlock()
				}
				q_after();
				if
				:: shut ->
					shut = false;
					fire_task(t, R_SHUT, old)
				:: else -> skip
				fi;
				d_step { ok = false; skp = false; st = 0; t = 0 }
			:: else ->
				/* its token fired during the run (or, for a
				 * skipped run of BUG_SKIP_STARTED_RUN, since the
				 * start): release_held, then finish_ran (the
				 * worker's completed count) or, skipped, the old
				 * ctp__task_finish_skipped */
				d_step {
					qlock == 0 ->
					assert(qs[t] == Q_HELD);
					qs[t] = Q_OUT;
					held--;
					q_release();
					q_check()
				}
				q_after();
				d_step {
					if
					:: skp ->
						/* ctp__task_finish_skipped: the
						 * token's reason; DONE and
						 * completed if an earlier run
						 * ran, else CANCELLED, counted by
						 * the reason */
						assert(reason[t] != 0);
						st = reason[t];
						if
						:: ran[t] ->
							phase[t] = DONE;
							st_completed++
						:: else ->
							phase[t] = CANCELLED;
							if
							:: reason[t] == R_TIME ->
								st_timed_out++
							:: reason[t] == R_SHUT ->
								st_dropped++
							:: reason[t] == R_CANCEL ->
								st_cancelled++
							fi
						fi
					:: else ->
						st_completed++;
						phase[t] = DONE
					fi;
					skp = false
				}
				finish_ran(t, st)
			fi
		fi;
		t = 0;
		goto next_task
	:: else ->
		/* park: listed under the lock */
		d_step {
			pk[w] = 1;
			istack[nidle] = w;
			nidle++;
			q_unlock()
		}
		(pk[w] == 0);
		atomic {
			qlock == 0 -> qlock = _pid;
			waking--;
			claimed[w] = false;
			stop = stopping
		}
		goto loop
	fi;
leave:
	alive--
}

#if NT > 1
#define PROMOTABLE ((qs[1] == Q_DEL && !dlong[1]) || (qs[2] == Q_DEL && !dlong[2]))
#else
#define PROMOTABLE (qs[1] == Q_DEL && !dlong[1])
#endif

/* timer.c timer_main: promotes a task whose (SHORT) due time came
 * (pool_promote, both locks); exits once `stop` is set */
proctype timer()
{
	byte t, aw;
	bool anf, adr;

	do
	:: atomic {
		tlock == 0 && qlock == 0 && !tstop && PROMOTABLE ->
		if
		:: qs[1] == Q_DEL && !dlong[1] -> t = 1
#if NT > 1
		:: qs[2] == Q_DEL && !dlong[2] -> t = 2
#endif
		fi;
		tlock = _pid; qlock = _pid;
#ifndef BUG_PROMOTE_NO_WAKE
		link_wake(t);
#else
		lst[prio[t]]!t; qs[t] = Q_LINK; dueok[t] = true;
		if
		:: closed -> adr = true
		:: else -> skip
		fi;
#endif
		t = 0;
		qt_unlock()
	   }
	   q_after()
	:: atomic { tlock == 0 && tstop -> break }
	od;
	alive--
}

/* pool.c submit / admit / enqueue, tasks 1..NT in turn */
proctype submitter()
{
	byte t = 1, r, d, old, aw;
	bool anf, adr, fast, sched, tm, shut;

	do
	:: t > NT -> break
	:: else ->
		fast = (kind[t] == K_ONCE || kind[t] == K_PER);
		sched = (kind[t] != K_ONCE);
		r = 0;
		/* a delayed or periodic task: a place in the due heap
		 * (ctp__timer_dreserve: -ESHUTDOWN once stopped; sets
		 * armed); t->dres */
		if
		:: sched ->
			d_step {
				tlock == 0 ->
				if
				:: tstop -> r = 2
				:: else ->
					tdres++;
					armed = true;
					dres[t] = true
				fi;
				t_check()
			}
		:: else -> skip
		fi;
		if
		:: r != 0 -> goto next   /* never counted */
		:: else -> skip
		fi;
		/* admit (CAP >= NT: room); the fast path links here */
		d_step {
			qlock == 0 -> qlock = _pid;
			if
			:: closed -> r = 2
			:: else ->
				count++;
				unfinished++;  /* accepted with its slot */
				qs[t] = Q_RES;
				acc[t] = true;
				r = 1;
				if
				:: fast -> link_wake(t)
				:: else -> skip
				fi
			fi;
			q_unlock()
		}
		q_after();
		if
		:: r == 1 && !fast ->
#ifdef DEADLINE
			fireable[t] = R_TIME;     /* ctp__timer_add */
#endif
			/* enqueue: timed = t->dres (read without the lock: a
			 * fire's unqueue may clear it meanwhile, and then the
			 * task is OUT) */
			tm = dres[t];
			atomic {
				(!tm || tlock == 0) && qlock == 0 ->
				if
				:: tm -> tlock = _pid
				:: else -> skip
				fi;
				qlock = _pid;
				if
				:: qs[t] != Q_RES -> skip  /* retired */
				:: qs[t] == Q_RES && per[t] && closed ->
					shut = true
				:: else ->
					if
					:: tm ->
						/* place(now): the due time is
						 * ahead, or has passed already
						 * (the submitter was slow) */
						if
						:: d = D_NOW
						:: d = D_SHORT
#ifdef LONG_DELAY
						:: per[t] || !drainfv ->
							d = D_LONG;
							anylong = anylong || !per[t]
#endif
						fi;
						place(t, d);
						d = 0
					:: else -> link_wake(t)
					fi
				fi;
				if
				:: tm -> qt_unlock()
				:: else -> q_unlock()
				fi
			}
			q_after();
			tm = false;
			if
			:: shut -> shut = false; fire_task(t, R_SHUT, old)
			:: else -> skip
			fi
		:: else -> skip
		fi;
		if
		:: r == 1 ->
			/* accepted: the handle */
			if
			:: fireable[t] == 0 -> fireable[t] = R_CANCEL
			:: else -> skip
			fi;
			handle[t] = true
		:: else ->
			/* back out: never counted (refused by admit); the
			 * reservation back */
			if
			:: dres[t] ->
				d_step {
					tlock == 0 ->
					dres[t] = false;
					tdres--;
					t_check()
				}
			:: else -> skip
			fi
		fi;
next:
		skip;
		d_step { t++; r = 0 }
	od;
	sub_done = true
}

/* ctp_task_cancel of one task (its handle), or its deadline from admit on
 * (-DDEADLINE), or nothing */
proctype canceller()
{
	byte c, old, aw;
	bool anf, adr, tm;

	select(c : 0 .. NT);
	if
	:: c == 0 -> skip
	:: else ->
		(fireable[c] != 0 || sub_done);
		if
		:: fireable[c] != 0 -> fire_task(c, fireable[c], old)
		:: else -> skip
		fi
	fi;
	c = 0
}

#ifdef RESCHED
/* pool.c ctp_task_reschedule(t, delay) of task RESCHED, once its submit
 * returned it */
proctype rescheduler()
{
	byte t = RESCHED, d, r, aw, ph, rn;
	bool anf, adr, resv;

	(handle[t] || sub_done);
	if
	:: !handle[t] -> goto out
	:: else -> skip
	fi;
	if
	:: d = D_NOW
	:: d = D_SHORT
#ifdef LONG
	:: atomic {
		per[t] || !drainfv ->
		d = D_LONG;
		anylong = anylong || !per[t]
	   }
#endif
	fi;
	/* timer->lock, then a place in the due heap first (it arms the
	 * fire's side before the look at the token) */
	atomic {
		tlock == 0 -> tlock = _pid;
		if
		:: d != D_NOW && !dres[t] ->
			if
			:: tstop -> r = 2
			:: else ->
				tdres++;
				rsv_pending++;
#ifndef BUG_ARMED_AFTER_LOOK
				armed = true;
#endif
				resv = true
			fi
		:: else -> skip
		fi
	}
	/* q_lock, the look at the token */
	atomic {
		qlock == 0 -> qlock = _pid;
		ph = phase[t];
		rn = reason[t]
	}
#ifdef BUG_ARMED_AFTER_LOOK
	if
	:: resv -> armed = true
	:: else -> skip
	fi;
#endif
	d_step {
		if
		:: rn != 0 || ph == DONE || ph == CANCELLED ->
			r = 3                       /* -EALREADY */
		:: else ->
			if
			:: ph == RUNNING ||
			   (qs[t] != Q_LINK && qs[t] != Q_DEL) ->
				/* running, or a worker took it */
				if
				:: per[t] -> rs[t] = d
				:: else -> skip
				fi;
				r = 4                   /* -EINPROGRESS */
			:: else ->
				if
				:: d != D_NOW && !dres[t] && !resv ->
					skip            /* r: why not */
				:: else ->
					if
					:: qs[t] == Q_LINK -> lst[prio[t]]??eval(t)
					:: else -> skip /* ctp__timer_ddelete */
					fi;
					if
					:: d != D_NOW && !dres[t] ->
						dres[t] = true;
						resv = false;
						rsv_pending--
					:: else -> skip
					fi;
					place(t, d);
					r = 1
				fi
			fi
		fi;
		q_check();
		assert(qlock == _pid);
		qlock = 0;
		/* an unused reservation back (under timer->lock) */
		if
		:: resv -> tdres--; rsv_pending--; resv = false
		:: else -> skip
		fi;
		t_check();
		tlock = 0;
		ph = 0;
		rn = 0
	}
	q_after();
out:
	skip;
	d_step { d = 0; r = 0 }
}
#endif

/* pool.c ctp_pool_shutdown (first caller): close_queue, drain,
 * cancel_step, drop_queued, ctp__timer_stop, wait_quiet */
proctype shutdown()
{
	byte i, n, t, c, v, old, snap, item, aw;
	bool anf, adr, tm;
	byte scan[NW];
	bool ended[NT + 1];

	/* close_queue: both locks; closed; every periodic series waiting in
	 * a list or the due heap is taken out (OUT, its slot back) */
	d_step {
		tlock == 0 && qlock == 0 -> tlock = _pid; qlock = _pid;
		closed = true;
		t = 1;
		do
		:: t <= NT ->
			if
			:: per[t] && qs[t] == Q_LINK ->
				lst[prio[t]]??eval(t);
				qs[t] = Q_OUT;
				q_release();
				ended[t] = true
			:: per[t] && qs[t] == Q_DEL ->
				qs[t] = Q_OUT;
				q_release();
				ended[t] = true
			:: else -> skip
			fi;
			t++
		:: else -> break
		od;
		t = 1;
		adr = false;            /* bumped below anyway */
		qt_unlock()
	}
	nf++;
	dr++;
	/* ... and fired with -ESHUTDOWN, outside the locks */
	do
	:: t <= NT ->
		if
		:: ended[t] -> fire_task(t, R_SHUT, old); ended[t] = false
		:: else -> skip
		fi;
		t++
	:: else -> break
	od;
	t = 0;
	/* drain: CTP_FOREVER (until pool_idle), or 0 / elapsed */
	if
	:: atomic { !anylong -> drainfv = true }
	:: skip
	fi;
	if
	:: drainfv -> (unfinished == 0); drainfv = false
	:: else -> skip
	fi;

	/* cancel_step: under the lock: stopping, wake every idle worker,
	 * collect every worker's current */
	d_step {
		qlock == 0 ->
		stopping = true;
		do
		:: nidle > 0 ->
			nidle--;
			v = istack[nidle];
			istack[nidle] = 0;
			waking++;
			claimed[v] = true;
			pk[v] = 0
		:: else -> break
		od;
		v = 0;
		i = 0;
		n = 0;
		do
		:: i < NW ->
			if
			:: current[i] != 0 ->
				scan[n] = current[i];
				collected[scan[n]] = true;
				n++
			:: else -> skip
			fi;
			passed[i] = true;
			i++
		:: else -> break
		od;
		i = 0;
		q_check()
	}
	do
	:: i < n ->
		fire_task(scan[i], R_SHUT, old);
		d_step { scan[i] = 0; i++ }
	:: else -> break
	od;
	skip;
	d_step {
		i = 0;
		n = 0;
		t = 1;
		do
		:: t <= NT -> assert(phase[t] != RUNNING || reason[t] != 0); t++
		:: else -> break
		od;
		t = 0
	}

	/* drop_queued: both locks; the first of the lists, else the first
	 * of the due heap; count - held (HELD tasks are not waited for) */
	do
	:: d_step {
		tlock == 0 && qlock == 0 -> tlock = _pid; qlock = _pid;
		snap = dr;
		q_first(item);
		if
		:: item != 0 ->
			lst[prio[item]]??eval(item);
			qs[item] = Q_OUT;
			q_release()
		:: else ->
			/* dues[0]: any task of the heap */
			t = 1;
			do
			:: t <= NT && qs[t] == Q_DEL -> item = t; break
			:: t <= NT && qs[t] != Q_DEL -> t++
			:: t > NT -> break
			od;
			t = 0;
			if
			:: item != 0 -> qs[item] = Q_OUT; q_release()
			:: else -> skip
			fi
		fi;
		c = count - held;
		adr = false;
		qt_unlock()
	   }
	   q_after();
	   if
	   :: item != 0 ->
		fire_task(item, R_SHUT, old);
		item = 0
	   :: item == 0 && c == 0 -> break
	   :: else ->
		atomic { dr != snap -> snap = 0 }
	   fi
	od;
	atomic { snap = 0; c = 0 }
	/* ctp__timer_stop */
	d_step { tlock == 0 -> tstop = true }

	/* grace = CTP_FOREVER: wait_quiet */
	do
	:: v = alive;
	   c = finishing;
	   if
	   :: c == 0 && v == 0 -> break
	   :: c != 0 -> (finishing == 0)
	   :: c == 0 && v != 0 -> (alive == 0)
	   fi
	od;
	atomic { c = 0; v = 0 }
	/* ctp_pool_shutdown returns 0: every accepted task's done has
	 * returned, nothing of it is left queued, in the due heap or reserved */
	d_step {
		t = 1;
		do
		:: t <= NT ->
			assert(!acc[t] || (done_count[t] == 1 &&
			       qs[t] == Q_OUT && !dres[t]));
			t++
		:: else -> break
		od;
		t = 0;
		/* (a submit racing the shutdown may still hold a due heap
		 * reservation it is about to give back: checked at the end) */
		assert(count == 0 && held == 0 &&
		       len(lst[0]) + len(lst[1]) == 0)
	}
}

init
{
	byte i, n;

	d_step {
		kind[1] = K1; prio[1] = P1;
#if NT > 1
		kind[2] = K2; prio[2] = P2;
#endif
		i = 1;
		do
		:: i <= NT ->
			phase[i] = QUEUED;
			per[i] = (kind[i] == K_PER || kind[i] == K_PERD);
			i++
		:: else -> break
		od;
		alive = NW + 1;
		i = 0
	}
	atomic {
		do
		:: i < NW -> run worker(i); i++
		:: else -> break
		od;
		run timer();
		run submitter();
		run canceller();
#ifdef RESCHED
		run rescheduler();
#endif
		run shutdown()
	}
	(_nr_pr == 1);
	/* everyone has returned: the end-of-run properties */
	d_step {
		assert(alive == 0 && stopping && tstop);
		assert(count == 0 && held == 0 && unfinished == 0 &&
		       finishing == 0 && tdres == 0 && rsv_pending == 0);
		assert(len(lst[0]) + len(lst[1]) == 0 && waking == 0 &&
		       nidle == 0);
		i = 1;
		n = 0;
		do
		:: i <= NT ->
			/* exactly once for every accepted task */
			assert(done_count[i] == (acc[i] -> 1 : 0));
			/* a cancel's -EINPROGRESS was true: the run ran */
			assert(!ip_owed[i]);
			assert(qs[i] == Q_OUT && !dres[i]);
			/* ran: DONE, with the last run's status, or (a
			 * periodic series ended between runs) the reason;
			 * never ran: CANCELLED with its first reason */
			assert(!acc[i] ||
			       (started[i] && phase[i] == DONE &&
			        (status[i] == S_RAN ||
			         (per[i] && status[i] == reason[i] &&
			          reason[i] != 0))) ||
			       (!started[i] && phase[i] == CANCELLED &&
			        status[i] == reason[i] && reason[i] != 0));
			if
			:: acc[i] -> n++
			:: else -> skip
			fi;
			i++
		:: else -> break
		od;
		/* a series counts once: completed, cancelled, timed out or
		 * dropped */
		assert(st_completed + st_cancelled + st_timed_out +
		       st_dropped == n);
		/* completed: the accepted tasks whose fn ran */
		i = 1;
		n = 0;
		do
		:: i <= NT ->
			if
			:: acc[i] && started[i] -> n++
			:: else -> skip
			fi;
			i++
		:: else -> break
		od;
		assert(st_completed == n);
		i = 0;
		n = 0
	}
}
