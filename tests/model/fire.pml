/*
 * fire.pml: firing a token tree while another thread fires a subtree of it
 * (issue 9 item 2, the "fire in progress" rule of token.c), checked
 * exhaustively with spin (scripts/model.sh). See README.md.
 *
 * One step of this model is one atomic instruction (or one lock operation)
 * of the C code; the token.c function each part follows is named beside it
 * (ctp__token_fire_begin/_end, fire_cas, mark_children,
 * wait_fire_end, end_fire, ctp__token_link; the worker's start CAS).
 *
 * The tree:        root
 *                 /    \
 *              sub      h       (h: a queued task)
 *              /  \
 *             g    g2           (queued tasks; g2 only with -DTHIRD)
 * Threads: A cancels root; B cancels sub; a worker may start g and h at
 * any time (or never). Options:
 *   -DLATE    g is not in the tree at the start: a submitter links it under
 *             sub concurrently (ctp__token_link under sub's lock: `linked`,
 *             then read sub's state; born fired, refused, when sub fired),
 *             and sub starts with linked == 0 without -DTHIRD (the lock-free
 *             path of mark_children);
 *   -DNESTED  g's done (run by B's fire of sub, phase 2b) cancels root on B's
 *             thread: B then meets sub with its own FIRING and must not wait
 *             for it (a fire made inside another fire's callbacks on the
 *             same thread waits for no fire at all);
 *   -DTHIRD   thread C cancels task g2 (ctp_task_cancel: a fire of g2's
 *             token), so B can meet a fire in progress below it too (A waits
 *             for B, which waits for C).
 *
 * The rule (ctp__token_fire):
 *   CAS on t (fire_cas): lose -> -EALREADY at once, waiting for nothing;
 *   win -> the same CAS sets the reason, FIRING, and QUEUED -> CANCELLED
 *   for a task.
 *   Phase 1 (mark_children): walk the listed tokens breadth first, one token
 *   lock at a time (skipped when the token's `linked` is 0); each child: a
 *   CAS that fires it (listed, walked in turn); if that lost, a load of its
 *   state: FIRING, and this call is not nested in an outer fire of its
 *   thread -> the wait list; FIRING, nested -> skipped (no wait at all);
 *   no FIRING (its firer ended) or a finished task -> skipped.
 *   Phase 2: wake (nothing to model), finish every task caught QUEUED (its
 *   done runs on the firer), user watchers (nothing to model).
 *   Phase 3 (wait_fire_end): for each token of the wait list, announce in
 *   its `sleepers`, then load the word and futex-wait while FIRING is set.
 *   Then end_fire: clear FIRING on t, then wake if `sleepers` != 0; return.
 *   Not modelled: a token's ext (its lock, children and watches, attached
 *   by a CAS the first time a task's token needs them): it is attached
 *   before `linked` is set, by the same thread, so it adds no ordering the
 *   model's `linked` and lock steps do not already have. Nor lifetimes: a
 *   child unlinks itself at its death (a worker's dead children of one
 *   parent a batch at a time, later: token.c, "Deferred detach"; a dead
 *   child's CAS and reference both fail, so a walk only skips it), or (a
 *   task caught queued) its
 *   parent's firer takes it out of the list under the parent's lock
 *   (token.c, unlist); either way no fire call walks a fired parent's
 *   children again, so `inlist` here keeps its meaning, "in the tree".
 *
 * Properties:
 *   - at the return of a fire that won its CAS, every task of its tree is
 *     finished-cancelled with its done returned, or had started (RUNNING or
 *     DONE) before its token fired; nothing is QUEUED. In a nested fire, the
 *     tasks under a subtree that an outer frame of the same thread fires are
 *     only required not to be QUEUED (that frame finishes them later; the
 *     done running now may be one of them). -DSTRICT_NESTED requires, there
 *     too, every done but the one this thread is inside to have returned:
 *     it FAILS with -DTHIRD -DNESTED (README.md, "Known limit");
 *   - nothing starts a task of a tree whose firer has returned, nor a task
 *     whose token fired (asserted at the worker's start CAS; with
 *     -DSTART_CHECK_ONLY the assertions at the return are left out, so a
 *     violation shows as a start instead);
 *   - each done runs once, never for a task that started; no invalid end
 *     state (no firer waits forever, including the nested fire).
 *
 * Planted bugs (each must make spin report an error):
 *   BUG_NO_WAIT      phase 3 skipped (the old code): A returns while B is
 *                    between its CAS on sub and marking g (g still queued,
 *                    and can start later) or inside g's done.
 *   BUG_WAIT_SELF    the nested fire waits like any other, so for the
 *                    FIRING of its own outer frame, forever.
 *   BUG_NO_WAKE      end_fire clears FIRING but never wakes the announced
 *                    waiters.
 *
 * Abstracted away: references (tryref of a dying child), sleepers, fds and
 * watches (phases 2a and 2c), the queue and the pool's counts, the timer's
 * split fire (begin on the timer thread, end on the callback thread, and
 * wait_fire_end claiming a queued end), deeper trees.
 */

#define ROOT 0
#define SUB  1
#define G    2
#define H    3
#ifdef THIRD
#define G2   4
#define NTOK 5
#else
#define NTOK 4
#endif

/* task phases (CTP_TASK_*); 0: not a task, or not accepted */
#define QUEUED    1
#define RUNNING   2
#define DONE      3
#define CANCELLED 4

#define BIT(x) (1 << (x))

/* x == a or a descendant of a (the tree is two levels deep; the root is
 * its own parent here) */
#define DESC(x, a) ((x) == (a) || parent[x] == (a) || parent[parent[x]] == (a))

byte parent[NTOK];

/* ---- the token state word: reason (fired), phase, FIRING ---- */
bool fired[NTOK];
byte phase[NTOK];
bool firing[NTOK];

/* ---- the rest of struct ctp_token ---- */
byte tlock[NTOK];         /* t->lock: 0 free, else holder's _pid */
bool linked[NTOK];        /* t->linked: ever had a child (Dekker with state) */
bool inlist[NTOK];        /* in its parent's children list */
byte sleepers[NTOK];      /* announced futex waiters on t->state */
byte asleep[6];           /* per _pid: 1 + the token it futex-waits on */

/* ---- ghosts ---- */
bool done_ret[NTOK];      /* done(-ECANCELED) of a task caught queued returned */
byte done_count[NTOK];
byte done_pid[NTOK];      /* the thread running it */
bool started[NTOK];
bool closed[NTOK];        /* a winning fire of a tree holding it has returned */

inline lock(t)   { atomic { tlock[t] == 0 -> tlock[t] = _pid } }
inline unlock(t) { assert(tlock[t] == _pid); tlock[t] = 0 }

/* futex_wake(&t->state, INT_MAX) */
inline futex_wake(t, i) {
	d_step {
		i = 0;
		do
		:: i < 6 -> if :: asleep[i] == t + 1 -> asleep[i] = 0 :: else fi; i++
		:: else -> break
		od;
		i = 0
	}
}

/* The winning CAS on t, then phase 1: listed = the tokens this call fired,
 * caught = the tasks it caught QUEUED, waitl = the fires in progress of
 * other threads it met; mine = the tokens this thread (outer frames
 * included) is firing; skipped = children skipped because they are in mine.
 */
inline mark(t, won, listed, caught, waitl, skipped, walked, p, c) {
	atomic {
		if
		:: !fired[t] && phase[t] != DONE ->
			fired[t] = true; firing[t] = true;
			if
			:: phase[t] == QUEUED -> phase[t] = CANCELLED; caught = caught | BIT(t)
			:: else -> skip
			fi;
			won = true
		:: else -> won = false
		fi
	}
	if
	:: won ->
		mine = mine | BIT(t);
		listed = BIT(t);
		walked = 0;
		do
		:: d_step {   /* the next listed token, breadth-first */
			p = 0;
			do
			:: p < NTOK && (listed & BIT(p)) && !(walked & BIT(p)) -> break
			:: p < NTOK && !((listed & BIT(p)) && !(walked & BIT(p))) -> p++
			:: p >= NTOK -> break
			od
		   }
			if
			:: p >= NTOK -> break
			:: else -> skip
			fi;
			walked = walked | BIT(p);
			if
			:: linked[p] ->   /* seq_cst load: Dekker with link */
				lock(p);
				c = 0;
				do
				:: c < NTOK && parent[c] == p && c != p && inlist[c] ->
					/* fire_cas(c, reason, 0) */
					atomic {
						if
						:: !fired[c] && phase[c] != DONE ->
							fired[c] = true;
							if
							:: phase[c] == QUEUED -> phase[c] = CANCELLED; caught = caught | BIT(c)
							:: else -> skip
							fi;
							listed = listed | BIT(c);
							lost = false
						:: else -> lost = true
						fi
					}
					/* it lost: then a load of c's state */
					if
					:: lost && firing[c] && (mine & ~BIT(t)) ->
						/* a nested fire (an outer frame of
						 * this thread is firing: ctp__tls.fires
						 * not empty) waits for no fire; here
						 * the one it meets is its outer
						 * frame's own */
#ifdef BUG_WAIT_SELF
						waitl = waitl | BIT(c);
#endif
						skipped = skipped | BIT(c)
					:: lost && firing[c] && !(mine & ~BIT(t)) ->
						waitl = waitl | BIT(c)
					:: else -> skip   /* ours, or its firer ended, or DONE */
					fi;
					lost = false;
					c++
				:: c < NTOK && !(parent[c] == p && c != p && inlist[c]) -> c++
				:: c >= NTOK -> break
				od;
				unlock(p)
			:: else -> skip
			fi
		od
	:: else -> skip
	fi
}

/* phase 2b: the done of one task caught queued (task.c finish_unrun) */
inline done_begin(x) {
	assert(phase[x] == CANCELLED && !started[x]);
	done_count[x]++;
	done_pid[x] = _pid;
	assert(done_count[x] == 1)
}
inline done_end(x) { done_ret[x] = true }

/* phase 3, clear FIRING on t, return; with the properties */
inline finish_fire(t, waitl, skipped, c, s, i) {
#ifndef BUG_NO_WAIT
	c = 0;
	do
	:: c < NTOK && (waitl & BIT(c)) ->
		/* wait_fire_end(c): announce, then look, futex wait */
		sleepers[c]++;
		do
		:: s = firing[c];
			if
			:: !s -> break
			:: else ->
				/* futex_wait(&c->state, s): sleeps only while
				 * the word is unchanged */
				atomic { if :: firing[c] == s -> asleep[_pid] = c + 1 :: else fi }
				asleep[_pid] == 0
			fi
		od;
		sleepers[c]--;
		c++
	:: c < NTOK && !(waitl & BIT(c)) -> c++
	:: c >= NTOK -> break
	od;
#endif
	mine = mine & ~BIT(t);   /* ctp__tls.fires = f->prev */
	/* end_fire(t) */
	firing[t] = false;
#ifndef BUG_NO_WAKE
	if
	:: sleepers[t] > 0 -> futex_wake(t, i)
	:: else -> skip
	fi;
#endif
	/* returns 0: the property */
	d_step {
		c = 0;
		do
		:: c < NTOK ->
			if
			:: inlist[c] && phase[c] != 0 && DESC(c, t) ->
#ifndef START_CHECK_ONLY
				assert(phase[c] != QUEUED);
#ifdef STRICT_NESTED
				/* only the done this thread is inside may be
				 * unfinished */
				assert(phase[c] != CANCELLED || done_ret[c] ||
				    done_pid[c] == _pid);
#else
				assert(phase[c] != CANCELLED || done_ret[c] ||
				    ((skipped & BIT(SUB)) && DESC(c, SUB)));
#endif
				if
				:: phase[c] == CANCELLED -> assert(!started[c])
				:: else -> skip
				fi;
#endif
				closed[c] = true
			:: else -> skip
			fi;
			c++
		:: else -> break
		od;
		c = 0
	}
}

/* the whole of ctp_token_cancel(t), without a nested cancel in a done */
inline fire(t, won, listed, caught, waitl, skipped, walked, p, c, s, i) {
	mark(t, won, listed, caught, waitl, skipped, walked, p, c);
	if
	:: won ->
		c = 0;
		do
		:: c < NTOK && (caught & BIT(c)) -> done_begin(c); done_end(c); c++
		:: c < NTOK && !(caught & BIT(c)) -> c++
		:: c >= NTOK -> break
		od;
		finish_fire(t, waitl, skipped, c, s, i)
	:: else -> skip   /* -EALREADY, at once */
	fi
}

proctype A()
{
	byte mine, listed, caught, waitl, skipped, walked, p, c, i;
	bool won, s, lost;

	fire(ROOT, won, listed, caught, waitl, skipped, walked, p, c, s, i)
}

proctype B()
{
	byte mine, listed, caught, waitl, skipped, walked, p, c, i;
	bool won, s, lost;
#ifdef NESTED
	byte listed2, caught2, waitl2, skipped2, walked2, p2, c2, i2;
	bool won2, s2;
#endif

	mark(SUB, won, listed, caught, waitl, skipped, walked, p, c);
	if
	:: won ->
		c = 0;
		do
		:: c < NTOK && (caught & BIT(c)) ->
			done_begin(c);
#ifdef NESTED
			/* g's done cancels root, on B's thread */
			if
			:: c == G -> fire(ROOT, won2, listed2, caught2, waitl2,
			    skipped2, walked2, p2, c2, s2, i2)
			:: else -> skip
			fi;
#endif
			done_end(c);
			c++
		:: c < NTOK && !(caught & BIT(c)) -> c++
		:: c >= NTOK -> break
		od;
		finish_fire(SUB, waitl, skipped, c, s, i)
	:: else -> skip
	fi
}

/* pool.c next_task/run_task for g and h: start = CAS QUEUED -> RUNNING;
 * fn runs; finish_ran = RUNNING -> DONE keeping the reason */
proctype Worker()
{
	bool tg, th;
	byte x;

	do
	:: !tg || !th ->
		if
		:: !tg -> tg = true; x = G
		:: !th -> th = true; x = H
		fi;
		atomic {
			if
			:: phase[x] == QUEUED ->   /* so not fired */
				assert(!fired[x] && !closed[x]);
				phase[x] = RUNNING;
				started[x] = true
			:: else -> x = NTOK
			fi
		}
		if
		:: x < NTOK -> phase[x] = DONE   /* fn ran; finish_ran */
		:: else -> skip
		fi
	:: true -> break   /* it does not get to the others (yet, or ever) */
	od
}

#ifdef THIRD
/* ctp_task_cancel(g2): the fire of a task token */
proctype C()
{
	byte mine, listed, caught, waitl, skipped, walked, p, c, i;
	bool won, s, lost;

	fire(G2, won, listed, caught, waitl, skipped, walked, p, c, s, i)
}
#endif

#ifdef LATE
/* ctp_pool_submit(g, parent = sub): ctp__token_link(sub, g) */
proctype Submitter()
{
	lock(SUB);
	if                            /* seq_cst store unless already set */
	:: !linked[SUB] -> linked[SUB] = true  /* (under the lock), then */
	:: else -> skip               /* read the state */
	fi;
	if
	:: fired[SUB] -> skip         /* born fired: refused, never runs */
	:: else -> d_step { phase[G] = QUEUED; inlist[G] = true }
	fi;
	unlock(SUB)
}
#endif

init {
	parent[ROOT] = ROOT; parent[SUB] = ROOT; parent[G] = SUB; parent[H] = ROOT;
	inlist[SUB] = true; inlist[H] = true; phase[H] = QUEUED;
	linked[ROOT] = true;
#ifdef THIRD
	parent[G2] = SUB; inlist[G2] = true; phase[G2] = QUEUED; linked[SUB] = true;
#endif
#ifndef LATE
	inlist[G] = true; phase[G] = QUEUED; linked[SUB] = true;
#endif
	atomic {
		run A(); run B(); run Worker();
#ifdef THIRD
		run C();
#endif
#ifdef LATE
		run Submitter();
#endif
	}
}
