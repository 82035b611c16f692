#!/usr/bin/env python3
"""Overload isolation: one node over a slow source, asked for 10x more distinct misses than the
source can serve, while warm hits go on at a fixed rate.

The node: embedded source with 100 ms per query, `--max-in-flight 50` (so at most ~500 loads a
second). The overload: geeload open loop at 5,000 fresh keys a second (`miss:START`), 10x
that. Meanwhile: (1) warm hits, geeload open loop at 2,000/s over 1,000 cached keys, whose p99
is reported beside the same run without the overload; (2) a probe that asks for fresh keys one
at a time and times each answer: the shed ones must be 503 `overloaded`, fast.

  load/bench.sh overload [--duration SECONDS]
"""
import argparse, http.client, json, os, statistics, subprocess, sys, tempfile, threading, time

from .kit import free_port, wait_http  # noqa: E402

from .kit import ROOT
BIN = os.path.join(ROOT, "target/release/geecache")
GEELOAD = os.path.join(ROOT, "target/release/geeload")


def geeload(api, keys, rate, secs, concurrency):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([GEELOAD, "run", "--target", api, "--keys", keys, "--rate", str(rate),
                        "--concurrency", str(concurrency), "--duration", f"{secs}s",
                        "--timeout", "10s", "--quiet", "--json", out.name], check=True,
                       stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def probe(port, start, secs, out):
    """Fresh keys one at a time: (status, error code, ms) of each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    end, k = time.time() + secs, start
    while time.time() < end:
        t = time.perf_counter()
        conn.request("GET", f"/api?group=products&key={k}")
        r = conn.getresponse()
        body = r.read()
        ms = (time.perf_counter() - t) * 1000
        code = json.loads(body).get("error") if r.status >= 400 else None
        out.append((r.status, code, ms))
        k += 1
        time.sleep(0.005)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--json")
    a = ap.parse_args()
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="geecache-overload-", suffix=".log", delete=False)
    node = subprocess.Popen(
        [BIN, "node", "--api-addr", f"127.0.0.1:{port}", "--peer-addr",
         f"127.0.0.1:{free_port()}", "--embedded-latency",
         "100ms", "--max-in-flight", "50", "--cache-bytes", str(256 << 20)],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(api + "/ready")
        # Warm 1,000 keys (uniform:1000 asks ids 1..1000).
        geeload(api, "uniform:1000", 400, 6, 200)
        quiet = geeload(api, "uniform:1000", 2000, a.duration, 64)
        probes, box = [], {}
        over = threading.Thread(target=lambda: box.update(
            o=geeload(api, "miss:100000", 5000, a.duration + 2, 2048)))
        over.start()
        time.sleep(1)
        pr = threading.Thread(target=probe, args=(port, 700_000, a.duration, probes))
        pr.start()
        loud = geeload(api, "uniform:1000", 2000, a.duration, 64)
        pr.join()
        over.join()
    finally:
        node.terminate()
        node.wait()
    o = box["o"]
    shed = [ms for s, code, ms in probes if s == 503 and code == "overloaded"]
    served = [ms for s, _, ms in probes if s == 200]
    other = [(s, code) for s, code, _ in probes if s not in (200, 503)]
    r = {
        "hits_p99_ms_unloaded": quiet["latency_ms"]["p99"],
        "hits_p99_ms_overloaded": loud["latency_ms"]["p99"],
        "hits_p50_ms_unloaded": quiet["latency_ms"]["p50"],
        "hits_p50_ms_overloaded": loud["latency_ms"]["p50"],
        "hits_failed_overloaded": loud["failed"],
        "overload_requests": o["requests"], "overload_statuses": o["statuses"],
        "probes": len(probes), "probes_shed": len(shed), "probes_served": len(served),
        "probes_other": other, "shed_p50_ms": pct(shed, 0.5), "shed_p99_ms": pct(shed, 0.99),
        "served_p50_ms": pct(served, 0.5),
    }
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    print(f"\noverload isolation: source 100 ms/query, --max-in-flight 50 (~500 loads/s), "
          f"5,000 fresh keys/s offered for {a.duration + 2} s")
    print(f"  overload: {o['requests']:,} requests, statuses {o['statuses']}")
    print(f"  shed misses (probe, one at a time): {len(shed)} of {len(probes)} answered 503 "
          f"overloaded, p50 {fmt(r['shed_p50_ms'])} ms, p99 {fmt(r['shed_p99_ms'])} ms "
          f"(goal < 5 ms); {len(served)} served (p50 {fmt(r['served_p50_ms'])} ms); other {other}")
    print(f"  warm hits at 2,000/s: p99 {fmt(r['hits_p99_ms_unloaded'])} ms unloaded, "
          f"{fmt(r['hits_p99_ms_overloaded'])} ms under the overload (p50 "
          f"{fmt(r['hits_p50_ms_unloaded'])} -> {fmt(r['hits_p50_ms_overloaded'])} ms); "
          f"failed {loud['failed']}")
    if a.json:
        json.dump(r, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
