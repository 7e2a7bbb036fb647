#!/usr/bin/python3
"""perfsum.py: per-task tables from one `perf record` of a bench driver run.

Usage: perfsum.py --tasks N --workers W --period NS [--top K] PERF_DATA

The recording (bench/profile/profile.sh) holds three events for the whole
process: cpu-clock samples every NS ns of CPU time (user and kernel),
syscalls:sys_enter_futex and sched:sched_switch. Threads get their role from
the order the driver creates them (perf's FORK records): the W pool workers
first (create_pool), then the producers; the process's first thread is
`main` (setup, wait_idle, checks, shutdown).

Printed per role, per task (divided by --tasks):
  cpu ns/task  samples x NS / N: CPU time, user and kernel
  by function  the sampled code's innermost source function (addr2line -i,
               so code inlined into worker_main shows as scout_poll,
               q_take ...), or the kernel/libc symbol
  futex calls  by operation (WAIT, WAKE, WAIT_BITSET ...), per task
  switches     sched_switch of the role's threads: `sleep` (it blocked) or
               `preempt` (still runnable: the CPU was taken from it)
"""
import argparse
import collections
import os
import re
import subprocess
import sys

FUTEX_OPS = {0: "WAIT", 1: "WAKE", 9: "WAIT_BITSET", 10: "WAKE_BITSET",
             5: "WAKE_OP", 3: "REQUEUE", 4: "CMP_REQUEUE", 6: "LOCK_PI",
             7: "UNLOCK_PI"}


def perf_script(data):
    cmd = ["perf", "script", "-i", data, "--show-task-events",
           "-F", "comm,tid,event,ip,sym,symoff,dso,trace"]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, errors="replace").stdout
    return out.split("\n")


def sym_addrs(dso):
    """symbol -> address, from the file's symbol tables."""
    addrs = {}
    for flag in ([], ["-D"]):
        r = subprocess.run(["nm"] + flag + [dso], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
        for ln in r.stdout.split("\n"):
            p = ln.split()
            if len(p) == 3:
                addrs.setdefault(p[2], int(p[0], 16))
    return addrs


def innermost(dso, addrs):
    """address -> innermost source function (addr2line -i -f)."""
    if not addrs:
        return {}
    # one call per address: -i prints a varying number of lines each
    res = {}
    for a in addrs:
        r = subprocess.run(["addr2line", "-i", "-f", "-e", dso, "0x%x" % a],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True)
        lines = r.stdout.split("\n")
        fn = lines[0].strip() if lines else "??"
        loc = lines[1].strip() if len(lines) > 1 else "?"
        res[a] = "%s:%s" % (os.path.basename(loc.split(":")[0]), fn)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=float, required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--period", type=float, required=True)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("data")
    a = ap.parse_args()
    n = a.tasks
    lines = perf_script(a.data)

    fork_rx = re.compile(r"PERF_RECORD_FORK\((\d+):(\d+)\):\((\d+):(\d+)\)")
    main_tid = None
    order = []
    samples = []  # (tid, event, ip, sym, symoff, dso, trace)
    sample_rx = re.compile(
        r"^\s*(.*?)\s+(\d+)\s+([\w:-]+):\s*(.*)$")
    for ln in lines:
        if "PERF_RECORD_COMM exec" in ln and main_tid is None:
            main_tid = int(ln.split()[1])
            continue
        m = fork_rx.search(ln)
        if m:
            pid, tid = int(m.group(1)), int(m.group(2))
            if pid != tid and tid not in order:
                order.append(tid)
            continue
        if "PERF_RECORD" in ln:
            continue
        m = sample_rx.match(ln)
        if m:
            samples.append((int(m.group(2)), m.group(3), m.group(4)))
    role = {}
    if main_tid is not None:
        role[main_tid] = "main"
    for i, tid in enumerate(order):
        role[tid] = "worker" if i < a.workers else "producer"

    cpu = collections.defaultdict(collections.Counter)  # role -> key -> n
    futex = collections.defaultdict(collections.Counter)
    switch = collections.defaultdict(collections.Counter)
    threads = collections.Counter(role.values())
    want = collections.defaultdict(set)  # dso -> {addr}
    raw_cpu = []
    addr_cache = {}
    for tid, ev, rest in samples:
        r = role.get(tid, "other")
        if ev == "cpu-clock":
            # "ffffffff8164ae7e kfree+0x1e ([kernel.kallsyms])"
            m = re.match(r"([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$", rest)
            if not m:
                cpu[r]["?"] += 1
                continue
            sym, dso = m.group(2), m.group(3)
            s = re.match(r"(.*)\+0x([0-9a-f]+)$", sym)
            base, off = (s.group(1), int(s.group(2), 16)) if s else (sym, 0)
            raw_cpu.append((r, base, off, dso))
            if os.path.isfile(dso) and ("ctpool" in dso or "bench" in dso):
                if dso not in addr_cache:
                    addr_cache[dso] = sym_addrs(dso)
                if base in addr_cache[dso]:
                    want[dso].add(addr_cache[dso][base] + off)
        elif ev == "syscalls:sys_enter_futex":
            m = re.search(r"op: 0x([0-9a-f]+)", rest)
            op = int(m.group(1), 16) if m else -1
            futex[r][FUTEX_OPS.get(op & 0x7f, "op%d" % op)] += 1
        elif ev == "sched:sched_switch":
            m = re.search(r"prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+)",
                          rest)
            if m and int(m.group(1)) == tid:
                st = m.group(2)
                switch[r]["preempt" if st.startswith("R") else "sleep"] += 1
    names = {}
    for dso, addrs in want.items():
        m = innermost(dso, sorted(addrs))
        names[dso] = m
    for r, base, off, dso in raw_cpu:
        key = None
        if dso in names and base in addr_cache.get(dso, {}):
            key = names[dso].get(addr_cache[dso][base] + off)
        if key is None:
            key = "%s [%s]" % (base, os.path.basename(dso))
        cpu[r][key] += 1

    p = a.period
    for r in ("producer", "worker", "main"):
        if r not in threads:
            continue
        tot = sum(cpu[r].values())
        print("#### role %s (%d thread(s)): per task, N = %d" %
              (r, threads[r], n))
        print()
        print("CPU: %.1f ns/task (%d samples of %d ns); futex calls/task: "
              "%s; context switches/task: %s" % (
                  tot * p / n, tot, p,
                  ", ".join("%s %.4f" % (k, v / n) for k, v in
                            sorted(futex[r].items())) or "0",
                  ", ".join("%s %.4f" % (k, v / n) for k, v in
                            sorted(switch[r].items())) or "0"))
        print()
        print("| function (innermost source function, or symbol) | "
              "CPU ns/task | % of role |")
        print("|---|---|---|")
        top = cpu[r].most_common(a.top)
        for k, v in top:
            print("| %s | %.1f | %.1f%% |" % (k, v * p / n,
                                              100.0 * v / max(tot, 1)))
        rest = tot - sum(v for k, v in top)
        print("| (the rest) | %.1f | %.1f%% |" % (rest * p / n,
                                                  100.0 * rest / max(tot, 1)))
        print()


if __name__ == "__main__":
    sys.exit(main())
