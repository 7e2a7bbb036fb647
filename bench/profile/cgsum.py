#!/usr/bin/python3
"""cgsum.py: per-task tables from callgrind output (bench/profile/profile.sh).

Usage: cgsum.py --tasks N [--top K] [--role producer|worker|main|all]
                [--lines] CALLGRIND_FILE...

The files are the per-thread dumps of ONE run (valgrind --tool=callgrind
--separate-threads=yes --collect-bus=yes --collect-systime=yes): name
compression is shared between them, so all of a run's files must be given.

Each thread is given a role by what it ran: `producer` (driver.c
producer_main), `worker` (ctpool's worker_main or the textbook's worker) or
`main` (everything else: setup, wait_idle, the cancel calls).

Costs are attributed to the *source* function that holds the line (inlined
code goes to the function it was written in, found from the sources by the
`{`-at-column-0 rule of the house style), or to the symbol for code without
a readable source (libc). Printed per task (divided by --tasks):
  Ir  instructions executed, Ge  "global bus events" = lock-prefixed
  read-modify-writes (atomics, xchg), sys  system calls made under valgrind,
  and the calls per task into the pthread/malloc/futex entry points.
--lines adds the atomics per task by source line (where each one is).
"""
import argparse
import collections
import os
import re
import sys

EVENTS = ["Ir", "Ge", "sysCount"]  # replaced by the files' `events:` line
CALLEES = ("pthread_mutex_lock", "pthread_mutex_unlock",
           "__pthread_mutex_lock_full", "pthread_cond_signal",
           "pthread_cond_wait", "pthread_cond_broadcast", "malloc", "free",
           "ctp__futex_wait", "ctp__futex_wake", "ck_ec32_wait_pred",
           "ck_ec32_wake", "syscall")

_src_cache = {}


def src_functions(path):
    """[(first_line, last_line, name)] of the functions defined in path."""
    if path in _src_cache:
        return _src_cache[path]
    funcs = []
    try:
        with open(path, errors="replace") as f:
            lines = f.read().split("\n")
    except OSError:
        _src_cache[path] = None
        return None
    i = 0
    while i < len(lines):
        if lines[i].startswith("{"):
            # the signature: the nearest line above at column 0 with a '('
            j = i - 1
            while j >= 0 and (lines[j][:1] in ("", " ", "\t", "*", "/") or
                              "(" not in lines[j]):
                if lines[j][:1] not in ("", " ", "\t") or j < i - 12:
                    break
                j -= 1
            name = None
            if j >= 0:
                m = re.search(r"([A-Za-z_]\w*)\s*\(", lines[j])
                if m:
                    name = m.group(1)
            k = i + 1
            while k < len(lines) and not lines[k].startswith("}"):
                k += 1
            if name:
                funcs.append((j + 1, k + 1, name))
            i = k
        i += 1
    _src_cache[path] = funcs
    return funcs


def srcfunc(path, line):
    funcs = src_functions(path)
    if not funcs:
        return None
    for a, b, name in funcs:
        if a <= line <= b:
            return name
    return None


def norm(path):
    return os.path.normpath(path) if path.startswith("/") else path


class Thread:
    def __init__(self, path):
        self.path = path
        self.cost = collections.defaultdict(lambda: [0] * len(EVENTS))
        self.lines = collections.defaultdict(int)  # (file,line,func) -> Ge
        self.calls = collections.Counter()  # callee name -> calls
        self.fns = set()
        self.total = [0] * len(EVENTS)


def defs_of(files):
    """Name compression tables, shared by every file of one run."""
    global EVENTS
    tab = {"fl": {}, "fn": {}, "ob": {}}
    kind = {"fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl", "cfl": "fl",
            "fn": "fn", "cfn": "fn", "ob": "ob", "cob": "ob"}
    rx = re.compile(r"^(fl|fi|fe|cfi|cfl|fn|cfn|ob|cob)=\((\d+)\) (.*)$")
    for p in files:
        with open(p, errors="replace") as f:
            for ln in f:
                if ln.startswith("events:"):
                    EVENTS = ln.split()[1:]
                m = rx.match(ln)
                if m:
                    tab[kind[m.group(1)]][m.group(2)] = m.group(3).strip()
    return tab, kind


def parse(path, tab, kind):
    th = Thread(path)
    rx = re.compile(r"^(fl|fi|fe|cfi|cfl|fn|cfn|ob|cob)=(?:\((\d+)\))?\s*(.*)$")
    fl = fi = fn = ob = None
    cfn = None
    last_line = 0
    pending_call = None  # callee name whose inclusive cost line follows
    with open(path, errors="replace") as f:
        for ln in f:
            ln = ln.rstrip("\n")
            if not ln or ln.startswith("#"):
                continue
            m = rx.match(ln)
            if m:
                key, num, name = m.groups()
                val = tab[kind[key]].get(num) if num else name
                if not val:
                    val = name
                if key == "fl":
                    fl = fi = norm(val)
                elif key in ("fi", "fe"):
                    fi = norm(val)
                elif key == "fn":
                    fn = val
                    fi = fl
                    th.fns.add(fn)
                elif key == "ob":
                    ob = val
                elif key == "cfn":
                    cfn = val
                continue
            if ln.startswith("calls="):
                pending_call = cfn
                th.calls[cfn.split("@")[0]] += int(ln[6:].split()[0])
                continue
            if not (ln[0].isdigit() or ln[0] in "+-*"):
                continue  # summary:, totals:, events: ...
            parts = ln.split()
            pos = parts[0]
            if pos == "*":
                line = last_line
            elif pos[0] in "+-":
                line = last_line + int(pos)
            else:
                line = int(pos)
            last_line = line
            if pending_call is not None:
                pending_call = None  # an inclusive cost: not this fn's
                continue
            ev = [int(x) for x in parts[1:1 + len(EVENTS)]]
            ev += [0] * (len(EVENTS) - len(ev))
            sf = srcfunc(fi, line) if fi and fi.startswith("/work") else None
            if sf is None and fi and fi.startswith("/usr/include/ck"):
                sf = srcfunc(fi, line)
            if sf is not None:
                k = "%s:%s" % (os.path.basename(fi), sf)
            else:
                k = "%s [%s]" % (fn.split("'")[0], os.path.basename(ob or "?"))
            c = th.cost[k]
            for i in range(len(EVENTS)):
                c[i] += ev[i]
                th.total[i] += ev[i]
            g = EVENTS.index("Ge") if "Ge" in EVENTS else None
            if g is not None and ev[g]:
                th.lines[(os.path.basename(fi or "?"), line, k)] += ev[g]
    return th


def role_of(th):
    fns = th.fns
    if "producer_main" in fns:
        return "producer"
    if "worker_main" in fns or "worker" in fns:
        return "worker"
    return "main"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=float, required=True)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--role", default="all")
    ap.add_argument("--lines", action="store_true")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    files = [p for p in a.files if os.path.getsize(p) > 0]
    tab, kind = defs_of(files)
    roles = collections.OrderedDict()
    for p in sorted(files):
        th = parse(p, tab, kind)
        if th.total[0] == 0:
            continue
        roles.setdefault(role_of(th), []).append(th)
    n = a.tasks
    order = [r for r in ("producer", "worker", "main") if r in roles]
    if a.role != "all":
        order = [r for r in order if r == a.role]
    ne = len(EVENTS)
    ix = {e: i for i, e in enumerate(EVENTS)}
    ge = ix.get("Ge")

    # columns: Ir, Ge, sysCount, and with --cache-sim the D1 and LL data
    # misses (reads + writes)
    def cols(v):
        c = [v[ix["Ir"]] / n]
        if ge is not None:
            c.append(v[ge] / n)
        if "sysCount" in ix:
            c.append(v[ix["sysCount"]] / n)
        if "D1mr" in ix:
            c.append((v[ix["D1mr"]] + v[ix["D1mw"]]) / n)
            c.append((v[ix["DLmr"]] + v[ix["DLmw"]]) / n)
        return c

    heads = ["Ir/task"]
    if ge is not None:
        heads.append("atomics (Ge)/task")
    if "sysCount" in ix:
        heads.append("syscalls/task (valgrind)")
    if "D1mr" in ix:
        heads += ["D1 misses/task (sim)", "LL misses/task (sim)"]
    fmt = lambda c: " | ".join("%.1f" % c[0:1][0] if i == 0 else
                               "%.3f" % x for i, x in enumerate(c))
    for r in order:
        ths = roles[r]
        cost = collections.defaultdict(lambda: [0] * ne)
        calls = collections.Counter()
        lines = collections.Counter()
        tot = [0] * ne
        for th in ths:
            for k, v in th.cost.items():
                for i in range(ne):
                    cost[k][i] += v[i]
            calls.update(th.calls)
            lines.update(th.lines)
            for i in range(ne):
                tot[i] += th.total[i]
        print("#### role %s (%d thread(s)): per task, N = %d" %
              (r, len(ths), n))
        print()
        print("| function (source; inlined code included) | " +
              " | ".join(heads[:1] + ["% of Ir"] + heads[1:]) + " |")
        print("|---" * (len(heads) + 2) + "|")

        def row(name, v):
            c = cols(v)
            print("| %s | %.1f | %.1f%% | %s |" % (
                name, c[0], 100.0 * v[0] / max(tot[0], 1),
                " | ".join("%.3f" % x for x in c[1:])))
        row("**all (role total)**", tot)
        top = sorted(cost.items(), key=lambda kv: -kv[1][0])[:a.top]
        for k, v in top:
            row(k, v)
        rest = [tot[i] - sum(v[i] for k, v in top) for i in range(ne)]
        row("(the rest)", rest)
        print()
        sel = [(c, calls[c]) for c in CALLEES if calls.get(c)]
        if sel:
            print("calls per task: " + ", ".join(
                "%s %.3f" % (c, k / n) for c, k in sel))
            print()
        if a.lines and ge is not None:
            print("| atomic at (file:line, function) | Ge/task |")
            print("|---|---|")
            for (fi, line, k), v in sorted(lines.items(),
                                           key=lambda kv: -kv[1]):
                if v / n < 0.005:
                    continue
                print("| %s:%d (%s) | %.3f |" % (fi, line, k, v / n))
            print()


if __name__ == "__main__":
    sys.exit(main())
