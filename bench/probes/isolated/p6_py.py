"""p6: Python anchors. usage: python3 p6_py.py [rt_iters] [kill_iters]"""
import sys, time, concurrent.futures as cf
import pebble

def noop(): return None
def spin():
    while True: pass

def pct(name, v):
    v = sorted(v); n = len(v)
    print(f"{name:48s} n={n:<5d} p50={v[n//2]*1e6:9.2f} us  p99={v[int(n*0.99)]*1e6:9.2f} us  min={v[0]*1e6:9.2f} us  max={v[-1]*1e6:9.2f} us", flush=True)

def rt(submit, iters, warm=200):
    out = []
    for i in range(warm + iters):
        t0 = time.perf_counter(); r = submit().result(); t1 = time.perf_counter()
        assert r is None
        if i >= warm: out.append(t1 - t0)
    return out

if __name__ == "__main__":
    rt_iters = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    kill_iters = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    print(f"python {sys.version.split()[0]}, pebble {getattr(pebble, '__version__', '5.0.3 (Debian)')}")
    with cf.ProcessPoolExecutor(max_workers=1) as ex:
        pct("py ProcessPoolExecutor round trip (empty task)", rt(lambda: ex.submit(noop), rt_iters))
        f = ex.submit(spin); time.sleep(0.2)
        print(f"   PPE: running future.cancel() -> {f.cancel()} (running: {f.running()}); no API stops one running task in 3.11")
        for p in list(ex._processes.values()): p.kill()   # the only way: kill a worker by hand
        try: ex.submit(noop).result(timeout=5); print("   PPE after killing its worker: still usable")
        except Exception as e: print(f"   PPE after killing its worker by hand: {type(e).__name__} (pool broken)")
    with pebble.ProcessPool(max_workers=1) as pool:
        pct("py pebble ProcessPool round trip (empty task)", rt(lambda: pool.schedule(noop), rt_iters))
        T = 0.010
        if kill_iters == 0: sys.exit(0)
        kill, repl = [], []
        for i in range(20 + kill_iters):
            t0 = time.perf_counter()
            fs = pool.schedule(spin, timeout=T)
            fn = pool.schedule(noop)
            try: fs.result(); raise SystemExit("stuck task returned?")
            except cf.TimeoutError: pass
            t1 = time.perf_counter()
            assert fn.result() is None
            t2 = time.perf_counter()
            if i >= 20: kill.append(t1 - t0 - T); repl.append(t2 - t0 - T)
        pct("py pebble kill: timeout end -> TimeoutError seen", kill)
        pct("py pebble kill: timeout end -> next task done", repl)
