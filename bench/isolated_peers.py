#!/usr/bin/python3
"""isolated_peers.py: Python's process pools measured like bench_isolated.c.

Run it with Debian's /usr/bin/python3 (python3-pebble is a Debian package;
scripts/deps.sh installs it).

Usage:
  isolated_peers.py --peer pebble|ProcessPoolExecutor <scenario>
                    [--n N] [--warmup W] [--procs P] [--timeout-ms T]
                    [--kill-after-ms K]
  isolated_peers.py report RAW --csv CSV --md MD --reps R
                    (appends the isolated rows to CSV and MD)

Scenarios: the same names, options, work and checks as bench_isolated.c
(see its header); each Python peer does what its own API offers:
  roundtrip    submit (pebble: schedule) an empty function, wait for its
               result, one at a time, on a pool of P worker processes.
  kill         pebble: schedule(spin, timeout=T), spin a `while True` loop:
               late = TimeoutError seen - (submit + T) (pebble has no
               kill_after: its hard limit is T, counted from the start in
               its worker); then an empty task submitted at once: its round
               trip is `replace`. ProcessPoolExecutor cannot stop a running
               task (before Python 3.14, and then only every worker at once).
  cancel-kill  pebble: future.cancel() of the running spin: late = cancel
               to the worker process gone (its pidfd readable); result()
               raises CancelledError at once, while the function still runs.
  coop-cancel  neither pool has a cooperative cancel that reaches a running
               function: n/a.
  throughput   N tiny tasks (i -> (2i+1, i % 1000)) submitted at once by one
               thread, from the first submit until every future is done.
Output: the same key=value lines as bench_isolated (skip="why" for what the
peer does not offer; error="what" and exit status 1 when a check fails).
"""
import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import platform
import select
import sys
import time

# ---- output -----------------------------------------------------------------

PEER = "?"
SCENARIO = "?"
CONFIG = "?"
VERSION = "?"


def quote(s):
    return '"' + str(s).replace('"', "'").replace("\n", " ") + '"'


def fail(msg):
    print(f"peer={PEER} scenario={SCENARIO} config={CONFIG} "
          f"error={quote(msg)}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def out_value(figure, value, unit, better, extra=""):
    print(f"peer={PEER} scenario={SCENARIO} config={CONFIG} figure={figure} "
          f"value={value:.3f} unit={unit} better={better} version={VERSION}"
          + (" " + extra if extra else ""), flush=True)


def out_skip(figures, why):
    for f in figures:
        print(f"peer={PEER} scenario={SCENARIO} config={CONFIG} figure={f} "
              f"skip={quote(why)}", flush=True)


def now_ns():
    return time.monotonic_ns()  # CLOCK_MONOTONIC, as the C side


def pct_us(v, p):
    """Nearest-rank percentile of sorted v (ns), in us (driver.c's rule)."""
    rank = (p * len(v) + 99) // 100
    return v[max(rank, 1) - 1] / 1000.0


def out_latency(name, v, all_figures=False):
    v = sorted(v)
    extra = f"n={len(v)} min_us={v[0] / 1000:.3f} max_us={v[-1] / 1000:.3f}"
    out_value(f"{name}_p50_us", pct_us(v, 50), "us", "lower", extra)
    out_value(f"{name}_p99_us", pct_us(v, 99), "us", "lower", extra)
    if all_figures:
        out_value(f"{name}_min_us", v[0] / 1000, "us", "lower", extra)
        out_value(f"{name}_max_us", v[-1] / 1000, "us", "lower", extra)


# ---- what runs in the worker processes ----------------------------------------

STARTED = None  # a shared RawValue, made before the pool (fork inherits it)


def noop():
    return None


def spin():
    while True:
        pass


def spin_mark():
    STARTED.value = os.getpid()
    while True:
        pass


def tput(i):
    return (2 * i + 1, i % 1000)


# ---- the two peers --------------------------------------------------------------

class Pebble:
    name = "pebble"

    def __init__(self, procs):
        import pebble
        self.pool = pebble.ProcessPool(max_workers=procs)

    @staticmethod
    def version():
        import pebble
        return getattr(pebble, "__version__", "?")

    def submit(self, fn, *args, timeout=None):
        return self.pool.schedule(fn, args=args, timeout=timeout)

    def close(self):
        self.pool.close()
        self.pool.join()


class PPE:
    name = "ProcessPoolExecutor"

    def __init__(self, procs):
        self.pool = cf.ProcessPoolExecutor(max_workers=procs)

    @staticmethod
    def version():
        return "python" + platform.python_version()

    def submit(self, fn, *args, timeout=None):
        assert timeout is None
        return self.pool.submit(fn, *args)

    def close(self):
        self.pool.shutdown(wait=True)


def end_pool(p):
    p.close()
    left = mp.active_children()  # also reaps
    check(not left, f"{len(left)} worker process(es) left after close")


def run_empty(p, what):
    f = p.submit(noop)
    r = f.result(timeout=60)
    check(r is None, f"{what}: result {r!r}, want None")


# ---- scenarios ---------------------------------------------------------------------

def roundtrip(cls, o):
    p = cls(o.procs)
    v = []
    for i in range(o.warmup + o.n):
        t0 = now_ns()
        run_empty(p, "empty task")
        t1 = now_ns()
        if i >= o.warmup:
            v.append(t1 - t0)
    end_pool(p)
    out_latency("rt", v, True)


NO_STOP = ("cannot stop a running task (Python 3.11: future.cancel() of a "
           "running task returns False; killing a worker by hand breaks the "
           "whole pool)")


def kill(cls, o):
    if cls is PPE:
        out_skip(["late_p50_us", "late_p99_us", "replace_p50_us",
                  "replace_p99_us"], NO_STOP)
        return
    p = cls(1)
    T = o.timeout_ms / 1000.0
    late, repl = [], []
    for i in range(o.warmup + o.n):
        jitter(i)
        t0 = now_ns()
        f = p.submit(spin, timeout=T)
        try:
            f.result(timeout=60)
            fail("spinning task returned")
        except cf.TimeoutError:
            pass
        t1 = now_ns()
        check(f.done() and isinstance(f.exception(), cf.TimeoutError),
              "spinning task: no TimeoutError from its timeout in 60 s")
        t2 = now_ns()
        run_empty(p, "task after a kill")
        t3 = now_ns()
        if i >= o.warmup:
            late.append(t1 - (t0 + o.timeout_ms * 1000000))
            repl.append(t3 - t2)
    end_pool(p)
    note = ('note="no kill_after: killed at its timeout (counted from the '
            'start in its worker, checked every 0.1 s)"')
    late.sort()
    extra = (f"n={len(late)} min_us={late[0] / 1000:.3f} "
             f"max_us={late[-1] / 1000:.3f} {note}")
    out_value("late_p50_us", pct_us(late, 50), "us", "lower", extra)
    out_value("late_p99_us", pct_us(late, 99), "us", "lower", extra)
    out_latency("replace", repl)


def jitter(i):
    """Idle time before sample i of the kill scenarios: bench_isolated.c's
    sequence, 0 to 100 ms spread evenly, so pebble's 0.1 s polling period
    is met at every phase rather than the one a tight loop locks onto."""
    time.sleep(((i * 7919) % 100000) * 1000 / 1e9)


def wait_started(what):
    end = time.monotonic() + 30
    while STARTED.value == 0:
        check(time.monotonic() < end, f"{what}: did not start in 30 s")
        time.sleep(20e-6)
    return STARTED.value


def cancel_kill(cls, o):
    if cls is PPE:
        out_skip(["late_p50_us", "late_p99_us"], NO_STOP)
        return
    p = cls(1)
    v = []
    for i in range(o.warmup + o.n):
        jitter(i)
        STARTED.value = 0
        f = p.submit(spin_mark)
        pid = wait_started("spinning task")
        pfd = os.pidfd_open(pid)
        time.sleep(0.001)  # it is in its loop now
        t0 = now_ns()
        check(f.cancel(), "cancel() of the running task returned False")
        po = select.poll()
        po.register(pfd, select.POLLIN)
        check(po.poll(60000), "the cancelled task's process still runs "
              "after 60 s")
        t1 = now_ns()
        os.close(pfd)
        check(f.cancelled(), "the cancelled task's future is not cancelled")
        run_empty(p, "task after a cancel")  # untimed, as on the C side
        if i >= o.warmup:
            v.append(t1 - t0)
    end_pool(p)
    v.sort()
    extra = (f"n={len(v)} min_us={v[0] / 1000:.3f} max_us={v[-1] / 1000:.3f}"
             ' note="cancel() to the worker process gone; result() raises '
             'CancelledError at once, while the function still runs"')
    out_value("late_p50_us", pct_us(v, 50), "us", "lower", extra)
    out_value("late_p99_us", pct_us(v, 99), "us", "lower", extra)


def coop_cancel(cls, o):
    why = ("no cooperative cancel of a running task: no token reaches the "
           "worker process" + (" (cancel() kills it: see cancel-kill)"
                               if cls is Pebble else ""))
    out_skip(["cancel_p50_us", "cancel_p99_us"], why)


def tput_round(p, n, base):
    futs = [p.submit(tput, base + i) for i in range(n)]
    done, pending = cf.wait(futs, timeout=300)
    check(not pending, f"throughput: {len(pending)} task(s) not done after "
          "300 s")
    return futs


def tput_check(futs, base):
    for i, f in enumerate(futs):
        x = base + i
        r = f.result(timeout=0)
        check(r == (2 * x + 1, x % 1000),
              f"throughput: task {i}: result {r!r}, want "
              f"{(2 * x + 1, x % 1000)!r}")


def throughput(cls, o):
    p = cls(o.procs)
    tput_check(tput_round(p, o.warmup, 1000000), 1000000)
    t0 = now_ns()
    futs = tput_round(p, o.n, 0)
    t1 = now_ns()
    tput_check(futs, 0)
    end_pool(p)
    out_value("tasks_per_s", o.n * 1e9 / (t1 - t0), "tasks/s", "higher",
              f"n={o.n} seconds={(t1 - t0) / 1e9:.3f}")


SCENARIOS = {"roundtrip": roundtrip, "kill": kill, "cancel-kill": cancel_kill,
             "coop-cancel": coop_cancel, "throughput": throughput}


def run_peer(argv):
    global PEER, SCENARIO, CONFIG, VERSION, STARTED
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True,
                    choices=["pebble", "ProcessPoolExecutor"])
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=-1)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--timeout-ms", type=int, default=10)
    ap.add_argument("--kill-after-ms", type=int, default=10)
    o = ap.parse_args(argv)
    cls = Pebble if o.peer == "pebble" else PPE
    PEER, SCENARIO = cls.name, o.scenario
    # config labels: the same rule as bench_isolated.c
    if o.scenario in ("roundtrip", "throughput"):
        o.n = o.n or 20000
        CONFIG = f"t{o.procs}p{o.procs}"
    else:
        o.procs = 1
        o.n = o.n or 200
        CONFIG = {"kill": f"T{o.timeout_ms}ms+K{o.kill_after_ms}ms",
                  "cancel-kill": f"K{o.kill_after_ms}ms",
                  "coop-cancel": "sleep60s"}[o.scenario]
    if o.warmup < 0:  # the same defaults as bench_isolated.c
        o.warmup = min(o.n // 10, 1000 if o.scenario in ("roundtrip",
                                                         "throughput") else 3)
    try:
        VERSION = cls.version()
    except ImportError as e:
        fail(f"cannot import {cls.name}: {e} (apt install python3-pebble; "
             "run /usr/bin/python3)")
    STARTED = mp.RawValue("q", 0)
    try:
        SCENARIOS[o.scenario](cls, o)
    except SystemExit:
        raise
    except BaseException as e:  # a failed call is an error line, too
        fail(f"{type(e).__name__}: {e}")


# ---- report --------------------------------------------------------------------------

PEERS = ["ctpool", "pebble", "ProcessPoolExecutor"]

ABOUT = """\
- roundtrip tPpP: submit an empty task, wait for it, one at a time, on a \
pool of P threads and P worker processes (Python: P worker processes); \
after a warm-up. floor: 16 bytes each way over a SOCK_SEQPACKET socketpair \
with a child process.
- kill T..+K..: a task spinning in `for(;;)`/`while True` with a timeout T; \
ctpool's pool has kill_after K, so its hard limit is T+K (pebble has no \
kill_after: T). late = result seen - (submit + hard limit). replace: the \
round trip of an empty task submitted right after (the killed process's \
replacement; ctpool's fork server keeps a spare process forked ahead, so \
it can beat the fork floor). Before each sample the pools idle 0-100 ms \
(the same sequence for all), so pebble's 0.1 s polling is met at every \
phase. floor: late = SIGKILL to pidfd readable of a spinning child; \
replace = fork() + _exit + waitpid.
- cancel-kill K..: the same spinning task cancelled by handle once it runs. \
ctpool: cancel to ctp_task_wait returned (the process killed K after the \
cancel, reaped and replaced) minus K; pebble: cancel() to the worker \
process gone. floor: SIGKILL to pidfd readable.
- coop-cancel: a task in ctp_token_sleep(token, 60 s) cancelled by handle: \
cancel to ctp_task_wait returned (the token wakes the worker process, the \
function returns, the result comes back). floor: a store and FUTEX_WAKE on \
a shared word a child sleeps on, until its 16-byte reply arrives.
- throughput tPpP: N tiny tasks (input i, output 2i+1 and status i % 1000, \
every one checked) submitted at once by one thread to a pool of P threads \
and P processes (Python: P processes), until all are done. floor: P \
threads each ping-ponging 8 bytes with its own child process.
- Every run checks every task's status, output and exit signal (SIGKILL for \
the killed ones), the pool's counters, and that no process is left; a \
failed check is an error, never a number."""


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
    if bv == 0:
        return "n/a"
    r = f"{cv / bv:.2f}"
    if better == "lower" and cv > 0 and cv != bv:
        r += (f" ({bv / cv:.1f}x faster)" if cv < bv
              else f" ({cv / bv:.1f}x slower)")
    if better == "higher" and cv > 0 and cv != bv:
        r += (f" ({cv / bv:.1f}x more)" if cv > bv
              else f" ({bv / cv:.1f}x fewer)")
    return r


def report(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--csv", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--reps", default="?")
    o = ap.parse_args(argv)
    rows, vals, skip, unit, better, notes, versions, errors = \
        [], {}, {}, {}, {}, {}, {}, []
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
                notes[p, d["scenario"]] = d["note"]

    def cell(key, p):
        v = vals[key].get(p)
        if v:
            m = med(v)
            return (f"{fmt(m)} [{fmt(min(v))}–{fmt(max(v))}]"
                    if len(v) > 1 else fmt(m)), m, min(v), max(v)
        return ("n/a" if (key, p) in skip else "—"), None, None, None

    with open(o.csv, "a") as f:
        for key in rows:
            for p in PEERS + ["floor"]:
                v = vals[key].get(p)
                if not v and (key, p) not in skip:
                    continue
                note = ("skip: " + skip[key, p]) if (key, p) in skip else \
                    notes.get((p, key[0]), "")
                note = '"' + note.replace('"', '""') + '"'
                if v:
                    f.write(f"isolated-{key[0]},{key[1]},{key[2]},"
                            f"{unit[key]},{better[key]},{p},{med(v):.10g},"
                            f"{min(v):.10g},{max(v):.10g},{len(v)},,{note}\n")
                else:
                    f.write(f"isolated-{key[0]},{key[1]},{key[2]},,,{p},,,,0,"
                            f",{note}\n")

    md = []
    md.append("")
    md.append("## Isolated tasks (worker processes) side by side")
    md.append("")
    md.append("- Peers: " + ", ".join(
        f"{p} {versions.get(p, '?')}" for p in PEERS + ["floor"]
        if p in versions) + " (Python peers run by /usr/bin/python3)")
    md.append(f"- Each cell: median over {o.reps} run(s) [min–max over the "
              "runs]; each run is one process, peers interleaved; each "
              "latency is a percentile over the run's samples (n and the "
              "run's min/max in latest.csv, scenario isolated-*).")
    md.append("- best peer: the better median of pebble and "
              "ProcessPoolExecutor; ahead: ctpool's median beats it "
              "(\"ranges overlap\": the min–max ranges over runs overlap). "
              "floor: what the kernel needs for the same operation, "
              "without any pool; ctpool/floor is the pool's cost over it.")
    md.append("")
    md.append("| scenario | config | figure | unit | ctpool | pebble | "
              "ProcessPoolExecutor | best peer | ctpool/best | ahead | floor "
              "| ctpool/floor |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in rows:
        b = better.get(key, "lower")
        cells = {p: cell(key, p) for p in PEERS + ["floor"]}
        cv, clo, chi = cells["ctpool"][1:]
        best = None
        for p in PEERS[1:]:
            m = cells[p][1]
            if m is not None and (best is None or
                                  (m > cells[best][1] if b == "higher"
                                   else m < cells[best][1])):
                best = p
        if best is None or cv is None:
            bcell, rcell, ahead = best or "—", "n/a", "n/a"
        else:
            bv, blo, bhi = cells[best][1:]
            bcell, rcell = best, ratio_cell(cv, bv, b)
            if cv == bv:
                ahead = "tie"
            else:
                ahead = "yes" if (cv > bv if b == "higher" else cv < bv) \
                    else "no"
                if len(vals[key].get("ctpool", [])) > 1 and clo <= bhi and \
                        blo <= chi:
                    ahead += " (ranges overlap)"
        fv = cells["floor"][1]
        fr = ratio_cell(cv, fv, b) if fv is not None and cv is not None \
            else "n/a"
        md.append(f"| {key[0]} | {key[1]} | {key[2]} | {unit.get(key, '')} "
                  f"| {cells['ctpool'][0]} | {cells['pebble'][0]} | "
                  f"{cells['ProcessPoolExecutor'][0]} | {bcell} | {rcell} | "
                  f"{ahead} | {cells['floor'][0]} | {fr} |")
    md.append("")
    md.append("### What the isolated rows measure (bench/bench_isolated.c, "
              "bench/isolated_peers.py)")
    md.append("")
    md.extend(ABOUT.split("\n"))
    seen = {}
    for (key, p), why in skip.items():
        seen.setdefault((p, why), []).append(f"{key[0]}/{key[1]}")
    for (p, sc), note in notes.items():
        seen.setdefault((p, "note: " + note), []).append(sc)
    if seen:
        md.append("")
        md.append("### Not offered (n/a) and notes")
        md.append("")
        for (p, why), where in seen.items():
            md.append(f"- {p} ({', '.join(dict.fromkeys(where))}): {why}")
    if errors:
        md.append("")
        md.append("### Errors")
        md.append("")
        md.extend("- " + e for e in errors)
    with open(o.md, "a") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        report(sys.argv[2:])
    else:
        run_peer(sys.argv[1:])
