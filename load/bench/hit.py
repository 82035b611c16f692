#!/usr/bin/env python3
"""Hit-path benchmark: a GeeCache node against a bare actix-web handler, interleaved.

Prints throughput, p50/p99 and server CPU time per request of each, their ratios, and RSS with
the cache full against --cache-bytes. (Until the read path moved into src/cache/, it also ran a
`--hit-path actor` variant that read the store through ShardActor's mailbox: 0.76x the bare
handler's throughput at 1.50x its CPU per request, against 0.86x and 1.26x for the direct read;
the option is gone, the README keeps the figures.)
Run through load/bench.sh hit, which builds the release binaries first.
"""
import argparse, json, os, re, socket, statistics, subprocess, sys, time, urllib.request

from .kit import BARE, BIN, LUA, ROOT, TICK, cpu_seconds, free_port, metric, rss_mib, wait_http  # noqa: F401

# Every node these scripts start shares this peer secret (nodes refuse to run without one).
os.environ.setdefault("GEECACHE_PEER_SECRET", "geecache-bench-secret-0123456789")


def start_node(extra):
    return start_node_at(free_port(), free_port(), extra)


def start_node_at(api, peer, extra):
    env = dict(os.environ, RUST_LOG="warn")
    p = subprocess.Popen([BIN, "node", "--api-addr", f"127.0.0.1:{api}", "--peer-addr",
                          f"127.0.0.1:{peer}", "--embedded-latency", "0ms", "--workers", "2",
                          *extra], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{api}"
    wait_http(url + "/ready")
    return p, url


def start_bare():
    port = free_port()
    p = subprocess.Popen([BARE, f"127.0.0.1:{port}", "2"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    end = time.time() + 20
    while True:
        try:
            urllib.request.urlopen(url + "/api", timeout=1); break
        except Exception:
            if time.time() > end: raise
            time.sleep(0.05)
    return p, url


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def wrk(url, pid, duration, conns, env_extra=None, threads=2, prefix=()):
    """One wrk run against `url`; `prefix` runs wrk under e.g. taskset."""
    env = dict(os.environ, **(env_extra or {}))
    cpu0 = cpu_seconds(pid)
    out = subprocess.run([*prefix, "wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "-s", LUA,
                          url], capture_output=True, text=True, env=env, check=True).stdout
    cpu = cpu_seconds(pid) - cpu0
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99_ms": to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "cpu_us_per_req": cpu / max(reqs, 1) * 1e6,
        "errors": int(non2xx.group(1)) if non2xx else 0,
    }


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--cache-mib", type=int, default=64)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()

    bare, bare_url = start_bare()
    direct, direct_url = start_node([])
    procs = {"bare": (bare, bare_url), "node": (direct, direct_url)}
    try:
        for name in ("node",):  # warm 10,000 keys, then check they are all cached
            wrk(procs[name][1], procs[name][0].pid, 3, a.connections, {"MODE": "seq", "KEYS": "10000"})
            wrk(procs[name][1], procs[name][0].pid, 2, a.connections)
        runs = {n: [] for n in procs}
        for _ in range(a.rounds):  # interleaved: the machine's noise hits all alike
            for n, (p, url) in procs.items():
                runs[n].append(wrk(url, p.pid, a.duration, a.connections))
        hits = metric(direct_url, 'geecache_cache_hits_total{group="products"}')
        gets = metric(direct_url, 'geecache_gets_total{group="products"}')
    finally:
        for p, _ in procs.values():
            p.terminate(); p.wait()

    # RSS with the cache full: walk ids 1.. until the byte bound evicts.
    cache_bytes = a.cache_mib << 20
    full, full_url = start_node(["--cache-bytes", str(cache_bytes)])
    rss_empty = rss_mib(full.pid)
    try:
        for _ in range(10):
            wrk(full_url, full.pid, 5, a.connections, {"MODE": "seq"})
            time.sleep(1.2)
            if metric(full_url, 'geecache_cache_evictions_total{group="products",cache="main"}') > 0:
                break
        time.sleep(1.2)
        rss = rss_mib(full.pid)
        used = metric(full_url, 'geecache_cache_bytes{cache="main"}') / 2**20
        items = metric(full_url, 'geecache_cache_items{cache="main"}')
    finally:
        full.terminate(); full.wait()

    print(f"\nwarm hits, GET /api?group=products&key=<1..10000>, wrk -t2 -c{a.connections}, "
          f"{a.rounds} interleaved rounds of {a.duration}s, medians")
    print(f"{'server':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'errors':>8}")
    for n in procs:
        r = runs[n]
        print(f"{n:<12}{med(r,'rps'):>10.0f}{med(r,'p50_ms'):>9.3f}{med(r,'p99_ms'):>9.3f}"
              f"{med(r,'cpu_us_per_req'):>12.2f}{sum(x['errors'] for x in r):>8}")
    fig = {}
    for n in ("node",):
        tr = statistics.median(x["rps"] / y["rps"] for x, y in zip(runs[n], runs["bare"]))
        cr = statistics.median(x["cpu_us_per_req"] / y["cpu_us_per_req"] for x, y in zip(runs[n], runs["bare"]))
        fig[n] = {"throughput_ratio": tr, "cpu_per_request_ratio": cr}
        print(f"{n}: throughput {tr:.3f} x bare (target >= 0.90), CPU/request {cr:.3f} x bare (target <= 1.20)")
    print(f"hit rate during the runs: {hits / max(gets, 1):.4f}")
    limit = 1.25 * a.cache_mib + 40
    print(f"cache full: {items:.0f} items, {used:.1f} MiB weighed of {a.cache_mib} MiB x 7/8 (main); "
          f"RSS {rss:.1f} MiB, target <= 1.25 x {a.cache_mib} + 40 = {limit:.0f} MiB "
          f"({'ok' if rss <= limit else 'OVER'})")
    print(f"memory per cached entry: {(rss - rss_empty) * 2**20 / max(items, 1):.0f} bytes "
          f"(RSS {rss_empty:.1f} MiB empty), weighed per entry: {used * 2**20 / max(items, 1):.0f} bytes")
    if a.json:
        json.dump({"runs": runs, "ratios": fig, "rss_mib": rss, "cache_mib": a.cache_mib,
                   "items": items}, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
