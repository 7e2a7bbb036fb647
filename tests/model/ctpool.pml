/*
 * ctpool.pml: the run queue, the task state machine and the shutdown
 * handshake of ctpool, checked exhaustively with spin (scripts/model.sh).
 * See README.md.
 *
 * One step of this model is one atomic instruction (or one lock operation)
 * of the C code; the file/function each part follows is named beside it.
 *
 * The run queue of commit 2dad400, with the worker loop of ebc0e98 (a
 * worker pops the head and records it as `current` under the lock, and
 * makes the start CAS after it); -DSTART_UNDER_LOCK models 2dad400's worker
 * instead (it pops until a start CAS succeeds, under the lock).
 *
 * The run queue (pool.c "the run queue", internal.h struct ctp__runq): one
 * mutex, runq.lock (qlock here), over the FIFO of tasks (the channel
 * `list`), the admission count, `closed`, `scout`, `waking`,
 * `full_waiters`, the idle list (a LIFO stack), each worker's `current`,
 * each task's qstate and `stopping`. A section under the lock that touches
 * only what the lock protects is one step (from the acquire to the
 * release); a section that also touches a word others change without the
 * lock (a task's state word: the start CAS under START_UNDER_LOCK; the
 * parent's state word in admit) splits at each such access. The futex
 * calls and event-count bumps a lock holder decided on (struct after: aw,
 * anf, adr here) come after the release, one step each (q_after).
 *
 * Submit paths (ctp_pool_submit -> submit): P_FAST (no parent, no deadline:
 * admit links the task in the admission's lock section), P_DEADLINE
 * (admit, ctp__timer_add: the deadline may fire from then on, enqueue) and
 * P_PARENT (admit, ctp__token_link, which a fired parent refuses: the
 * submit backs out through unreserve; else enqueue). The submitter picks
 * one per task (-DNO_PARENT: not P_PARENT; -DNO_SLOW: P_FAST only).
 *
 * With -DSUBMITS_FIRST the shutdown starts only after the last submit
 * returned, so a lost not_full wake-up is a deadlock (otherwise the close
 * would rescue the sleeper).
 *
 * Bounds (override with spin -DNAME=value): NW workers, NT tasks submitted
 * one after another by one submitter (queue_wait = CTP_FOREVER), CAP queue
 * capacity (CAP < NT makes the submitter wait for room), one canceller
 * (ctp_task_cancel of one task it has a handle to, the deadline of one task
 * (the timer fires it the same way), ctp_token_cancel of the parent, or
 * nothing), one shutdown caller.
 *
 * Planted bugs (each must make spin report an error):
 *   BUG_STOP_OUTSIDE_LOCK  next_task reads `stopping` before it takes
 *                          runq.lock: a task can start after the cancel
 *                          step and is never fired.
 *   BUG_NO_LOCK_PASS       cancel_step sets `stopping` and reads each
 *                          worker's `current` without runq.lock (only the
 *                          wake of the idle list under it).
 *   BUG_PARK_NO_RECHECK    a worker that found the list empty unlocks,
 *                          then lists itself on the idle list in a second
 *                          lock section without looking again: a lost
 *                          wake-up.
 *   BUG_NO_ANNOUNCE        a submitter waiting for room does not count
 *                          itself in full_waiters, so releases skip the
 *                          not_full bump: a lost wake-up.
 *   BUG_ADMIT_AFTER_CLOSE  admission reads `closed` before it takes the
 *                          lock: it can admit after the close (the old
 *                          design's bug, re-expressed).
 *   BUG_DROP_NO_WAKE       a slot release does not bump `drained` once
 *                          closed, so drop_queued sleeps forever when a
 *                          fire or a submit backing out gives back the
 *                          last slot of a task not yet linked.
 *
 *   BUG_GUARD_AFTER_CAS    a fire raises its pool's `finishing` only in
 *                          its retire, after its CAS (the first version of
 *                          the run queue, found by this model): a task
 *                          popped between the two gives its slot back,
 *                          and the shutdown returns before its done.
 *                          src/ raises it before the CAS (task.c, fire
 *                          guards) and lowers it again if the CAS caught
 *                          nothing queued.
 *
 *   BUG_CAP_NO_SENTINEL    q_wake_for_work holds a wake back for the CPU
 *                          cap without claiming a sentinel: a task queued
 *                          behind a stuck one waits forever (-DBLOCKS:
 *                          task 1 waits for task 2 to start, as a task
 *                          waiting for another one's result does).
 *
 * -DBLOCKS: task 1's fn waits (on a semaphore, say) until task 2 has
 * started, or cannot start any more (cancelled, or not accepted); a
 * fire of its own token (the shutdown's cancel step) also ends the wait,
 * as a token-aware wait does. With the cap (NCPU < NW) only the sentinel
 * can give task 2 a worker then.
 *
 * -DNO_QUIET_CHECK leaves out the assertion at the shutdown's return that
 * every accepted task's done has returned (the planted bugs above are
 * judged by the property each one breaks).
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
/* CPUs of the pool's affinity mask (runq.cap): with NCPU < NW, at most
 * NCPU awake workers are woken for queued tasks while they make progress,
 * and the sentinel wakes another once one is stuck ("Awake workers" in
 * pool.c). The default leaves the cap out, as src/ does for a pool with no
 * more workers than CPUs. */
#ifndef NCPU
#define NCPU NW
#endif

/* task phases: CTP_TASK_* (the token state word) */
#define QUEUED    1
#define RUNNING   2
#define DONE      3
#define CANCELLED 4

/* fired reasons (0 = not fired) */
#define R_CANCEL 1   /* -ECANCELED (ctp_task_cancel, the parent's cancel) */
#define R_SHUT   2   /* -ESHUTDOWN */
#define R_TIME   3   /* -ETIMEDOUT (a deadline) */

/* enum ctp__qstate */
#define Q_OUT  0
#define Q_RES  1     /* CTP__Q_RESERVED */
#define Q_LINK 2     /* CTP__Q_LINKED */

/* submit paths */
#define P_FAST     1
#define P_DEADLINE 2
#define P_PARENT   3

/* admit() outcomes */
#define A_OK     1
#define A_SHUT   2   /* -ESHUTDOWN */
#define A_PARENT 3   /* the parent's reason */
#define A_WAIT   4   /* full: sleeping on not_full */

/* ---- the task state word: (phase, reason), changed only by CASes ---- */
byte phase[NT + 1];
byte reason[NT + 1];

/* ---- ghosts, for the properties ---- */
byte done_count[NT + 1];  /* done(status) calls */
byte status[NT + 1];      /* status given to done: 0 = fn ran, else reason */
bool acc[NT + 1];         /* admitted and not backed out: the submit
                             returns (or has returned) 0 */
byte fireable[NT + 1];    /* the canceller may fire it now, with this
                             reason: R_TIME once its deadline is armed
                             (ctp__timer_add), R_CANCEL once the submit
                             returned (the handle) */
bool won_queued[NT + 1];  /* a fire CAS replaced QUEUED */
bool started[NT + 1];     /* fn was called */
bool passed[NW];          /* the cancel step has read this worker's
                             `current` */
bool collected[NT + 1];   /* the cancel step took it from a `current` */
bool claimed[NW];         /* taken off the idle list, not yet relocked */
bool sub_done;            /* the submitter returned */
byte st_completed, st_cancelled, st_timed_out, st_dropped; /* ctp_stats */
hidden byte ck_i, ck_r, ck_l, ck_w;  /* scratch of q_check */

/* ---- pool.c: struct ctp__runq (runq.lock) ---- */
byte qlock;               /* runq.lock: 0 free, else the holder's _pid */
chan list = [NT] of { byte };  /* the FIFO (head .. tail), linked tasks */
byte qs[NT + 1];          /* each task's qstate */
byte count;               /* admitted tasks (RESERVED or LINKED) */
bool closed;
bool qscout;              /* runq.scout */
byte waking;
byte fw;                  /* full_waiters */
byte istack[NW];          /* runq.idle: a LIFO (park_next) ... */
byte nidle;               /* ... of this many workers */
byte current[NW];         /* worker->current: 0 none, else task id */
bool stopping;            /* pool->stopping (written under the lock) */
byte nf;                  /* runq.not_full event count */
byte dr;                  /* runq.drained event count */
byte pk[NW];              /* worker->park (futex word) */
byte awake;               /* runq.awake: neither parked nor the sentinel */
byte sentinel;            /* runq.sentinel: 0 none, else worker + 1 */
bool inrun[NW];           /* ghost: the worker is in a task (started, done
                             not returned): `busy` */
byte ninrun;              /* ... in how many workers */

/* ---- the rest of the pool ---- */
byte alive;               /* threads not yet exited */
byte unfinished;          /* accepted - finished (pool_idle) */
byte finishing;           /* fire calls' segments whose done has not
                             returned (pool_finishing_begin/_done) */

/* ---- the parent token (ctp_token_create), for P_PARENT tasks ---- */
byte pfired;              /* its reason, 0 = not fired */
byte plock;               /* its token lock */
bool plinked[NT + 1];     /* children linked under it */

/* lock held: the run queue's accounting, asserted at every release */
inline q_check() {
	ck_i = 1; ck_r = 0; ck_l = 0;
	do
	:: ck_i <= NT ->
		if
		:: qs[ck_i] != Q_OUT -> ck_r++
		:: else -> skip
		fi;
		if
		:: qs[ck_i] == Q_LINK -> ck_l++
		:: else -> skip
		fi;
		ck_i++
	:: else -> break
	od;
	/* the slot accounting: count = RESERVED + LINKED <= capacity */
	assert(count == ck_r && count <= CAP && len(list) == ck_l);
	ck_i = 0; ck_w = 0;
	do
	:: ck_i < NW ->
		if
		:: claimed[ck_i] -> ck_w++
		:: else -> skip
		fi;
		ck_i++
	:: else -> break
	od;
	assert(waking == ck_w);
	/* every worker is parked, the sentinel, or awake */
	assert(awake + nidle + (sentinel != 0 -> 1 : 0) == NW);
	ck_i = 0; ck_r = 0; ck_l = 0; ck_w = 0
}

inline q_unlock() { q_check(); assert(qlock == _pid); qlock = 0 }

/* pool.c q_release (lock held): a slot is given back */
inline q_release() {
	count--;
	if
	:: fw != 0 -> anf = true
	:: else -> skip
	fi;
#ifndef BUG_DROP_NO_WAKE
	if
	:: closed -> adr = true   /* shutdown's drop step waits for 0 */
	:: else -> skip
	fi
#endif
}

/* pool.c q_wake_for_work (lock held): claims the idle worker on top of the
 * list when linked tasks outnumber the workers already on their way,
 * unless the scout will see them */
#define CAPPED (NCPU < NW && awake >= NCPU)

inline q_claim() {
	nidle--;
	aw = istack[nidle] + 1;
	istack[nidle] = 0;
	waking++;
	claimed[aw - 1] = true
}

inline q_wake_for_work() {
	if
	:: nidle > 0 && !qscout && aw == 0 && len(list) > waking ->
		if
		:: !CAPPED -> awake++; q_claim()
#ifndef BUG_CAP_NO_SENTINEL
		:: CAPPED && sentinel == 0 ->
			sentinel = istack[nidle - 1] + 1;
			q_claim()
#endif
		:: else -> skip
		fi
	:: else -> skip
	fi
}

/* pool.c q_unlock's second half, after the release: wake the claimed
 * worker (park = 0, futex wake), bump not_full, bump drained */
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

/* token.c fire_cas: sets the reason; QUEUED -> CANCELLED in the same CAS.
 * old = the phase it replaced, or 0 when it had fired or finished
 * (-EALREADY). */
inline fire_cas(t, r, old) {
	d_step {
		if
		:: reason[t] != 0 || phase[t] == DONE || phase[t] == CANCELLED ->
			old = 0
		:: else ->
			old = phase[t];
			reason[t] = r;
			if
			:: phase[t] == QUEUED ->
				phase[t] = CANCELLED;
				won_queued[t] = true
			:: else -> skip
			fi
		fi
	}
}

/* pool.c pool_unqueue, for one task (lock held) */
inline unqueue_one(t) {
	if
	:: qs[t] == Q_LINK ->   /* q_unlink */
		list??eval(t);
		qs[t] = Q_OUT;
		q_release()
	:: qs[t] == Q_RES ->    /* its submit will see OUT */
		qs[t] = Q_OUT;
		q_release()
	:: else -> skip         /* a worker or the drop step took it out */
	fi
}

/* task.c ctp__task_retire's statistic (counted in flush_out) */
inline count_stat(r) {
	if
	:: r == R_TIME -> st_timed_out++
	:: r == R_SHUT -> st_dropped++
	:: else -> st_cancelled++
	fi
}

/* token.c ctp__token_fire of a task token with no parent and nothing
 * linked (its leaf path): the guard (pool_finishing_begin) and the CAS;
 * if it caught the task queued, ctp__task_fire_queued: retire (flush_out:
 * statistics and pool_unqueue under runq.lock, its futex/ec work after),
 * complete (done(reason), publish), then one atomic counts it finished
 * and lowers the guard (pool_segment_done: both halves of one word):
 * one raise before the CAS, held to the end.
 * Locals of the caller: aw, anf, adr. */
inline fire_task(t, r, old) {
#ifndef BUG_GUARD_AFTER_CAS
	finishing++;
#endif
	fire_cas(t, r, old);
	if
	:: old == QUEUED ->
#ifdef BUG_GUARD_AFTER_CAS
		finishing++;
#endif
		d_step {
			qlock == 0 ->
			count_stat(r);
			unqueue_one(t);
			q_check()
		}
		q_after();
		d_step {
			assert(done_count[t] == 0);
			done_count[t]++;
			status[t] = r
		}
		d_step { unfinished--; finishing-- }
#ifndef BUG_GUARD_AFTER_CAS
	:: else -> finishing--
#else
	:: else -> skip
#endif
	fi;
	old = 0
}

/* pool.c worker_main / next_task / q_take / scout_poll / run_task */
proctype worker(byte w)
{
	byte t, item, aw;
	bool anf, adr, scout, spun, stop;

next_task:
	/* q_lock; prev = current; current = NULL (prev's reference is
	 * dropped after the unlock: references are not modelled) */
#ifdef BUG_STOP_OUTSIDE_LOCK
	stop = stopping;
	atomic { qlock == 0 -> qlock = _pid; current[w] = 0 }
#else
	atomic { qlock == 0 -> qlock = _pid; current[w] = 0; stop = stopping }
#endif
loop:
	if
	:: stop ->
		d_step {
			if
			:: scout -> qscout = false; scout = false
			:: else -> skip
			fi;
			spun = false;
			q_unlock()
		}
		goto leave
	:: else -> skip
	fi;
	/* next_popped: the sentinel goes on looking (q_keep_watch) while
	 * tasks are queued, the awake workers number the CPUs and none of
	 * them is stuck; it looks again STALL_NS later (a timed wait: it
	 * ends when there may be something to see), or at once when the
	 * cancel step wakes it. A worker in a task may be stuck (blocked) or
	 * not yet: the look may go either way then. */
	if
	:: sentinel == w + 1 && len(list) != 0 && CAPPED ->
		if
		:: ninrun > 0 -> d_step { sentinel = 0; awake++ }
		:: true ->
			d_step { pk[w] = 1; q_unlock() }
			(pk[w] == 0 || len(list) == 0 || !CAPPED ||
			 ninrun > 0);
			atomic { qlock == 0 -> qlock = _pid; stop = stopping }
			goto loop
		fi
	:: sentinel == w + 1 && !(len(list) != 0 && CAPPED) ->
		d_step { sentinel = 0; awake++ }
	:: else -> skip
	fi;
#ifndef START_UNDER_LOCK
	/* q_take: pop the head (OUT, its slot given back) and record it as
	 * current, not yet started */
	d_step {
		if
		:: len(list) == 0 -> t = 0
		:: else ->
			list?t;
			qs[t] = Q_OUT;
			q_release();
			current[w] = t
		fi
	}
#else
	/* q_take: pop the head until one start CAS succeeds; the others
	 * are tombstones (their reference is dropped after the unlock) */
	do
	:: d_step {
		if
		:: len(list) == 0 -> item = 0
		:: else ->
			/* q_unlink(head): OUT, the slot given back ... */
			list?item;
			qs[item] = Q_OUT;
			q_release();
			/* ... then ctp__task_start: CAS QUEUED -> RUNNING */
			if
			:: phase[item] == QUEUED ->
				phase[item] = RUNNING;
				/* nothing starts once the cancel step
				 * has read this worker's current */
				assert(!passed[w]);
				t = item;
				current[w] = t
			:: else -> skip
			fi
		fi
	   }
	   if
	   :: item == 0 || t != 0 -> item = 0; break
	   :: else -> item = 0
	   fi
	od;
#endif
	if
	:: t != 0 ->
		/* current = t (above); the scout role ends; tasks left while
		 * workers sleep: claim one more */
		d_step {
			if
			:: scout -> qscout = false; scout = false
			:: else -> skip
			fi;
			q_wake_for_work();
			spun = false;
			q_unlock()
		}
		q_after();
#ifndef START_UNDER_LOCK
		/* next_task: ctp__task_start after the lock, CAS QUEUED ->
		 * RUNNING; it fails for a task whose token fired first, which
		 * stays current until the next lock */
		d_step {
			if
			:: phase[t] == QUEUED ->
				phase[t] = RUNNING;
				/* a task that starts once the cancel step has
				 * read this worker's current is one it took
				 * (and fires) */
				assert(!passed[w] || collected[t])
			:: else -> t = 0
			fi
		}
		if
		:: t == 0 -> goto next_task
		:: else -> skip
		fi;
#endif
		/* run_task: fn runs (it may poll reason[t]) */
		d_step {
			assert(!won_queued[t]);
			started[t] = true;
			inrun[w] = true;
			ninrun++
		}
#ifdef BLOCKS
		if
		:: t == 1 ->
			(started[2] || reason[1] != 0 || phase[2] == CANCELLED ||
			 (sub_done && !acc[2]))
		:: else -> skip
		fi;
#endif
		/* task.c ctp__task_finish_ran: RUNNING -> DONE keeping the
		 * reason; then done(status), publish, worker_finished (the
		 * completed statistic is counted before, relaxed) */
		d_step { assert(phase[t] == RUNNING); phase[t] = DONE }
		d_step {
			assert(done_count[t] == 0);
			done_count[t]++;
			status[t] = 0;
			st_completed++;
			unfinished--;
			inrun[w] = false;
			ninrun--;
			t = 0
		}
		goto next_task
	:: t == 0 && !spun && (scout || !qscout) ->
		/* the scout polls before it parks */
		d_step {
			if
			:: !scout -> qscout = true; scout = true
			:: else -> skip
			fi;
			q_unlock()
		}
		q_after();
		/* scout_poll: head or stopping, without the lock; its time
		 * may be up (SPIN_NS) whenever it sees neither */
		if
		:: len(list) > 0 || stopping -> spun = false
		:: else -> spun = true
		fi;
		atomic {
			qlock == 0 -> qlock = _pid;
			if
			:: spun -> qscout = false; scout = false  /* looks once more */
			:: else -> skip
			fi;
			stop = stopping
		}
		goto loop
	:: else ->
		/* park: listed under the lock (a submit that links after this
		 * sees it on the idle list and claims it) */
#ifdef BUG_PARK_NO_RECHECK
		d_step { spun = false; q_unlock() }
		q_after();
		/* ... and listed in a second lock section, without a look */
		d_step {
			qlock == 0 ->
			pk[w] = 1;
			istack[nidle] = w;
			nidle++;
			awake--;
			q_check()
		}
#else
		d_step {
			pk[w] = 1;
			istack[nidle] = w;
			nidle++;
			awake--;
			spun = false;
			q_unlock()
		}
		q_after();
#endif
		/* while (park != 0) futex_wait(park, 1) */
		(pk[w] == 0);
		atomic {
			qlock == 0 -> qlock = _pid;
			waking--;             /* the claimer counted us */
			claimed[w] = false;
			spun = false;
			stop = stopping
		}
		goto loop
	fi;
leave:
	alive--                   /* pool_thread_exit */
}

/* pool.c submit / admit / enqueue / unreserve, tasks 1..NT in turn,
 * queue_wait = CTP_FOREVER. submit's own early looks at `closed` and the
 * parent are left out: admit looks again under the lock, and neither goes
 * back. */
proctype submitter()
{
	byte t = 1, r, snap, path, aw;
	bool anf, adr, counted;
#ifdef BUG_ADMIT_AFTER_CLOSE
	bool cl;
#endif

	do
	:: t > NT -> break
	:: else ->
		if
		:: path = P_FAST
#ifndef NO_SLOW
		:: path = P_DEADLINE
#ifndef NO_PARENT
		:: path = P_PARENT
#endif
#endif
		fi;
		/* admit: q_lock, then look (a parent that fired while we
		 * slept ends the wait: relock, then return its reason) */
		do
		::
#ifdef BUG_ADMIT_AFTER_CLOSE
		   cl = closed;
#endif
		   d_step {
			qlock == 0 -> qlock = _pid;
			if
			:: r == A_PARENT -> skip
			:: r != A_PARENT && path == P_PARENT && pfired != 0 ->
				r = A_PARENT      /* a fired parent wins */
#ifdef BUG_ADMIT_AFTER_CLOSE
			:: r != A_PARENT && !(path == P_PARENT && pfired != 0) &&
			   cl ->
#else
			:: r != A_PARENT && !(path == P_PARENT && pfired != 0) &&
			   closed ->
#endif
				r = A_SHUT
			:: else ->
#ifdef BUG_ADMIT_AFTER_CLOSE
				if
				:: !cl && count < CAP ->
#else
				if
				:: !closed && count < CAP ->
#endif
					count++;
					/* accepted with its slot, in
					 * the same lock (pool_idle) */
					unfinished++;
					qs[t] = Q_RES;
					acc[t] = true;
					r = A_OK
				:: else ->
					/* full: wait for a release, which
					 * bumps not_full after its unlock:
					 * counted in full_waiters, the
					 * snapshot under the lock */
#ifndef BUG_NO_ANNOUNCE
					if
					:: !counted -> fw++
					:: else -> skip
					fi;
#endif
					counted = true;
					snap = nf;
					r = A_WAIT;
					q_unlock()
				fi
			fi
		   }
		   if
		   :: r == A_WAIT ->
			/* ctp__ec_wait(not_full, snap, parent): sleeps while
			 * the count is unchanged; the parent's fire also ends
			 * it (its internal watch bumps the event count) */
			atomic {
				if
				:: nf != snap -> r = 0
				:: path == P_PARENT && pfired != 0 -> r = A_PARENT
				fi;
				snap = 0
			}
		   :: else -> break
		   fi
		od;
		/* the end of admit: out of full_waiters; the fast path links
		 * in the same lock section and claims an idle worker */
		atomic {
			if
			:: counted ->
#ifndef BUG_NO_ANNOUNCE
				fw--;
#endif
				counted = false
			:: else -> skip
			fi;
			if
			:: r == A_OK && path == P_FAST ->
				list!t;
				qs[t] = Q_LINK;
				q_wake_for_work()
			:: else -> skip
			fi;
			q_unlock()
		}
		q_after();
		if
		:: r == A_OK && path == P_PARENT ->
			/* ctp__token_link: under the parent's lock, `linked`,
			 * then its state: fired -> refused */
			atomic {
				plock == 0 ->
				if
				:: pfired != 0 ->
					r = A_PARENT;
					acc[t] = false   /* the submit will fail */
				:: else -> plinked[t] = true
				fi
			}
			if
			:: r == A_PARENT ->
				/* unreserve: the submit backs out (no
				 * longer accepted, in the same lock) */
				d_step {
					qlock == 0 ->
					if
					:: qs[t] == Q_RES ->
						qs[t] = Q_OUT;
						unfinished--;
						q_release()
					:: else -> skip
					fi;
					q_check()
				}
				q_after()
			:: else -> skip
			fi
		:: r == A_OK && path == P_DEADLINE ->
			fireable[t] = R_TIME      /* ctp__timer_add */
		:: else -> skip
		fi;
		if
		:: r == A_OK && path != P_FAST ->
			/* enqueue: link it, unless a fire retired it
			 * meanwhile (OUT: drop the queue's reference) */
			d_step {
				qlock == 0 ->
				if
				:: qs[t] == Q_RES ->
					list!t;
					qs[t] = Q_LINK;
					q_wake_for_work();
					if
					:: closed -> adr = true  /* drop_queued */
					:: else -> skip
					fi
				:: else -> skip
				fi;
				q_check()
			}
			q_after()
		:: else -> skip
		fi;
		if
		:: r == A_OK ->
			/* accepted: the submit returns the handle */
			if
			:: fireable[t] == 0 -> fireable[t] = R_CANCEL
			:: else -> skip
			fi
		:: else -> skip  /* not counted, or unreserve took it back */
		fi;
		d_step { t++; r = 0; path = 0 }
	od;
	sub_done = true
}

/* ctp_task_cancel of one task through its handle, or its deadline (the
 * timer thread fires it the same way, from ctp__timer_add on: possibly
 * before it is linked), or ctp_token_cancel of the parent (fires every
 * task linked under it), or nothing (c = 0). */
proctype canceller()
{
	byte c, old, i, n, aw;
	bool anf, adr;
	bool caught[NT + 1];

#ifdef NO_PARENT
	select(c : 0 .. NT);
#else
	select(c : 0 .. NT + 1);
#endif
	if
	:: c == 0 -> skip
	:: c >= 1 && c <= NT ->
		(fireable[c] != 0 || sub_done);
		if
		:: fireable[c] != 0 -> fire_task(c, fireable[c], old)
		:: else -> skip
		fi
	:: c == NT + 1 ->
		/* token.c: the parent's CAS (a root: no FIRING) */
		d_step {
			if
			:: pfired == 0 -> pfired = R_CANCEL; old = 1
			:: else -> old = 0
			fi
		}
		if
		:: old != 0 ->
			/* mark_children: under the parent's lock, the CAS on
			 * each child; one caught queued is retired (the
			 * segment's first raises finishing) */
#ifndef BUG_GUARD_AFTER_CAS
			finishing++;
#endif
			atomic { plock == 0 -> plock = _pid; i = 1 }
			do
			:: i <= NT ->
				if
				:: plinked[i] ->
					fire_cas(i, R_CANCEL, old);
					if
					:: old == QUEUED ->
						d_step {
							caught[i] = true;
#ifdef BUG_GUARD_AFTER_CAS
							if
							:: n == 0 -> finishing++
							:: else -> skip
							fi;
#endif
							n++
						}
					:: else -> skip
					fi
				:: else -> skip
				fi;
				d_step { i++; old = 0 }
			:: else -> break
			od;
			atomic { assert(plock == _pid); plock = 0; i = 1 }
			/* ctp__batch_end_retire: statistics, then
			 * pool_unqueue of the caught tasks, one lock */
			if
			:: n > 0 ->
				d_step {
					qlock == 0 ->
					do
					:: i <= NT ->
						if
						:: caught[i] ->
							count_stat(R_CANCEL);
							unqueue_one(i)
						:: else -> skip
						fi;
						i++
					:: else -> break
					od;
					i = 1;
					q_check()
				}
				q_after();
				/* phase 2b: done of each caught task, then
				 * ctp__batch_end_complete. A quiet child (no
				 * done, no handle: task.c,
				 * ctp__task_retire_quiet) takes these same
				 * steps in its own batch, at its end in the
				 * mark pass (unqueue, finished, one atomic
				 * for the count and its segment); its
				 * segment's own raise comes after the CAS
				 * and under the guard (the pool's, or past
				 * four pools the task's own, dropped only
				 * after that raise), so it changes no order
				 * here: the step below stands for both
				 * kinds. */
				do
				:: i <= NT ->
					if
					:: caught[i] ->
						d_step {
							assert(done_count[i] == 0);
							done_count[i]++;
							status[i] = R_CANCEL;
							caught[i] = false
						}
					:: else -> skip
					fi;
					i++
				:: else -> break
				od;
				/* pool_segment_done: one atomic (atomic, not
				 * d_step: the break above jumps to it) */
				atomic {
					unfinished = unfinished - n;
					finishing--
				}
#ifndef BUG_GUARD_AFTER_CAS
			:: else -> finishing--
#else
			:: else -> skip
#endif
			fi
		:: else -> skip
		fi
	fi;
	d_step { c = 0; old = 0; i = 0; n = 0 }
}

/* pool.c ctp_pool_shutdown (first caller): close_queue, drain,
 * cancel_step, drop_queued; grace = CTP_FOREVER (wait_quiet) */
proctype shutdown()
{
	byte i, n, t, c, v, old, snap, item, aw;
	bool anf, adr, drain;
	byte scan[NW];

#ifdef SUBMITS_FIRST
	/* the shutdown comes only after every submit returned: nothing but
	 * the releases can wake a submitter waiting for room */
	(sub_done);
#endif
	/* close_queue: closed under the lock, then the bumps */
	d_step { qlock == 0 -> closed = true; q_check() }
	nf++;
	dr++;
	/* drain: CTP_FOREVER (wait_idle_for: until pool_idle), or 0 /
	 * elapsed (the scheduler may delay the next step as long as it
	 * likes, so "some time" is covered) */
	if
	:: drain = true
	:: drain = false
	fi;
	if
	:: drain -> (unfinished == 0); drain = false
	:: else -> skip
	fi;

	/* cancel_step */
#ifndef BUG_NO_LOCK_PASS
	/* under the lock: stopping, claim and wake every idle worker
	 * (q_wake_all), reference every worker's current */
	d_step {
		qlock == 0 ->
		stopping = true;
		do
		:: nidle > 0 ->
			nidle--;
			v = istack[nidle];
			istack[nidle] = 0;
			waking++;
			awake++;
			claimed[v] = true;
			pk[v] = 0
		:: else -> break
		od;
		/* the sentinel, between two looks or on its way */
		if
		:: sentinel != 0 ->
			pk[sentinel - 1] = 0;
			sentinel = 0;
			awake++
		:: else -> skip
		fi;
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
#else
	/* the bug: stopping set and current read without the lock */
	stopping = true;
	i = 0;
	n = 0;
	do
	:: i < NW ->
		d_step {
			if
			:: current[i] != 0 ->
				scan[n] = current[i];
				collected[scan[n]] = true;
				n++
			:: else -> skip
			fi;
			passed[i] = true;
			i++
		}
	:: else -> break
	od;
	atomic {
		qlock == 0 ->
		do
		:: nidle > 0 ->
			nidle--;
			v = istack[nidle];
			istack[nidle] = 0;
			waking++;
			awake++;
			claimed[v] = true;
			pk[v] = 0
		:: else -> break
		od;
		/* the sentinel, between two looks or on its way */
		if
		:: sentinel != 0 ->
			pk[sentinel - 1] = 0;
			sentinel = 0;
			awake++
		:: else -> skip
		fi;
		v = 0;
		i = 0;
		q_check()
	}
#endif
	/* fire every collected task (running, or done since) */
	do
	:: i < n ->
		fire_task(scan[i], R_SHUT, old);
		d_step { scan[i] = 0; i++ }
	:: else -> break
	od;
	skip;   /* (a jump target outside the d_step) */
	/* every task running now has heard the shutdown */
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

	/* drop_queued */
	do
	:: d_step {
		qlock == 0 ->
		snap = dr;
		if
		:: len(list) > 0 ->
			list?item;
			qs[item] = Q_OUT;
			q_release()
		:: else -> item = 0
		fi;
		c = count;
		adr = false;             /* only we wait on it */
		q_check()
	   }
	   q_after();
	   if
	   :: item != 0 ->
		/* live: dropped, its done runs here; fired already:
		 * -EALREADY (its firer finishes it) */
		fire_task(item, R_SHUT, old);
		item = 0
	   :: item == 0 && c == 0 -> break
	   :: else ->
		/* ctp__ec_wait(drained, snap) */
		atomic { dr != snap -> snap = 0 }
	   fi
	od;
	atomic { snap = 0; c = 0 }

	/* grace = CTP_FOREVER: wait_quiet loads alive, then finishing, and
	 * sleeps on the one not yet 0 (each futex is woken when it reaches
	 * 0) */
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
#ifndef NO_QUIET_CHECK
	/* ctp_pool_shutdown returns 0: every thread of the pool has exited
	 * and the done of every accepted task has returned (ctpool.h: "for
	 * the done callbacks of queued tasks that another thread's cancel
	 * caught ... to return") */
	d_step {
		t = 1;
		do
		:: t <= NT ->
			assert(!acc[t] || done_count[t] == 1);
			t++
		:: else -> break
		od;
		t = 0
	}
#endif
}

init
{
	byte i, n;

	d_step {
		i = 1;
		do
		:: i <= NT -> phase[i] = QUEUED; i++
		:: else -> break
		od;
		alive = NW;
		awake = NW;
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
		assert(count == 0 && unfinished == 0 && finishing == 0);
		assert(len(list) == 0 && fw == 0 && waking == 0 && nidle == 0 &&
		       sentinel == 0);
		i = 1;
		n = 0;
		do
		:: i <= NT ->
			/* exactly once for every accepted task, never otherwise */
			assert(done_count[i] == (acc[i] -> 1 : 0));
			/* fn ran: status is its own; never ran: the first reason */
			assert(!acc[i] ||
			       (started[i] && status[i] == 0 && phase[i] == DONE) ||
			       (!started[i] && status[i] == reason[i] &&
			        phase[i] == CANCELLED));
			assert(qs[i] == Q_OUT);
			if
			:: acc[i] -> n++
			:: else -> skip
			fi;
			i++
		:: else -> break
		od;
		/* the statistics: every accepted task is counted once,
		 * completed, cancelled, timed out or dropped */
		assert(st_completed + st_cancelled + st_timed_out + st_dropped == n);
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
