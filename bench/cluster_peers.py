#!/usr/bin/python3
"""cluster_peers.py: RQ and Celery measured like bench/cluster_bench.c.

Run it with Debian's /usr/bin/python3 (python3-rq, python3-celery and
python3-redis are Debian packages; bench/cluster.sh installs them through
scripts/deps.sh).

Usage:
  cluster_peers.py --peer RQ|Celery <scenario> --url URL [--nodes K]
                   [--jobs N] [--samples S] [--warmup W]
  cluster_peers.py worker --peer RQ|Celery --url URL --queue Q
                   [--rq-class simple|fork]      (what the scenarios start)
  cluster_peers.py report RAW --md MD --reps R --date D --machine M
                   --redis V --command C --sizes S --versions V --load L

Every scenario starts its own K worker processes on a queue of its own,
waits until all K are up, runs, stops them with SIGTERM (their warm
shutdown) and checks every job. The same work and checks as cluster_bench.c:
  throughput  one thread submits N jobs (RQ: queue.enqueue; Celery:
              task.delay), each logs its number and returns 0 at once.
              End: RQ: the finished-job registry (ZCARD, polled every 1 ms
              once the last job is submitted) holds N jobs; Celery: the N-th
              result message (PSUBSCRIBE celery-task-meta-*, which its Redis
              result backend PUBLISHes with each result) seen by a child
              process subscribed before the first submit. Then, untimed,
              every job: RQ status finished and return value 0; Celery
              state SUCCESS and result 0.
  start       submit-to-start on an idle cluster, one job at a time: the job
              returns time.monotonic_ns() (CLOCK_MONOTONIC, the C side's
              clock) taken at its start; 1 ms pause between jobs.
  cancel      a job that RPUSHes "jobno:1:pid:t" and then sleeps; once it
              has started (BLPOP) and 1 ms more: RQ:
              send_stop_job_command (its worker kills the work horse
              with SIGKILL; the job ends 'stopped'); Celery:
              control.revoke(id, terminate=True) (the worker sends SIGTERM
              to the pool process running it; the task ends REVOKED). The
              figure is until that process is gone (its pidfd readable):
              neither has a cooperative cancel that reaches the running
              function.
  recover     n/a for both, with the reason (see RECOVER_WHY).
Workers: RQ: SimpleWorker (no fork per job, what a user picks for
throughput) for throughput and start; the default forking Worker for cancel
(send_stop_job_command needs its work horse). Celery: `worker --pool
prefork --concurrency 2` per node, --without-gossip --without-mingle
(faster start-up, no effect per task), defaults otherwise (acks on receipt,
prefetch multiplier 4). All log at WARNING.
Every job function appends its number to a runs file (O_APPEND, one write
per run, as the C nodes): every number must appear exactly once.
Output: the same key=value lines as cluster_bench (skip="why" for what the
peer does not offer; error="what" and exit status 1 when a check fails).
"""
import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

PEERS = ["ctpool-redis", "RQ", "Celery"]
PEER = "?"
SCENARIO = "?"
CONFIG = "?"
VERSION = "?"
WORKERS = []  # subprocess.Popen of the running workers
NOTES = []    # said with every figure of the run (e.g. a hung shutdown)

RECOVER_WHY = {
    "RQ": (
        "no automatic re-delivery within bounded time: a job whose worker "
        "was killed stays in StartedJobRegistry until its entry expires "
        "(job_monitoring_interval + 60 s after its last heartbeat, so 61 s "
        "at least), and only the registry clean-up of a worker's "
        "maintenance (at a worker's start, then every 10 min: "
        "DEFAULT_MAINTENANCE_TASK_INTERVAL = 600 in rq 1.13) moves it: to "
        "FailedJobRegistry, or back to its queue only if it was enqueued "
        "with Retry(max>=1)"),
    "Celery": (
        "not measurable in bounded time: with task_acks_late the unacked "
        "message of a killed worker goes back to the queue only after the "
        "broker's visibility_timeout (default 1 h) counted from its "
        "delivery, not from a missed heartbeat (so it must exceed the "
        "longest job, or running jobs are delivered twice), and a live "
        "worker restores such messages only every 100 s (kombu 5.2.4: "
        "restore_visible acts on every 10th call of a 10 s timer) or at a "
        "worker's start"),
}


# ---- output -----------------------------------------------------------------

def quote(s):
    return '"' + str(s).replace('"', "'").replace("\n", " ") + '"'


def stop_workers(sig=signal.SIGTERM, timeout=15.0):
    bad = []
    for p in WORKERS:
        if p.poll() is None:
            try:
                # SIGTERM to the worker itself (its warm shutdown stops its
                # pool); SIGKILL to its whole process group
                if sig == signal.SIGTERM:
                    os.kill(p.pid, sig)
                else:
                    os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
    end = time.monotonic() + timeout
    for p in WORKERS:
        try:
            rc = p.wait(max(end - time.monotonic(), 0.01))
            if rc != 0 and sig == signal.SIGTERM:
                bad.append(f"worker exited with status {rc}")
        except subprocess.TimeoutExpired:
            bad.append(f"worker still runs {timeout:.0f} s after "
                       f"{signal.Signals(sig).name}")
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    # the process group: a prefork pool's children too
    for p in WORKERS:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    WORKERS.clear()
    return bad


def fail(msg):
    stop_workers(signal.SIGKILL, 5)
    print(f"peer={PEER} scenario={SCENARIO} config={quote(CONFIG)} "
          f"error={quote(msg)}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def out_value(figure, value, unit, better, extra="", note=""):
    note = "; ".join([note] * bool(note) + NOTES)
    if note:
        extra += (" " if extra else "") + "note=" + quote(note)
    print(f"peer={PEER} scenario={SCENARIO} config={quote(CONFIG)} "
          f"figure={figure} value={value:.3f} unit={unit} better={better} "
          f"version={VERSION}" + (" " + extra if extra else ""), flush=True)


def out_skip(figures, why):
    for f in figures:
        print(f"peer={PEER} scenario={SCENARIO} config={quote(CONFIG)} "
              f"figure={f} skip={quote(why)}", flush=True)


def now_ns():
    return time.monotonic_ns()  # CLOCK_MONOTONIC, as the C side


def pct_us(v, p):
    """Nearest-rank percentile of sorted v (ns), in us (cluster_bench's)."""
    rank = (p * len(v) + 99) // 100
    return v[max(rank, 1) - 1] / 1000.0


def out_latency(name, v, note=""):
    v = sorted(v)
    extra = f"n={len(v)} min_us={v[0] / 1000:.3f} max_us={v[-1] / 1000:.3f}"
    out_value(f"{name}_p50_us", pct_us(v, 50), "us", "lower", extra, note)
    out_value(f"{name}_p99_us", pct_us(v, 99), "us", "lower", extra, note)


# ---- what runs in the workers ---------------------------------------------------

_runs = [None, None]   # pid, fd (reopened in a forked child)
_conn = [None, None]   # pid, redis client


def log_run(i):
    pid = os.getpid()
    if _runs[0] != pid:
        _runs[1] = os.open(os.environ["CB_RUNS"],
                           os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _runs[0] = pid
    os.write(_runs[1], b"%d\n" % i)


def conn():
    pid = os.getpid()
    if _conn[0] != pid:
        import redis
        _conn[1] = redis.Redis.from_url(os.environ["CB_URL"])
        _conn[0] = pid
    return _conn[1]


def job_noop(i):
    log_run(i)
    return 0


def job_stamp(i):
    t = time.monotonic_ns()
    log_run(i)
    return t


def job_block(i):
    log_run(i)
    conn().rpush(os.environ["CB_QUEUE"] + ":started",
                 f"{i}:1:{os.getpid()}:{time.monotonic_ns()}")
    time.sleep(3600)  # until the cancel kills this process
    return 0


# RQ calls these by name ("cluster_peers.rq_noop"); the worker imports this
# file as module cluster_peers (its folder is sys.path[0]).
rq_noop, rq_stamp, rq_block = job_noop, job_stamp, job_block

# Celery: an app built from the environment the driver sets (CB_URL,
# CB_QUEUE), tasks with fixed names.
_celery = None


def celery_app():
    global _celery
    if _celery is None:
        from celery import Celery
        url = os.environ["CB_URL"]
        app = Celery("cluster_peers", broker=url, backend=url)
        app.conf.task_default_queue = os.environ["CB_QUEUE"]
        app.conf.worker_hijack_root_logger = True
        app.conf.broker_connection_retry_on_startup = True
        t = {}
        t["noop"] = app.task(name="cb.noop")(job_noop)
        t["stamp"] = app.task(name="cb.stamp")(job_stamp)
        t["block"] = app.task(name="cb.block")(job_block)
        _celery = (app, t)
    return _celery


# ---- workers ----------------------------------------------------------------------

def worker_main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True, choices=["RQ", "Celery"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--name", default="w")
    ap.add_argument("--rq-class", default="simple",
                    choices=["simple", "fork"])
    o = ap.parse_args(argv)
    if o.peer == "RQ":
        import redis
        from rq import Queue, SimpleWorker, Worker
        r = redis.Redis.from_url(o.url)
        cls = SimpleWorker if o.rq_class == "simple" else Worker
        w = cls([Queue(o.queue, connection=r)], connection=r,
                name=f"{o.queue}-{o.name}")
        w.work(logging_level="WARNING")
    else:
        app, _ = celery_app()
        app.worker_main(["worker", "--pool=prefork", "--concurrency=2",
                         "--loglevel=WARNING", "-Q", o.queue,
                         "-n", f"{o.name}.{o.queue}@%h",
                         "--without-gossip", "--without-mingle"])


def start_workers(o, k, rq_class="simple"):
    env = dict(os.environ, CB_URL=o.url, CB_QUEUE=o.queue, CB_RUNS=o.runs,
               PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    for i in range(k):
        cmd = [sys.executable, os.path.abspath(__file__), "worker",
               "--peer", PEER, "--url", o.url, "--queue", o.queue,
               "--name", f"w{i}", "--rq-class", rq_class]
        WORKERS.append(subprocess.Popen(cmd, env=env, start_new_session=True,
                                        stdout=sys.stderr))
    end = time.monotonic() + 60
    while True:
        for p in WORKERS:
            check(p.poll() is None,
                  f"a worker exited at its start (status {p.returncode})")
        if PEER == "RQ":
            from rq import Worker
            n = Worker.count(connection=o.r, queue=o.q)
        else:
            n = len(o.app.control.ping(timeout=0.5) or [])
        if n >= k:
            break
        check(time.monotonic() < end, f"{n} of {k} workers up after 60 s")
        time.sleep(0.05)
    time.sleep(0.1)


def finish_workers():
    """After the figures' runs and checks: a worker that does not finish
    its warm shutdown is killed and said in a note (no job is at stake:
    every job was counted already)."""
    bad = stop_workers(timeout=10.0)
    if bad:
        NOTES.append("after the run: " + "; ".join(bad) + " (killed)")


def check_runs(path, n, want=1):
    cnt = [0] * n
    total = bad = 0
    with open(path) as f:
        for line in f:
            total += 1
            v = int(line)
            if 0 <= v < n:
                cnt[v] += 1
            else:
                bad += 1
    lost = sum(1 for c in cnt if c < want)
    dup = sum(1 for c in cnt if c > want)
    check(not (lost or dup or bad),
          f"runs log: {total} runs of {n} jobs (want {want} each): {lost} "
          f"missing, {dup} run too often, {bad} unknown")


# ---- the peers' own calls ------------------------------------------------------------

class RQPeer:
    def __init__(self, o):
        from rq import Queue
        self.o = o
        self.q = o.q = Queue(o.queue, connection=o.r)

    def submit(self, kind, i):
        return self.q.enqueue("cluster_peers.rq_" + kind, i).id

    def wait_all(self, n):
        from rq.registry import FailedJobRegistry, FinishedJobRegistry
        fin = FinishedJobRegistry(queue=self.q)
        failed = FailedJobRegistry(queue=self.q)
        end = time.monotonic() + 300
        while True:
            if fin.count >= n:
                return now_ns()
            check(failed.count == 0, f"{failed.count} job(s) failed")
            check(time.monotonic() < end,
                  f"{fin.count} of {n} jobs finished after 300 s")
            time.sleep(0.001)

    def result(self, jid, timeout=30):
        from rq.job import Job
        job = Job.fetch(jid, connection=self.o.r)
        end = time.monotonic() + timeout
        while True:
            st = job.get_status(refresh=True)
            if st in ("finished", "failed", "stopped", "canceled"):
                break
            check(time.monotonic() < end,
                  f"job {jid} still {st} after {timeout} s")
            time.sleep(0.001)
        return st, job.return_value() if st == "finished" else None

    def check_all(self, ids):
        from rq.job import Job
        for k in range(0, len(ids), 1000):
            jobs = Job.fetch_many(ids[k:k + 1000], connection=self.o.r)
            for i, job in enumerate(jobs):
                check(job is not None, f"job {k + i}: record gone")
                st = job.get_status(refresh=False)
                rv = job.return_value()
                check(st == "finished" and rv == 0,
                      f"job {k + i}: status {st} result {rv!r}, want "
                      "finished 0")

    def cancel(self, jid):
        from rq.command import send_stop_job_command
        send_stop_job_command(self.o.r, jid)

    def cancelled_ok(self, jid):
        st, _ = self.result(jid)
        return st == "stopped", st


class CeleryPeer:
    def __init__(self, o):
        self.o = o
        self.app, self.t = celery_app()
        o.app = self.app
        self.res = {}

    def submit(self, kind, i):
        r = self.t[kind].delay(i)
        self.res[r.id] = r
        return r.id

    def result(self, jid, timeout=30):
        r = self.res[jid]
        v = r.get(timeout=timeout, propagate=False)
        return r.state, v

    def check_all(self, ids):
        for k in range(0, len(ids), 1000):
            keys = ["celery-task-meta-" + i for i in ids[k:k + 1000]]
            for i, raw in enumerate(self.o.r.mget(keys)):
                check(raw is not None, f"job {k + i}: no result stored")
                m = json.loads(raw)
                check(m.get("status") == "SUCCESS" and m.get("result") == 0,
                      f"job {k + i}: state {m.get('status')} result "
                      f"{m.get('result')!r}, want SUCCESS 0")

    def cancel(self, jid):
        self.app.control.revoke(jid, terminate=True)

    def cancelled_ok(self, jid):
        st, _ = self.result(jid)
        return st == "REVOKED", st


def celery_end_counter(url, n, ready_w, out_w):
    """A child process: counts n result messages, writes the time of the
    n-th (or 0 on a 300 s timeout) to out_w."""
    import redis
    r = redis.Redis.from_url(url)
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.psubscribe("celery-task-meta-*")
    while ps.get_message(timeout=1.0) is None and \
            not ps.subscribed:  # wait for the confirmation
        pass
    os.write(ready_w, b"1")
    got, t, end = 0, 0, time.monotonic() + 300
    while got < n and time.monotonic() < end:
        m = ps.get_message(timeout=1.0)
        if m is not None and m["type"] == "pmessage":
            got += 1
            if got == n:
                t = now_ns()
    os.write(out_w, f"{t} {got}".encode())
    os._exit(0)


# ---- scenarios --------------------------------------------------------------------------

def throughput(p, o):
    start_workers(o, o.nodes)
    counter = None
    if PEER == "Celery":
        rr, rw = os.pipe()
        orr, ow = os.pipe()
        pid = os.fork()
        if pid == 0:
            celery_end_counter(o.url, o.jobs, rw, ow)
        counter = pid
        check(os.read(rr, 1) == b"1", "the end counter did not subscribe")
    t0 = now_ns()
    ids = [p.submit("noop", i) for i in range(o.jobs)]
    t_sub = now_ns()
    if PEER == "RQ":
        t_end = p.wait_all(o.jobs)
    else:
        res = os.read(orr, 64).decode().split()
        os.waitpid(counter, 0)
        t_end, got = int(res[0]), int(res[1])
        check(t_end > 0, f"{got} of {o.jobs} result messages after 300 s")
    p.check_all(ids)
    finish_workers()
    check_runs(o.runs, o.jobs)
    out_value("jobs_per_s", o.jobs * 1e9 / (t_end - t0), "jobs/s", "higher",
              f"n={o.jobs} seconds={(t_end - t0) / 1e9:.3f} "
              f"submits_per_s={o.jobs * 1e9 / (t_sub - t0):.0f}")


def start(p, o):
    start_workers(o, o.nodes)
    n = o.warmup + o.samples
    v = []
    for i in range(n):
        time.sleep(0.001)
        t0 = now_ns()
        jid = p.submit("stamp", i)
        st, t1 = p.result(jid)
        check(st in ("finished", "SUCCESS") and isinstance(t1, int),
              f"job {i}: {st} {t1!r}")
        if i >= o.warmup:
            v.append(t1 - t0)
    finish_workers()
    check_runs(o.runs, n)
    out_latency("start", v)


def cancel(p, o):
    start_workers(o, o.nodes, rq_class="fork")
    n = o.warmup + o.samples
    vr, vc = [], []
    key = o.queue + ":started"
    for i in range(n):
        jid = p.submit("block", i)
        got = o.r.blpop(key, 30)
        check(got is not None, f"job {i} did not start in 30 s")
        j, a, pid, _ = (int(x) for x in got[1].decode().split(":"))
        check(j == i, f"started job {j}, want {i}")
        pfd = os.pidfd_open(pid)
        time.sleep(0.001)
        t_call = now_ns()
        p.cancel(jid)
        t_ret = now_ns()
        po = select.poll()
        po.register(pfd, select.POLLIN)
        check(po.poll(30000), f"job {i}'s process still runs 30 s after "
              "the cancel")
        t_gone = now_ns()
        os.close(pfd)
        ok, st = p.cancelled_ok(jid)
        check(ok, f"cancelled job {i} ended {st}")
        if i >= o.warmup:
            vr.append(t_gone - t_ret)
            vc.append(t_gone - t_call)
    finish_workers()
    check_runs(o.runs, n)
    note = ("send_stop_job_command: the worker kills its work horse "
            "(SIGKILL); the figure is until that process is gone"
            if PEER == "RQ" else
            "control.revoke(terminate=True): the worker sends SIGTERM to the "
            "pool process running the task; the figure is until that "
            "process is gone")
    out_latency("after_return", vr, note)
    out_latency("after_call", vc, note)


def recover(p, o):
    out_skip(["recovery_p50_ms", "recovery_max_ms"], RECOVER_WHY[PEER])


SCENARIOS = {"throughput": throughput, "start": start, "cancel": cancel,
             "recover": recover}


def run_peer(argv):
    global PEER, SCENARIO, CONFIG, VERSION
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True, choices=["RQ", "Celery"])
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--url", required=True)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=-1)
    ap.add_argument("--claim-after-ms", type=int, default=1000)  # unused
    o = ap.parse_args(argv)
    PEER, SCENARIO = o.peer, o.scenario
    CONFIG = f"{o.nodes} node" + ("s" if o.nodes != 1 else "")
    if o.warmup < 0:
        o.warmup = min(o.samples // 10, 20)
    import redis
    if PEER == "RQ":
        import rq
        VERSION = rq.__version__
    else:
        import celery
        VERSION = celery.__version__
    if o.scenario == "recover":
        recover(None, o)
        return
    o.r = redis.Redis.from_url(o.url)
    o.queue = f"cb{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="cluster_peers.")
    o.runs = os.path.join(tmp, "runs")
    open(o.runs, "w").close()
    os.environ.update(CB_URL=o.url, CB_QUEUE=o.queue, CB_RUNS=o.runs)
    try:
        p = RQPeer(o) if PEER == "RQ" else CeleryPeer(o)
        SCENARIOS[o.scenario](p, o)
    except SystemExit:
        raise
    except BaseException as e:  # a check that raised: report it, fail
        fail(f"{type(e).__name__}: {e}")
    finally:
        stop_workers(signal.SIGKILL, 5)
        os.unlink(o.runs)
        os.rmdir(tmp)


# ---- report ------------------------------------------------------------------------------

def parse_line(s):
    out = {}
    while s:
        k, eq, rest = s.partition("=")
        if not eq or not k.replace("_", "").isalnum():
            break
        if rest.startswith('"'):
            end = rest.find('"', 1)
            end = len(rest) if end < 0 else end
            out[k] = rest[1:end]
            s = rest[end + 1:].lstrip()
        else:
            v, _, s = rest.partition(" ")
            out[k] = v
            s = s.lstrip()
    return out


def fmt(v):
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2f}M"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    if v == int(v):
        return f"{int(v)}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def med(a):
    a = sorted(a)
    n = len(a)
    return a[n // 2] if n % 2 else (a[n // 2 - 1] + a[n // 2]) / 2


def ratio_cell(cv, bv, better):
    if bv == 0 or cv is None or bv is None or cv <= 0 or bv <= 0:
        return "n/a"
    r = f"{cv / bv:.2f}"
    if better == "lower" and cv != bv:
        r += (f" ({bv / cv:.1f}x faster)" if cv < bv
              else f" ({cv / bv:.1f}x slower)")
    if better == "higher" and cv != bv:
        r += (f" ({cv / bv:.1f}x more)" if cv > bv
              else f" ({bv / cv:.1f}x fewer)")
    return r


TITLES = {
    ("throughput", "jobs_per_s"): "jobs/s end to end (submit -> finished)",
    ("throughput", "submits_per_s"): "submits/s (1 thread, same run)",
    ("start", "start_p50_us"): "submit-to-start p50 (idle)",
    ("start", "start_p99_us"): "submit-to-start p99 (idle)",
    ("cancel", "after_return_p50_us"): "cancel running job p50, from "
    "cancel returned",
    ("cancel", "after_return_p99_us"): "cancel running job p99, from "
    "cancel returned",
    ("cancel", "after_call_p50_us"): "cancel running job p50, from the "
    "cancel call",
    ("cancel", "after_call_p99_us"): "cancel running job p99, from the "
    "cancel call",
    ("recover", "recovery_p50_ms"): "SIGKILL of a node -> its job's "
    "attempt 2 starts, p50",
    ("recover", "recovery_max_ms"): "SIGKILL of a node -> its job's "
    "attempt 2 starts, max",
}

ABOUT = """\
- **throughput**: N jobs of trivial work (the function appends its job
  number to a runs file and returns 0) submitted from one thread of one
  process that is neither a node nor a worker; time from the first submit
  to the last job finished. ctpool-redis: `ctp_cluster_submit` from 1
  thread; end = the N-th message on `<ns>:end:*` (a thread of the
  submitter, PSUBSCRIBEd before the first submit); nodes are separate
  processes with a `ctp_pool` of 2 threads each. RQ: `queue.enqueue`; end =
  `FinishedJobRegistry` reaches N (polled every 1 ms after the last
  submit); SimpleWorker processes (one job at a time each; no fork per
  job). Celery: `task.delay`; end = the N-th result message of its Redis
  backend (a child process PSUBSCRIBEd to `celery-task-meta-*`); `celery
  worker --pool prefork --concurrency 2` per node.
- **submit-to-start**: one job at a time on an idle cluster of 3 nodes (RQ:
  3 SimpleWorkers; Celery: 3 workers of 2 prefork processes), 1 ms between
  jobs; the job's own CLOCK_MONOTONIC at its start minus the time just
  before the submit call. floor: a bare `XADD` -> `XREADGROUP BLOCK`
  of a consumer in another process (the Streams trip every job takes).
- **cancel**: a running job on a cluster of 3 nodes, cancelled from another
  process 1 ms after it reported its start. ctpool-redis:
  `ctp_cluster_cancel` (answers -EINPROGRESS) -> the job's
  `ctp_token_sleep(token, CTP_FOREVER)` returns -ECANCELED on its node
  (the function itself records the time; it then returns and the job ends
  DONE with -ECANCELED). RQ and Celery have no cooperative cancel that
  reaches a running function; what they have kills the process that runs
  it (RQ: `send_stop_job_command`, forking Worker, work horse SIGKILLed,
  job ends `stopped`; Celery: `control.revoke(id, terminate=True)`,
  SIGTERM to the pool process, task ends REVOKED): their figure is until
  that process is gone (pidfd readable in the canceller). "from cancel
  returned" can be below zero: the message may reach the node before the
  reply reaches the canceller. floor: `PUBLISH` -> a `SUBSCRIBE`r in another
  process (from before the call / from its reply).
- **recovery**: 3 nodes with `claim_after` = 1 s; a random 0-500 ms pause
  (a random phase against the nodes' heartbeat and reclaim timers), then a
  job starts and 50 ms later its node is killed with SIGKILL; time from
  just before `kill()` to the job's attempt
  2 starting on another node (it logs its start); then it is cancelled and
  a fresh node replaces the dead one. Goal: claim_after + under 1 s.
- Every job of every peer is counted: each job function appends its number
  to a runs file, and each number must appear exactly once (twice in
  recovery); each job's final record must say finished with result 0
  (ctpool-redis: DONE, status 0, attempts 1; RQ: finished, 0; Celery:
  SUCCESS, 0; cancelled ones: DONE -ECANCELED / stopped / REVOKED). A lost
  or duplicated job fails the run (listed under Errors)."""


def report(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--md", required=True)
    ap.add_argument("--reps", default="?")
    ap.add_argument("--date", default="?")
    ap.add_argument("--machine", default="?")
    ap.add_argument("--redis", default="?")
    ap.add_argument("--command", default="?")
    ap.add_argument("--sizes", default="?")
    ap.add_argument("--versions", default="")
    ap.add_argument("--load", default="?")
    o = ap.parse_args(argv)
    rows, vals, floor, skip, unit, better, notes, versions, errors = \
        [], {}, {}, {}, {}, {}, {}, {}, []
    with open(o.raw) as f:
        for line in f:
            d = parse_line(line.strip())
            if "peer" not in d:
                continue
            p = d["peer"]
            if "version" in d:
                versions[p] = d["version"]
            if "error" in d:
                errors.append(f"{p} {d.get('scenario')}/{d.get('config')}: "
                              f"{d['error']}")
                continue
            if "figure" not in d:
                continue
            if p == "floor":
                fk = (d["scenario"], d["figure"])
                floor.setdefault(fk, []).append(float(d["value"]))
                continue
            key = (d["scenario"], d["config"], d["figure"])
            if key not in vals:
                rows.append(key)
                vals[key] = {}
            if "skip" in d:
                skip[key, p] = d["skip"]
                continue
            unit[key], better[key] = d["unit"], d["better"]
            vals[key].setdefault(p, []).append(float(d["value"]))
            if "note" in d:
                notes.setdefault((p, d["scenario"]), {})[d["note"]] = 1
            if d["figure"] == "jobs_per_s" and "submits_per_s" in d:
                k2 = (d["scenario"], d["config"], "submits_per_s")
                if k2 not in vals:
                    vals[k2] = {}
                    unit[k2], better[k2] = "submits/s", "higher"
                vals[k2].setdefault(p, []).append(float(d["submits_per_s"]))

    # submits/s right after its jobs/s row
    ordered = []
    for key in rows:
        ordered.append(key)
        k2 = (key[0], key[1], "submits_per_s")
        if key[2] == "jobs_per_s" and k2 in vals:
            ordered.append(k2)

    def cell(v, is_skip):
        if v:
            m = med(v)
            return (f"{fmt(m)} [{fmt(min(v))}–{fmt(max(v))}]"
                    if len(v) > 1 else fmt(m)), m
        return ("n/a" if is_skip else "—"), None

    md = ["# libctpool-redis side by side: RQ and Celery on one Redis", ""]
    md.append(f"- Date: {o.date}")
    md.append(f"- Machine: {o.machine}; load average (1, 5, 15 min) "
              f"{o.load} (before the runs it counts other programs only: "
              "above ~0.1 they competed for the 2 CPUs)")
    md.append(f"- Redis: redis-server {o.redis}, on 127.0.0.1 (TCP), "
              "started by the script, no persistence")
    md.append(f"- Command: `{o.command}`")
    md.append(f"- Sizes: {o.sizes}")
    md.append("- Peers: " + ", ".join(
        f"{p} {versions.get(p, '?')}" for p in PEERS if p in versions) +
        (f" ({o.versions})" if o.versions else ""))
    md.append(f"- Each cell: median over {o.reps} run(s) [min–max over the "
              "runs]; every run is its own set of processes, the peers "
              "interleaved by repetition (their order rotated); each "
              "latency is a percentile over that run's samples. best peer: "
              "the better median of RQ and Celery; floor: the bare Redis "
              "trip under the figure (no job system).")
    md.append("")
    md.append("| figure | nodes | unit | ctpool-redis | RQ | Celery | "
              "best peer | ctpool-redis/best | floor | ctpool-redis/floor |")
    md.append("|---|---|---|---|---|---|---|---|---|---|")
    for key in ordered:
        b = better.get(key, "lower")
        cells = {p: cell(vals[key].get(p), (key, p) in skip) for p in PEERS}
        cv = cells["ctpool-redis"][1]
        best = None
        for p in PEERS[1:]:
            m = cells[p][1]
            if m is not None and (best is None or
                                  (m > cells[best][1] if b == "higher"
                                   else m < cells[best][1])):
                best = p
        if best is None:
            bcell, rcell = "n/a", "n/a"
        else:
            bcell, rcell = best, ratio_cell(cv, cells[best][1], b)
        fv = floor.get((key[0], key[2]))
        fcell = cell(fv, False)
        fr = (f"{cv / fcell[1]:.2f}" if cv and fcell[1] and cv > 0 and
              fcell[1] > 0 else "n/a") if fv else "—"
        title = TITLES.get((key[0], key[2]), f"{key[0]} {key[2]}")
        md.append(f"| {title} | {key[1].split()[0]} | "
                  f"{unit.get(key, '')} | {cells['ctpool-redis'][0]} | "
                  f"{cells['RQ'][0]} | {cells['Celery'][0]} | {bcell} | "
                  f"{rcell} | {fcell[0]} | {fr} |")
    md.append("")
    md.append("## What each row measures (bench/cluster_bench.c, "
              "bench/cluster_peers.py)")
    md.append("")
    md.extend(ABOUT.split("\n"))
    seen = {}
    for (key, p), why in skip.items():
        seen.setdefault((p, why), []).append(key[0])
    for (p, sc), ns in notes.items():
        for note in ns:
            seen.setdefault((p, "note: " + note), []).append(sc)
    if seen:
        md.append("")
        md.append("## Not offered (n/a) and notes")
        md.append("")
        for (p, why), where in seen.items():
            md.append(f"- {p} ({', '.join(dict.fromkeys(where))}): {why}")
    md.append("")
    md.append("## Errors")
    md.append("")
    md.extend(("- " + e for e in errors) if errors else
              ["None: every job of every run was counted (none lost, none "
               "run twice)."])
    with open(o.md, "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        report(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_main(sys.argv[2:])
    else:
        run_peer(sys.argv[1:])
