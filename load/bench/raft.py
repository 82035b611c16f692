#!/usr/bin/env python3
"""Raft membership timings, medians of N runs (default 5), release binary on 127.0.0.1:

  formation  start of 3 processes -> all 3 /ready, one leader, same epoch
  failover   SIGKILL of the leader -> new leader, and the dead node out of the ring on both
             survivors (--dead-after 3s)
  scale-up   2 more processes started -> both /ready and all 5 on the same epoch
Run through load/bench.sh raft, which builds the release binary first.
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

from . import hit as b


def view(api):
    try:
        with urllib.request.urlopen(f"{api}/cluster", timeout=1) as r:
            return json.load(r)
    except Exception:
        return None


def ready(api):
    try:
        with urllib.request.urlopen(f"{api}/ready", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def wait(pred, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.01)
    raise SystemExit("timed out")


def agreed(apis, want):
    vs = [view(a) for a in apis]
    if not all(vs):
        return False
    ids = [sorted(m["id"] for m in v["members"]) for v in vs]
    return (all(i == want for i in ids) and len({v["epoch"] for v in vs}) == 1
            and len({v["leader_id"] for v in vs}) == 1 and vs[0]["leader_id"] in want)


def one_run(dead_after):
    d = tempfile.mkdtemp(prefix="geecache-bench-")
    ports = {i: (b.free_port(), b.free_port()) for i in range(1, 6)}
    seeds = ",".join(f"http://127.0.0.1:{ports[i][1]}" for i in (1, 2, 3))
    procs = {}

    def start(i):
        api, peer = ports[i]
        procs[i] = subprocess.Popen(
            [b.BIN, "node", "--node-id", str(i), "--self", f"http://127.0.0.1:{peer}",
             "--api-addr", f"127.0.0.1:{api}", "--peer-addr", f"127.0.0.1:{peer}",
             "--seeds", seeds, "--bootstrap-expect", "3", "--data-dir", f"{d}/n{i}",
             "--dead-after", dead_after, "--workers", "1"],
            stdout=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))

    api = {i: f"http://127.0.0.1:{ports[i][0]}" for i in ports}
    try:
        t0 = time.time()
        for i in (1, 2, 3):
            start(i)
        wait(lambda: all(ready(api[i]) for i in (1, 2, 3)) and agreed([api[i] for i in (1, 2, 3)], [1, 2, 3]))
        formation = time.time() - t0

        t0 = time.time()
        for i in (4, 5):
            start(i)
        wait(lambda: all(ready(api[i]) for i in (4, 5)) and agreed([api[i] for i in range(1, 6)], [1, 2, 3, 4, 5]))
        scale_up = time.time() - t0

        leader = view(api[1])["leader_id"]
        rest = [i for i in range(1, 6) if i != leader]
        t0 = time.time()
        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait()

        def new_leader():
            vs = [view(api[i]) for i in rest]
            ls = {v["leader_id"] for v in vs if v}
            return len(ls) == 1 and ls.pop() in rest
        wait(new_leader)
        election = time.time() - t0
        wait(lambda: agreed([api[i] for i in rest], rest))
        failover = time.time() - t0
        return formation, failover, scale_up, election
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dead-after", default="3s")
    ap.add_argument("--json")
    a = ap.parse_args()
    runs = [one_run(a.dead_after) for _ in range(a.runs)]
    names = ("formation", "failover", "scale_up", "election")
    med = {n: statistics.median(r[i] for r in runs) * 1000 for i, n in enumerate(names)}
    print(f"\nRaft membership on 127.0.0.1, medians of {a.runs} runs (ms):")
    for n, target in zip(names, (1000, 3000, 2000, 3000)):
        each = ", ".join(f"{r[names.index(n)] * 1000:.0f}" for r in runs)
        print(f"  {n:<10} {med[n]:>7.0f}   (target < {target}; runs: {each})")
    print(f"  election: SIGKILL of the leader -> a new leader agreed by the survivors; failover adds "
          f"the dead node's removal, which waits --dead-after {a.dead_after} from its last heartbeat")
    if a.json:
        json.dump({"medians_ms": med, "runs_ms": [[x * 1000 for x in r] for r in runs]}, open(a.json, "w"))


if __name__ == "__main__":
    main()
