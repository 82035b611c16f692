#!/usr/bin/env python3
"""Cold misses on one node against pgbench running the same query on the same table.

One node on a private PostgreSQL (--pool-size 16, --workers default), products seeded; keys
never asked before (geeload `miss:START`, a fresh range each round), so every request is a
load. Interleaved rounds, all sharing the machine with PostgreSQL:

  closed   geeload --concurrency 64 for the node  /  pgbench -M prepared -c 16 -j 2 for
           PostgreSQL with the group's own SELECT: throughput ratio; the node's CPU split
           (user/system) and its context switches per miss from /proc
  open     both at a fixed rate, half of pgbench's closed-loop rate: p99 against p99
           (pgbench -R with per-transaction logs, so its p99 counts from the schedule too)

Run through load/bench.sh miss (builds first), or as scenario `miss` of load/bench/suite.py.
"""
import argparse, glob, json, os, re, statistics, subprocess, sys, tempfile, time

from .kit import free_port, metrics, wait_http

from .kit import ROOT
os.environ.setdefault("GEECACHE_PEER_SECRET", "geecache-bench-secret-0123456789")
BIN = os.environ.get("GEECACHE_BIN", os.path.join(ROOT, "target/release/geecache"))  # A/B: another build
GEELOAD = os.path.join(ROOT, "target/release/geeload")
TICK = os.sysconf("SC_CLK_TCK")
QUERY = ("SELECT value FROM products WHERE id = "
         "(CASE WHEN :id::text ~ '^[0-9]{1,18}$' THEN :id::text::bigint END);")


def proc_counters(pid):
    """(user s, system s, context switches) of every thread of `pid`."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    switches = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            for line in open(status):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return int(fields[11]) / TICK, int(fields[12]) / TICK, switches


def pgbench(pg, secs, rows, clients, rate=None, work=None):
    script = os.path.join(work, "miss.sql")
    with open(script, "w") as f:
        f.write(f"\\set id random(1, {rows})\n{QUERY}\n")
    os.chmod(script, 0o644)
    os.chmod(work, 0o777)
    argv = [f"{pg.bin}/pgbench", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-n",
            "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(secs), "-f", script]
    prefix = os.path.join(work, f"pgbench-{time.time_ns()}")
    if rate:
        argv += ["-R", str(rate), "-l", "--log-prefix", prefix]
    out = subprocess.run(argv + ["geecache"], check=True, cwd=work, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True).stdout
    tps = float(re.search(r"^tps = ([\d.]+)", out, re.M).group(1))
    if not rate:
        return {"tps": tps}
    lat = []
    for log in glob.glob(prefix + "*"):
        for line in open(log):
            parts = line.split()
            # client_id transaction_no time script_no time_epoch time_us schedule_lag
            if len(parts) >= 7:
                lat.append(int(parts[2]) / 1000.0)  # latency (from the schedule with -R), ms
        os.unlink(log)
    lat.sort()
    return {"tps": tps, "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)],
            "transactions": len(lat)}


def geeload(api, start, secs, concurrency=64, rate=None):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = [GEELOAD, "run", "--target", api, "--keys", f"miss:{start}", "--duration",
                f"{secs}s", "--concurrency", str(concurrency), "--quiet", "--json", out.name]
        if rate:
            argv += ["--rate", str(rate)]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def start_node(pg, work, extra=()):
    api, peer = free_port(), free_port()
    proc = subprocess.Popen(
        [BIN, "node", "--api-addr", f"127.0.0.1:{api}", "--peer-addr", f"127.0.0.1:{peer}",
         "--source", "postgres", "--database-url", pg.url, "--pool-size", "16",
         "--cache-bytes", str(512 << 20), "--statement-timeout", "10s", *extra],
        stdout=open(os.path.join(work, "miss-node.log"), "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{api}"
    wait_http(url + "/ready")
    return proc, url


def scenario_miss(pg, rows, secs, rounds, work, extra=()):
    """The figures; `rows` products must be seeded, enough for every round's fresh keys.
    `extra`: more flags for the node (e.g. `--pipeline 8`)."""
    proc, api = start_node(pg, work, extra)
    closed, opened = [], []
    nxt = 1
    try:
        geeload(api, rows - 20_000, 1)  # connections, prepared statements, first allocations
        for _ in range(rounds):
            before = proc_counters(proc.pid)
            node = geeload(api, nxt, secs)
            after = proc_counters(proc.pid)
            nxt += node["requests"] + 1000
            base = pgbench(pg, secs, rows, 16, work=work)
            n = max(node["requests"], 1)
            closed.append({
                "node_rps": node["throughput_rps"], "pgbench_tps": base["tps"],
                "ratio": node["throughput_rps"] / base["tps"], "failed": node["failed"],
                "user_us_per_miss": (after[0] - before[0]) / n * 1e6,
                "system_us_per_miss": (after[1] - before[1]) / n * 1e6,
                "switches_per_miss": (after[2] - before[2]) / n})
        rate = int(statistics.median(c["pgbench_tps"] for c in closed) / 2)
        for _ in range(rounds):
            node = geeload(api, nxt, secs, concurrency=512, rate=rate)
            nxt += node["requests"] + 1000
            base = pgbench(pg, secs, rows, 16, rate=rate, work=work)
            opened.append({"node_p99_ms": node["latency_ms"]["p99"],
                           "node_p50_ms": node["latency_ms"]["p50"],
                           "pgbench_p99_ms": base["p99_ms"], "pgbench_p50_ms": base["p50_ms"],
                           "ratio": node["latency_ms"]["p99"] / base["p99_ms"],
                           "failed": node["failed"]})
        if nxt > rows - 20_000:  # the warm-up's keys are the last 20,000
            raise SystemExit(f"miss scenario: asked keys up to {nxt:,} of {rows:,} seeded")
        loads = sum(v for k, v in metrics(api).items()
                    if k.startswith("geecache_source_duration_seconds_count"))
    finally:
        proc.terminate()
        proc.wait()
    med = lambda runs, k: statistics.median(r[k] for r in runs)
    split = med(closed, "system_us_per_miss") / max(
        med(closed, "system_us_per_miss") + med(closed, "user_us_per_miss"), 1e-9)
    return {"miss_vs_pgbench_ratio": med(closed, "ratio"),
            "miss_p99_vs_pgbench": med(opened, "ratio"),
            "node_rps": med(closed, "node_rps"), "pgbench_tps": med(closed, "pgbench_tps"),
            "user_us_per_miss": med(closed, "user_us_per_miss"),
            "system_us_per_miss": med(closed, "system_us_per_miss"), "system_share": split,
            "switches_per_miss": med(closed, "switches_per_miss"),
            "open_rate": rate, "node_p99_ms": med(opened, "node_p99_ms"),
            "pgbench_p99_ms": med(opened, "pgbench_p99_ms"),
            "failed": sum(r["failed"] for r in closed + opened), "source_loads": loads,
            "closed_rounds": closed, "open_rounds": opened, "seconds_each": secs,
            "setup": "1 node, --pool-size 16, default workers; geeload -c 64 (closed) and "
                     "open loop at half pgbench's rate; pgbench -M prepared -c 16 -j 2 with "
                     "the group's query; interleaved rounds, medians"}


def main():
    from .suite import Pg
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("node_args", nargs="*", help="more flags for the node, after --")
    a = ap.parse_args()
    pg = Pg()
    work = tempfile.mkdtemp(prefix="geecache-miss-")
    try:
        subprocess.run([BIN, "db", "seed", "--database-url", pg.url, "--rows", str(a.rows)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = scenario_miss(pg, a.rows, a.duration, a.rounds, work, a.node_args)
    finally:
        pg.stop()
    print(f"\ncold misses, one node, {a.rounds} interleaved rounds of {a.duration}s (medians)")
    print(f"  closed loop: node {r['node_rps']:,.0f} misses/s, pgbench {r['pgbench_tps']:,.0f} "
          f"selects/s: {r['miss_vs_pgbench_ratio']:.2f}x (goal >= 0.60)")
    print(f"  node CPU per miss: user {r['user_us_per_miss']:.1f} us, system "
          f"{r['system_us_per_miss']:.1f} us ({r['system_share']:.0%} system), "
          f"{r['switches_per_miss']:.2f} context switches")
    print(f"  open loop at {r['open_rate']:,} /s: p99 node {r['node_p99_ms']:.2f} ms, pgbench "
          f"{r['pgbench_p99_ms']:.2f} ms: {r['miss_p99_vs_pgbench']:.2f}x (goal <= 2)")
    print(f"  failed {r['failed']}, source loads {r['source_loads']:,.0f}")
    if a.json:
        json.dump(r, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
