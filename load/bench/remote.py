#!/usr/bin/env python3
"""Remote hits through a non-owner, with and without the hot cache, against local hits.

Two nodes A and B with static membership; 10,000 product keys that B owns (placed with the
same crc32 ring as the nodes). Interleaved rounds of wrk -t2 -c64:
  local       GET B  (B's own keys: main-shard hits)
  remote+hot  GET A' (hot cache on: --hot-min-qps 1, keys come back from A's hot cache)
  remote      GET A  (hot cache off: every request is a peer fetch to B, batched)
  remote-1    GET S  (the same with --peer-batch 1: one peer request per fetch)
Run through load/bench.sh remote, which builds the release binary first.
"""
import argparse, bisect, os, statistics, sys, zlib

from . import hit as b


def owned_keys(owner, peers, vnodes=150, count=10_000):
    points = {}
    for p in sorted(peers):
        for i in range(vnodes):
            points[zlib.crc32(f"{i}{p}".encode())] = p
    ring = sorted(points)
    keys, k = [], 0
    while len(keys) < count:
        k += 1
        h = zlib.crc32(str(k).encode())
        if points[ring[bisect.bisect_left(ring, h) % len(ring)]] == owner:
            keys.append(k)
    return keys


def run(duration, rounds, connections):
    """Interleaved wrk rounds over the three paths; medians, ratios, peer connections."""
    ports = {n: (b.free_port(), b.free_port()) for n in ("A", "H", "S", "B")}
    peer = {n: f"http://127.0.0.1:{p[1]}" for n, p in ports.items()}
    # Three rings that share owner B: {A, B} for the plain non-owner, {H, B} for the hot one,
    # {S, B} for the unbatched one.
    keys = sorted(set(owned_keys(peer["B"], [peer["A"], peer["B"]])) &
                  set(owned_keys(peer["B"], [peer["H"], peer["B"]], count=40_000)) &
                  set(owned_keys(peer["B"], [peer["S"], peer["B"]], count=40_000)))[:10_000]
    lua = os.path.join(b.ROOT, "load/out/remote_keys.lua")
    os.makedirs(os.path.dirname(lua), exist_ok=True)
    with open(lua, "w") as f:
        f.write("local keys = {" + ",".join(map(str, keys)) + "}\n")
        f.write("request = function()\n  return wrk.format('GET', '/api?group=products&key=' "
                ".. keys[math.random(1, #keys)])\nend\n")
    saved, b.LUA = b.LUA, lua

    def node(name, peers, extra):
        api, p = ports[name]
        return b.start_node_at(api, p, ["--self", peer[name], "--peers", ",".join(peers), *extra])

    conns = 'geecache_http_connections_total{listener="peer"}'
    nb = node("B", [peer["A"], peer["B"], peer["H"], peer["S"]], [])
    na = node("A", [peer["A"], peer["B"]], ["--hot-min-qps", "1e12"])
    nh = node("H", [peer["H"], peer["B"]], ["--hot-min-qps", "1", "--hot-ttl", "60s"])
    ns = node("S", [peer["S"], peer["B"]], ["--hot-min-qps", "1e12", "--peer-batch", "1"])
    procs = {"local": nb, "remote+hot": nh, "remote": na, "remote-1": ns}
    try:
        for name in procs:  # warm: B's shard, then H's hot cache
            b.wrk(procs[name][1], procs[name][0].pid, 3, connections)
        runs = {n: [] for n in procs}
        opened = []
        for _ in range(rounds):
            for n, (p, url) in procs.items():
                before = b.metric(nb[1], conns)
                runs[n].append(b.wrk(url, p.pid, duration, connections))
                if n in ("remote", "remote-1"):
                    opened.append(b.metric(nb[1], conns) - before)
        peer_loads = b.metric(na[1], 'geecache_peer_loads_total{group="products"}')
        hot_hits = b.metric(nh[1], 'geecache_hot_cache_hits_total{group="products"}')
        batches = b.metric(na[1], "geecache_peer_batches_total")
        batched = b.metric(na[1], "geecache_peer_batched_fetches_total")
    finally:
        b.LUA = saved
        for p, _ in procs.values():
            p.terminate(); p.wait()
    ratio = lambda n: statistics.median(x["rps"] / y["rps"] for x, y in zip(runs[n], runs["local"]))
    return {"remote_vs_local_ratio": ratio("remote"), "remote_hot_vs_local_ratio": ratio("remote+hot"),
            "remote_unbatched_vs_local_ratio": ratio("remote-1"),
            "batches": batches, "batched_fetches": batched,
            "paths": {n: {"rps": b.med(r, "rps"), "p50_ms": b.med(r, "p50_ms"),
                          "p99_ms": b.med(r, "p99_ms"), "errors": sum(x["errors"] for x in r),
                          "cpu_us_per_req": b.med(r, "cpu_us_per_req")} for n, r in runs.items()},
            "remote_requests": sum(int(x["rps"] * duration) for x in runs["remote"]),
            "peer_connections_opened": opened, "peer_loads": peer_loads, "hot_hits": hot_hits,
            "setup": f"10,000 keys owned by B, wrk -t2 -c{connections}, {rounds} interleaved "
                     f"rounds of {duration}s, medians; connections counted at B's peer listener "
                     "during each remote round"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--json")
    a = ap.parse_args()
    r = run(a.duration, a.rounds, a.connections)
    print(f"\n{r['setup']}")
    print(f"{'path':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for n, p in r["paths"].items():
        print(f"{n:<12}{p['rps']:>10.0f}{p['p50_ms']:>9.3f}{p['p99_ms']:>9.3f}{p['errors']:>8}")
    print(f"remote+hot: {r['remote_hot_vs_local_ratio']:.3f} x local (goal >= 0.90)")
    print(f"remote: {r['remote_vs_local_ratio']:.3f} x local (goal >= 0.50); "
          f"unbatched (--peer-batch 1): {r['remote_unbatched_vs_local_ratio']:.3f} x")
    print(f"batches: {r['batches']:.0f}, {r['batched_fetches'] / max(r['batches'], 1):.1f} "
          "fetches each on average")
    print(f"peer connections opened at B per remote round: {r['peer_connections_opened']} "
          f"(of ~{r['remote_requests'] // max(len(r['peer_connections_opened']), 1):,} requests "
          "each)")
    print(f"non-owner without hot cache: {r['peer_loads']:.0f} peer loads; "
          f"with hot cache: {r['hot_hits']:.0f} hot hits")
    if a.json:
        import json
        json.dump(r, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
