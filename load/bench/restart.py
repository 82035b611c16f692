#!/usr/bin/env python3
"""What one node's restart costs PostgreSQL, without the consistency checker's noise: 3 nodes
and a frontend (its hot cache off) over the quick suite's 100,000 products, open-loop Zipf at
2,500 req/s for 75 s; nodes 1 and 2 restarted (SIGTERM, start again) at 30 s and 50 s. Every
second, each node's source queries; per restart, the queries above the 6 s before, over the
10 s after, and the peak of the 3-s average.

  load/bench.sh restart [node flags, e.g. --handoff-send false]
"""
import os, shutil, signal, sys, tempfile, threading, time

from . import suite
from .suite import MODES, Cluster, Pg, geeload, wait, metric_sum  # noqa: E402
from .consistency import start_frontend_with  # noqa: E402

SECS, RESTARTS = 75, ((30, 1), (50, 2))


def main():
    m, extra = MODES["quick"], sys.argv[1:]
    pg = Pg()
    try:
        replay = suite.seed_for_zipf(pg, m)
        work = tempfile.mkdtemp(prefix="geecache-restart-")
        cl = Cluster(pg, replay["cache_bytes"] // 3, work, extra)
        for i in (1, 2, 3):
            cl.start(i)
        wait(lambda: cl.agreed([1, 2, 3]), 30, "3 nodes agreed")
        front, fapi = start_frontend_with(cl, work, ["--hot-min-qps", "1e12"])
        wait(lambda: suite.status(f"{fapi}/ready") == 200, 30, "the frontend ready")
        load, _ = suite.in_background(
            geeload, "run", "--target", fapi, "--keys", f"zipf:0.99:{m['products']}", "--seed",
            3, "--rate", 2500, "--concurrency", 256, "--duration", f"{SECS}s",
            json_path=f"{work}/load.json")
        t0 = time.time()
        per_s, per_node = {}, {}

        def scrape():
            prev = None
            while time.time() < t0 + SECS:
                cur = []
                for n, i in enumerate((1, 2, 3)):
                    try:
                        cur.append(metric_sum(cl.api(i), "geecache_source_duration_seconds_count"))
                    except Exception:  # away: idle this second (as geeload counts it)
                        cur.append(prev[n] if prev else None)
                if prev and None not in cur and None not in prev:
                    # A counter that went down is a restarted node: all of it is new.
                    d = [c - p if c >= p else c for c, p in zip(cur, prev)]
                    per_s[round(time.time() - t0)] = sum(d)
                    per_node[round(time.time() - t0)] = d
                prev = cur
                time.sleep(1)
        th = threading.Thread(target=scrape)
        th.start()
        for at, node in RESTARTS:
            time.sleep(max(0.0, t0 + at - time.time()))
            cl.procs[node].send_signal(signal.SIGTERM)
            cl.procs[node].wait(30)
            cl.start(node)
            wait(lambda: cl.agreed([1, 2, 3]), 30, f"node {node} back")
        load.join()
        th.join()
        front.kill()
        cl.stop()
        shutil.rmtree(work, ignore_errors=True)
    finally:
        pg.stop()
    print(f"\nrestarts under Zipf at 2,500 req/s, flags: {' '.join(extra) or 'defaults'}")
    for at, node in RESTARTS:
        before = [per_s[t] for t in range(at - 6, at) if t in per_s]
        after = [per_s[t] for t in range(at, at + 10) if t in per_s]
        base = sum(before) / len(before)
        peak = max(sum(after[i:i + 3]) / 3 for i in range(len(after) - 2))
        print(f"  node {node} at {at} s: {base:,.0f} queries/s before; {sum(a - base for a in after):,.0f}"
              f" queries above it over the next 10 s; 3-s peak {peak:,.0f} ({peak / base:.2f}x)")
        print("    second  node 1  node 2  node 3   (queries; a node that is away counts 0,"
              " and its last queries before it left are not seen)")
        for t in range(at - 2, at + 11):
            row = per_node.get(t)
            print(f"    {t - at:+6d}  " + ("  ".join(f"{q:6,.0f}" for q in row) if row else "   -"))


if __name__ == "__main__":
    main()
