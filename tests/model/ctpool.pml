/*
 * ctpool.pml: the task state machine and the shutdown handshake of ctpool,
 * checked exhaustively with spin (scripts/model.sh). See README.md.
 *
 * One step of this model is one atomic instruction (or one lock operation)
 * of the C code; the file/function each part follows is named beside it.
 *
 * Idle workers (pool.c "Parking"): the scout role (spinning), the park list
 * (listed[], parked), each worker's park word (pk[]), the submit's wake
 * after its push, pass_baton before fn, and the shutdown's unpark_all. The
 * scout's polling may give up at any step (its time limit). A waker claims
 * the listed worker of lowest index (the C list is LIFO: the model fixes
 * one choice; the workers are symmetric).
 *
 * With -DSUBMITS_FIRST the shutdown starts only after the last submit
 * returned, so a lost not_full wake-up is a deadlock (otherwise the close
 * would rescue the sleeper).
 *
 * Bounds (override with spin -DNAME=value): NW workers, NT tasks submitted
 * one after another by one submitter, CAP queue capacity (CAP < NT makes
 * the submitter block on not_full), one canceller (ctp_task_cancel on one
 * task it has a handle to), one shutdown caller.
 *
 * Planted bugs (each must make spin report an error):
 *   BUG_STOP_OUTSIDE_LOCK  next_task reads `stopping` before taking the
 *                          worker's lock: a task can start after the cancel
 *                          step's lock pass and is never fired.
 *   BUG_NO_LOCK_PASS       cancel_step reads each worker's `current`
 *                          without taking the worker's lock.
 *   BUG_PARK_NO_RECHECK    park() sleeps without looking at the ring and
 *                          `stopping` once it is listed: a lost wake-up.
 *   BUG_NO_ANNOUNCE        a submitter waiting for room does not announce
 *                          itself in full_waiters, so releases skip the
 *                          not_full bump: a lost wake-up.
 * Two bugs this model found in src/, fixed there since; each is kept as a
 * planted variant that must still be caught (README.md):
 *   BUG_ADMIT_AFTER_CLOSE  `closed` apart from `count`: the admission CAS
 *                          can succeed after the close (src/ now keeps the
 *                          CLOSED bit in the count word).
 *   BUG_DROP_NO_WAKE       ctp__queue_unreserve bumps only not_full, so
 *                          drop_queued sleeps forever when a concurrent
 *                          firer gives back the last slot (src/ now also
 *                          bumps not_empty once the queue is closed).
 */

#ifndef NW
#define NW 2
#endif
#ifndef NT
#define NT 1
#endif
#ifndef CAP
#define CAP 1
#endif

/* task phases: CTP_TASK_* (the token state word, bits 8..10) */
#define QUEUED    1
#define RUNNING   2
#define DONE      3
#define CANCELLED 4

/* fired reasons (bits 0..7; 0 = not fired) */
#define R_CANCEL 1   /* -ECANCELED */
#define R_SHUT   2   /* -ESHUTDOWN */

/* try_reserve results */
#define OK    1
#define SHUT  2
#define AGAIN 3
#define CHECK 4
#define CAS   5

/* ---- the task state word: (phase, reason), changed only by a CAS ---- */
byte phase[NT + 1];
byte reason[NT + 1];

/* ---- ghosts, for the properties ---- */
byte done_count[NT + 1];  /* done(status) calls */
byte status[NT + 1];      /* status given to done: 0 = fn ran, else reason */
bool accepted[NT + 1];    /* admitted: the submit returned 0 */
bool handle[NT + 1];      /* the submit returned: the canceller may use it */
bool won_queued[NT + 1];  /* a fire CAS replaced QUEUED */
bool started[NT + 1];     /* fn was called */
bool passed[NW];          /* the cancel step has passed this worker's lock */
bool sub_done;            /* the submitter returned */

/* ---- queue.c: struct ctp_queue ---- */
byte count;               /* admitted items (CAS only) */
bool closed;
byte ne;                  /* not_empty event count */
byte nf;                  /* not_full event count */
byte fw;                  /* full_waiters */
chan ring = [NT] of { byte };   /* FIFO; never full (NT pushes at most) */

/* ---- pool.c: struct ctp_pool / ctp__worker ---- */
bool stopping;
byte alive;
byte unfinished;
byte wlock[NW];           /* worker->lock: 0 free, else holder's _pid */
byte current[NW];         /* worker->current: 0 none, else task id */
byte spinning;            /* the scout role: 0 or 1 */
byte parked;              /* length of the park list */
bool listed[NW];          /* on the park list (park_lock) */
byte pk[NW];              /* worker->park: 1 while asleep unclaimed */

inline lock(w)   { atomic { wlock[w] == 0 -> wlock[w] = _pid } }
inline unlock(w) { assert(wlock[w] == _pid); wlock[w] = 0 }

/* ck_ring pop: takes the oldest pointer or sees the ring empty (0) */
inline ring_pop(item) {
	atomic { if :: len(ring) > 0 -> ring?item :: else -> item = 0 fi }
}

/* queue.c ctp__queue_unreserve: count--, then bump not_full */
inline unreserve() {
	count--;
#ifndef BUG_DROP_NO_WAKE
	if
	:: closed -> ne++
	:: else -> skip
	fi;
#endif
	if
	:: fw > 0 -> nf++
	:: else -> skip
	fi
}

/* pool.c unpark_one: under park_lock take a listed worker off the list,
 * then clear its park word (its futex wake). v: the claimed worker or NW. */
inline unpark_one(v, k) {
	d_step {
		v = NW;
		k = 0;
		do
		:: k < NW && listed[k] -> v = k; break
		:: k < NW && !listed[k] -> k++
		:: k >= NW -> break
		od;
		if
		:: v < NW -> listed[v] = false; parked--
		:: else -> skip
		fi;
		k = 0
	}
	if
	:: v < NW -> pk[v] = 0
	:: else -> skip
	fi;
	v = 0
}

/* pool.c scout_take: CAS spinning 0 -> 1 */
inline scout_take(scout) {
	atomic {
		if
		:: spinning == 0 -> spinning = 1; scout = true
		:: else -> skip
		fi
	}
}

/* token.c fire_cas: sets the reason; QUEUED -> CANCELLED in the same CAS.
 * old = the phase it replaced, or 0 when it had fired or finished
 * (-EALREADY). */
inline fire_cas(t, r, old) {
	d_step {
		if
		:: reason[t] != 0 || phase[t] == DONE -> old = 0
		:: else ->
			old = phase[t];
			reason[t] = r;
			if
			:: phase[t] == QUEUED -> phase[t] = CANCELLED; won_queued[t] = true
			:: else -> skip
			fi
		fi
	}
}

/* task.c ctp__task_finish_unrun + finish: leave the queue, done(reason),
 * then the pool's unfinished count */
inline finish_unrun(t, r) {
	unreserve();
	/* done(reason), then unfinished-- */
	d_step {
		assert(done_count[t] == 0);
		done_count[t]++;
		status[t] = r;
		unfinished--
	}
}

/* token.c ctp__token_fire for a task token without children: the CAS
 * (phase 1), waking (phase 2a: nothing to model), then finish the task if
 * it was caught queued (phase 2b re-reads the phase) */
inline token_fire(t, r, old) {
	fire_cas(t, r, old);
	if
	:: old != 0 && phase[t] == CANCELLED -> finish_unrun(t, r)
	:: else -> skip
	fi
}

/* pool.c worker_main / next_task / run_task / idle_wait / park */
proctype worker(byte w)
{
	byte t, item, v, k;
	bool stop, scout, found, claimed;

	do
	::
#ifdef BUG_STOP_OUTSIDE_LOCK
		stop = stopping;
		atomic { wlock[w] == 0 -> wlock[w] = _pid; current[w] = 0; t = 0 }
#else
		/* lock; prev = current; current = NULL; read stopping */
		atomic {
			wlock[w] == 0 -> wlock[w] = _pid;
			current[w] = 0;
			stop = stopping;
			t = 0
		}
#endif
		do
		:: stop -> break
		:: else ->
			ring_pop(item);          /* ... then look */
			if
			:: item == 0 -> break
			:: else ->
				/* ctp__task_start: CAS QUEUED -> RUNNING; then
				 * (under the lock, invisible to the cancel step)
				 * current = t and the count's part of unreserve */
				d_step {
					if
					:: phase[item] == QUEUED ->
						phase[item] = RUNNING;
						/* nothing starts once shutdown
						 * has passed this lock */
						assert(!passed[w]);
						t = item;
						current[w] = t;
						count--
					:: else -> skip  /* a tombstone */
					fi;
					item = 0
				}
				if
				:: t != 0 ->
					/* the rest of ctp__queue_unreserve */
#ifndef BUG_DROP_NO_WAKE
					if
					:: closed -> ne++
					:: else -> skip
					fi;
#endif
					if
					:: fw > 0 -> nf++
					:: else -> skip
					fi;
					break
				:: else -> skip
				fi
			fi
		od;
		if
		:: t != 0 ->
			unlock(w);
			/* run_task: scout_leave, then pass_baton */
			if
			:: scout -> spinning = 0; scout = false
			:: else -> skip
			fi;
			if
			:: parked > 0 ->
				if
				:: len(ring) > 0 -> unpark_one(v, k)
				:: else -> skip
				fi
			:: else -> skip
			fi;
			/* fn runs (it may poll reason[t]) */
			d_step { assert(!won_queued[t]); started[t] = true }
			/* ctp__task_finish_ran: RUNNING -> DONE keeping the
			 * reason; done(status); unfinished-- */
			d_step {
				assert(phase[t] == RUNNING);
				phase[t] = DONE;
				assert(done_count[t] == 0);
				done_count[t]++;
				status[t] = 0;
				unfinished--
			}
			/* back to an empty ring: scout (run_task) */
			if
			:: len(ring) == 0 -> scout_take(scout)
			:: else -> skip
			fi
		:: t == 0 && stop -> unlock(w); break
		:: else ->
			unlock(w);
			/* idle_wait: the scout polls, the others park */
			if
			:: !scout -> scout_take(scout)
			:: else -> skip
			fi;
			found = false;
			if
			:: scout ->
				if
				:: len(ring) > 0 || stopping -> found = true
				:: true -> skip          /* its time is up */
				fi;
				if
				:: !found -> spinning = 0; scout = false
				:: else -> skip
				fi
			:: else -> skip
			fi;
			if
			:: found -> found = false    /* look again */
			:: else ->
				/* park: listed, then look, then sleep */
				pk[w] = 1;
				d_step { listed[w] = true; parked++ }
				claimed = true;
#ifndef BUG_PARK_NO_RECHECK
				if
				:: len(ring) > 0 || stopping ->
					/* off the list, unless claimed */
					d_step {
						if
						:: listed[w] ->
							listed[w] = false;
							parked--;
							claimed = false
						:: else -> skip
						fi
					}
				:: else -> skip
				fi;
#endif
				if
				:: claimed -> (pk[w] == 0)
				:: else -> skip
				fi;
				claimed = false
			fi
		fi
	od;
	if
	:: scout -> spinning = 0
	:: else -> skip
	fi;
	alive--                                  /* ctp__pool_thread_exit */
}

/* pool.c ctp_pool_submit, queue_wait = CTP_FOREVER, tasks 1..NT in turn.
 * ctp_pool_submit's own early `closed` check is left out: try_reserve
 * checks it again and `closed` never goes back. */
proctype submitter()
{
	byte t = 1, c, snap, r, v, k;
	bool counted;

	do
	:: t > NT -> break
	:: else ->
		/* queue.c ctp__queue_reserve */
		do
		:: snap = nf;                    /* snapshot first ... */
			/* try_reserve: c = count, then the loop's first check */
			d_step {
				c = count;
				if
				:: closed -> r = SHUT
				:: !closed && c >= CAP -> r = AGAIN
				:: else -> r = CAS
				fi
			}
			do
			:: r == CHECK ->
				d_step {
					if
					:: closed -> r = SHUT
					:: !closed && c >= CAP -> r = AGAIN
					:: else -> r = CAS
					fi
				}
			:: r == CAS ->
				/* the admission CAS on count; the submit's
				 * unfinished++ is folded in (see README) */
				d_step {
					if
#ifndef BUG_ADMIT_AFTER_CLOSE
					:: closed -> r = SHUT
					:: !closed && count == c ->
#else
					:: count == c ->
#endif
						count++;
						accepted[t] = true;
						unfinished++;
						r = OK
					:: else -> c = count; r = CHECK
					fi
				}
			:: r == OK || r == SHUT || r == AGAIN -> break
			od;
			if
			:: r == AGAIN && !counted ->
				/* announce in full_waiters, then look again */
#ifndef BUG_NO_ANNOUNCE
				fw++;
#endif
				counted = true
			:: r == AGAIN && counted ->
				/* ... sleep while unchanged: ctp__ec_wait */
				atomic { nf != snap -> snap = 0 }
			:: else -> snap = 0; break
			fi
		od;
		if
		:: counted ->
#ifndef BUG_NO_ANNOUNCE
			fw--;
#endif
			counted = false
		:: else -> skip
		fi;
		if
		:: r == OK ->
			ring!t;                  /* enqueue: the ring push ... */
			d_step { ne++; handle[t] = true }  /* ... then the bump */
			/* wake_for_push: no scout and someone parked */
			if
			:: spinning == 0 ->
				if
				:: parked > 0 -> unpark_one(v, k)
				:: else -> skip
				fi
			:: else -> skip
			fi
		:: else -> skip
		fi;
		d_step { t++; c = 0; r = 0 }
	od;
	sub_done = true
}

/* ctp_task_cancel(t) on one task it has a handle to, or no cancel at all
 * (t = 0). A deadline (the timer thread) fires a task the same way. */
proctype canceller()
{
	byte t, old;

	select(t : 0 .. NT);
	if
	:: t == 0 -> skip
	:: else ->
		(handle[t] || sub_done);
		if
		:: handle[t] -> token_fire(t, R_CANCEL, old)
		:: else -> skip
		fi
	fi;
	d_step { t = 0; old = 0 }
}

/* pool.c ctp_pool_shutdown (first caller) + cancel_step + drop_queued,
 * grace = CTP_FOREVER */
proctype shutdown()
{
	byte i, n, t, old, snap, item;
	byte scan[NW];
	bool drain;
	bool woke[NW];

#ifdef SUBMITS_FIRST
	/* the shutdown comes only after every submit returned: nothing but
	 * the releases can wake a submitter waiting for room */
	(sub_done);
#endif
	closed = true;
	nf++;                                    /* blocked submitters */
	/* drain: CTP_FOREVER, or 0 / elapsed (the scheduler may delay the
	 * next step as long as it likes, so "some time" is covered) */
	if
	:: drain = true
	:: drain = false
	fi;
	if
	:: drain -> (unfinished == 0)
	:: else -> skip
	fi;

	/* cancel_step */
	stopping = true;
	/* unpark_all: empty the list under park_lock, then clear each park
	 * word (idle workers exit now) */
	d_step {
		i = 0;
		do
		:: i < NW ->
			if
			:: listed[i] -> listed[i] = false; woke[i] = true
			:: else -> skip
			fi;
			i++
		:: else -> break
		od;
		parked = 0;
		i = 0
	}
	do
	:: i < NW ->
		if
		:: woke[i] -> pk[i] = 0
		:: else -> skip
		fi;
		i++
	:: else -> break
	od;
	i = 0;
	n = 0;
	do
	:: i < NW ->
		/* lock; collect current; unlock (one step: all of it is
		 * under the worker's lock) */
		atomic {
#ifndef BUG_NO_LOCK_PASS
			wlock[i] == 0 ->
#endif
			if
			:: current[i] != 0 -> scan[n] = current[i]; n++
			:: else -> skip
			fi;
			passed[i] = true;
			i++
		}
	:: else -> break
	od;
	i = 0;
	do
	:: i < n ->
		token_fire(scan[i], R_SHUT, old);
		d_step { scan[i] = 0; old = 0; i++ }
	:: else -> break
	od;
	skip;   /* (a jump target outside the d_step) */
	/* every task running now has heard the shutdown */
	d_step {
		t = 1;
		do
		:: t <= NT -> assert(phase[t] != RUNNING || reason[t] != 0); t++
		:: else -> break
		od;
		t = 0
	}

	/* drop_queued */
	do
	:: snap = ne;
		do
		:: ring_pop(item);
			if
			:: item == 0 -> break
			:: else ->
				token_fire(item, R_SHUT, old);
				d_step { item = 0; old = 0 }
			fi
		od;
		if
		:: count == 0 -> snap = 0; break
		:: else ->
			/* a submit still pushing: its bump wakes us */
			atomic { ne != snap -> snap = 0 }
		fi
	od;

	/* grace: CTP_FOREVER */
	(alive == 0)
}

init
{
	byte i;

	d_step {
		i = 1;
		do
		:: i <= NT -> phase[i] = QUEUED; i++
		:: else -> break
		od;
		alive = NW;
		i = 0
	}
	atomic {
		do
		:: i < NW -> run worker(i); i++
		:: else -> break
		od;
		run submitter();
		run canceller();
		run shutdown()
	}
	(_nr_pr == 1);
	/* everyone has returned: the end-of-run properties */
	d_step {
		assert(alive == 0 && stopping);
		assert(count == 0 && unfinished == 0);
		i = 1;
		do
		:: i <= NT ->
			/* exactly once for every accepted task, never otherwise */
			assert(done_count[i] == (accepted[i] -> 1 : 0));
			/* fn ran: status is its own; never ran: the first reason */
			assert(!accepted[i] ||
			       (started[i] && status[i] == 0 && phase[i] == DONE) ||
			       (!started[i] && status[i] == reason[i] &&
			        phase[i] == CANCELLED));
			i++
		:: else -> break
		od;
		i = 0
	}
}
