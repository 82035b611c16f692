#!/usr/bin/env python3
"""The benchmark suite behind `load/bench.sh quick|full`.

Starts a private PostgreSQL, seeds it, runs node processes on 127.0.0.1 and drives them with
geeload (load/src); writes load/out/report.json, one JSON and SVG plots per scenario, and a
table on stdout. Scenarios:

  hit        warm hits on a node against a bare actix-web handler (throughput ratio)
  zipf       Zipf 0.99 over the products, total cache 10 % of the data, 3 nodes, against one
             moka cache of the same bytes replaying the same key trace
  herd       1,000 concurrent requests for one cold key over all nodes -> queries at PostgreSQL
  miss       load/bench/miss.py: cold misses on one node against pgbench with the same query
             (throughput, CPU and context switches per miss, p99 at a fixed rate)
  remote     load/bench/remote.py: remote hits through a non-owner, with and without the hot
             cache, against local hits; the peer connections opened counted
  handoff    3 -> 5, 5 -> 3 and a rolling restart under an open-loop Zipf load through a
             frontend, with the consistency checker: database peak over steady, hit-rate dip
  failover   SIGKILL of the leader under an open-loop load -> failed requests, p99, recovery
  consistency  load/bench/consistency.py: geeload check with faults -> stale reads, stale forever,
             the staleness window, a hot key under write churn; pgbench writers with and
             without the change feed
  seed       the seed talk's tests: deployment, scale-up, discovery, observability, peer latency

quick: a smaller data set and one repetition (under 3 minutes; CI). full: 1,000,000 products,
longer runs, medians of 5 for the seed's timings (Terraform against the emulator, containers).
"""
import argparse, json, os, platform, shutil, signal, statistics, subprocess, sys, tempfile
import threading, time, urllib.request

from .kit import cpu_seconds, free_port, metric_sum, metrics_text  # noqa: F401
from .hit import wrk
from .consistency import scenario_consistency, writers_cost  # noqa: E402
from .miss import scenario_miss  # noqa: E402
from . import remote as bench_remote

from .kit import ROOT
# Every node these scripts start shares this peer secret (nodes refuse to run without one).
os.environ.setdefault("GEECACHE_PEER_SECRET", "geecache-bench-secret-0123456789")
OUT = os.path.join(ROOT, "load/out")
BIN = os.environ.get("GEECACHE_BIN", os.path.join(ROOT, "target/release/geecache"))  # A/B: another build
GEELOAD = os.path.join(ROOT, "target/release/geeload")
BARE = os.path.join(ROOT, "target/release/examples/bare_handler")

MODES = {
    "quick": dict(products=100_000, zipf_requests=300_000, hit_rounds=2, hit_secs=3,
                  rate=4000, event_run_secs=18, event_at=6, reps=1, handoff_warm_secs=20,
                  handoff_rate=2500, handoff_phase_secs=12, handoff_restart_secs=10,
                  miss_rows=1_000_000, miss_secs=3, miss_rounds=2, remote_secs=3, remote_rounds=2,
                  check_secs=8, probes=50, hot_secs=4, pgbench_secs=3, pgbench_rounds=3),
    "full": dict(products=1_000_000, zipf_requests=3_000_000, hit_rounds=3, hit_secs=10,
                 rate=5000, event_run_secs=40, event_at=10, reps=5, handoff_warm_secs=40,
                 handoff_rate=3000, handoff_phase_secs=40, handoff_restart_secs=20,
                 miss_rows=3_000_000, miss_secs=10, miss_rounds=3, remote_secs=10, remote_rounds=3,
                 check_secs=30, probes=200, hot_secs=10, pgbench_secs=15, pgbench_rounds=3),
}
HERD = 1000
CACHE_FRACTION = 0.10


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def get_json(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.load(r)
    except Exception:
        return None


def status(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return None


def wait(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def geeload(*args, json_path=None):
    """Runs geeload, returns its JSON report (or stdout parsed as JSON)."""
    cmd = [GEELOAD, *map(str, args)]
    if json_path:
        cmd += ["--json", json_path]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    if json_path:
        print(out, end="", flush=True)
        return json.load(open(json_path))
    return json.loads(out)


class Pg:
    """A private PostgreSQL cluster with pg_stat_statements, on a free port."""

    def __init__(self):
        bins = sorted((d for d in os.listdir("/usr/lib/postgresql")
                       if os.path.exists(f"/usr/lib/postgresql/{d}/bin/initdb")), key=int)
        self.bin = os.environ.get("GEECACHE_PG_BIN") or f"/usr/lib/postgresql/{bins[-1]}/bin"
        self.dir = tempfile.mkdtemp(prefix="geecache-bench-pg-")
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        data = f"{self.dir}/data"
        self.run(["initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        with open(f"{data}/postgresql.conf", "a") as f:
            f.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.dir}'\n"
                    "shared_preload_libraries = 'pg_stat_statements'\nfsync = off\n"
                    "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n"
                    "shared_buffers = 256MB\n")
        self.run(["pg_ctl", "-D", data, "-w", "-l", f"{self.dir}/server.log", "start"])
        self.psql("postgres", "CREATE DATABASE geecache")
        self.psql("geecache", "CREATE EXTENSION pg_stat_statements")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/geecache"

    def run(self, argv):
        argv = [f"{self.bin}/{argv[0]}", *argv[1:]]
        if self.root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def psql_argv(self, db):
        return [f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1"]

    def psql(self, db, sql):
        return subprocess.run(self.psql_argv(db) + ["-c", sql], check=True,
                              stdout=subprocess.PIPE, text=True).stdout.strip()

    def product_queries(self):
        return int(self.psql("geecache", "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                                         "WHERE query LIKE '%FROM products%'"))

    def restart(self):
        self.run(["pg_ctl", "-D", f"{self.dir}/data", "-w", "-m", "fast", "-l",
                  f"{self.dir}/server.log", "restart"])

    def stop(self):
        subprocess.run((["runuser", "-u", "postgres", "--"] if self.root else []) +
                       [f"{self.bin}/pg_ctl", "-D", f"{self.dir}/data", "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """Node processes that form one Raft-agreed ring on 127.0.0.1."""

    def __init__(self, pg, cache_bytes, workdir, extra=()):
        """`extra`: more flags for every node (load/bench/handoff.py: `--handoff-grace 0s`)."""
        self.pg, self.cache_bytes, self.dir, self.extra = pg, cache_bytes, workdir, list(extra)
        self.ports = {i: (free_port(), free_port()) for i in range(1, 6)}
        self.seeds = ",".join(f"http://127.0.0.1:{self.ports[i][1]}" for i in (1, 2, 3))
        self.procs = {}

    def api(self, i):
        return f"http://127.0.0.1:{self.ports[i][0]}"

    def start(self, i):
        api, peer = self.ports[i]
        self.procs[i] = subprocess.Popen(
            [BIN, "node", "--node-id", str(i), "--self", f"http://127.0.0.1:{peer}",
             "--api-addr", f"127.0.0.1:{api}", "--peer-addr", f"127.0.0.1:{peer}",
             "--seeds", self.seeds, "--bootstrap-expect", "3", "--data-dir", f"{self.dir}/n{i}",
             "--dead-after", "3s", "--workers", "1", "--source", "postgres",
             "--database-url", self.pg.url, "--statement-timeout", "10s",
             "--cache-bytes", str(self.cache_bytes), *self.extra],
            stdout=open(f"{self.dir}/node{i}.log", "a"), stderr=subprocess.STDOUT)

    def agreed(self, ids):
        views = [get_json(f"{self.api(i)}/cluster") for i in ids]
        if not all(views):
            return False
        members = [sorted(m["id"] for m in v["members"]) for v in views]
        return (all(m == sorted(ids) for m in members) and len({v["epoch"] for v in views}) == 1
                and all(status(f"{self.api(i)}/ready") == 200 for i in ids))

    def leader(self, i):
        return get_json(f"{self.api(i)}/cluster")["leader_id"]

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop(self):
        for p in self.procs.values():
            p.kill()
            p.wait()


class Events:
    """A file of `LABEL UNIX_MS` lines that geeload reads at the end of a run."""

    def __init__(self, path):
        self.path = path
        open(path, "w").close()

    def mark(self, label):
        with open(self.path, "a") as f:
            f.write(f"{label} {time.time() * 1000:.0f}\n")
        return time.time()


def seed_for_zipf(pg, m, rows=None):
    """Seeds the products of mode `m` (or `rows`) and returns the replay that sizes the
    cluster's cache: its `cache_bytes // 3` is each of 3 nodes' `--cache-bytes`."""
    subprocess.run([BIN, "db", "seed", "--database-url", pg.url, "--rows",
                    str(rows or m["products"] + 1000)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return geeload("replay", "--keys", f"zipf:0.99:{m['products']}", "--seed", 1,
                   "--requests", m["zipf_requests"], "--cache-fraction", CACHE_FRACTION)


def in_background(fn, *args, **kw):
    box = {}
    t = threading.Thread(target=lambda: box.update(result=fn(*args, **kw)))
    t.start()
    return t, box


# ---------------------------------------------------------------------------------------------

def scenario_hit(m, work):
    """Warm hits on one node against the bare handler, interleaved rounds, medians.

    Server and client are pinned to different cores (server: CPU 0, one worker; client:
    CPU 1), so that the server is the bottleneck and the throughput ratio is the ratio of the
    servers' costs. Throughput is taken with wrk (C, epoll): geeload (tokio + hyper) tops out
    at about the rate a bare actix handler serves on one core, which would hide the
    difference. geeload then measures latency at a fixed rate below both capacities."""
    pin = lambda cpu: ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    bare_port, api, peer = free_port(), free_port(), free_port()
    bare = subprocess.Popen([*pin(0), BARE, f"127.0.0.1:{bare_port}", "1"])
    node = subprocess.Popen([*pin(0), BIN, "node", "--api-addr", f"127.0.0.1:{api}", "--peer-addr",
                             f"127.0.0.1:{peer}", "--embedded-latency", "0ms", "--workers", "1"],
                            stdout=subprocess.DEVNULL)
    try:
        wait(lambda: status(f"http://127.0.0.1:{api}/ready") == 200, 20, "the hit-path node")
        wait(lambda: status(f"http://127.0.0.1:{bare_port}/api") == 200, 20, "the bare handler")
        node_url, bare_url = f"http://127.0.0.1:{api}", f"http://127.0.0.1:{bare_port}"
        # Warm every key once (keys 1..10000 exactly), then measure.
        geeload("run", "--target", node_url, "--keys", "miss:1", "--requests", 10_000,
                "--concurrency", 8, "--quiet", json_path=f"{work}/hit-warm.json")
        procs = {"bare": (bare, bare_url), "node": (node, node_url)}
        runs = {"bare": [], "node": []}
        for _ in range(m["hit_rounds"]):
            for name, (proc, url) in procs.items():
                r = wrk(f"{url}/api?group=products&key=1", proc.pid, m["hit_secs"], 32,
                                  threads=1, prefix=pin(1))
                if r["errors"]:
                    raise SystemExit(f"hit scenario: {r['errors']} non-2xx answers from {name}")
                runs[name].append(r)
        med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
        # Latency at a fixed rate, well below both servers' capacity.
        lat = {}
        for name, (proc, url) in procs.items():
            rep = geeload("run", "--target", url, "--keys", "uniform:10000", "--rate", 20_000,
                          "--concurrency", 64, "--duration", f"{m['hit_secs']}s",
                          "--title", f"hit path: {name}, 20,000 req/s",
                          json_path=f"{OUT}/hit-{name}.json")
            lat[name] = rep["latency_ms"]
        hits = metric_sum(node_url, "geecache_cache_hits_total")
        gets = metric_sum(node_url, "geecache_gets_total")
        return {"bare_rps": med["bare"]["rps"], "node_rps": med["node"]["rps"],
                "ratio": med["node"]["rps"] / med["bare"]["rps"],
                "bare_cpu_us_per_request": med["bare"]["cpu_us_per_req"],
                "node_cpu_us_per_request": med["node"]["cpu_us_per_req"],
                "cpu_per_request_ratio": med["node"]["cpu_us_per_req"] / med["bare"]["cpu_us_per_req"],
                "wrk_p99_ms": {k: med[k]["p99_ms"] for k in med},
                "latency_at_20k_rps_ms": lat, "rounds": m["hit_rounds"], "secs": m["hit_secs"],
                "node_hit_rate": hits / gets if gets else None,
                "load": "wrk -t1 -c32 on CPU 1, server with one worker on CPU 0, uniform over "
                        "10,000 warm keys (load/keys.lua), interleaved rounds, medians"}
    finally:
        for p in (bare, node):
            p.kill(); p.wait()


def scenario_zipf(m, cl, ids, work):
    n, reqs = m["products"], m["zipf_requests"]
    spec = f"zipf:0.99:{n}"
    targets = ",".join(cl.api(i) for i in ids)
    cl.pg.psql("geecache", "SELECT pg_stat_statements_reset()")
    rep = geeload("run", "--target", targets, "--metrics", targets, "--keys", spec,
                  "--requests", reqs, "--concurrency", 32, "--seed", 1,
                  "--title", f"zipf 0.99 over {n:,} products, 3 nodes",
                  "--plots", f"{OUT}/zipf", json_path=f"{OUT}/zipf.json")
    at_pg = cl.pg.product_queries()
    return rep, at_pg


def zipf_references(m, cache_bytes_total):
    """What the cluster's hit rate is compared with: one cache replaying the same trace (the
    issue's reference), the replay split like the cluster (3 partitions, then also without the
    hot cache's 1/8), and one live node holding the cluster's total bytes."""
    spec, reqs = f"zipf:0.99:{m['products']}", m["zipf_requests"]
    models = {}
    for name, extra in (("single_cache", []), ("three_partitions", ["--partitions", 3]),
                        ("three_partitions_less_hot_share", ["--partitions", 3, "--reserve", 0.125])):
        models[name] = geeload("replay", "--keys", spec, "--seed", 1, "--requests", reqs,
                               "--cache-bytes", cache_bytes_total, *extra)["hit_rate"]
    api, peer = free_port(), free_port()
    node = subprocess.Popen([BIN, "node", "--api-addr", f"127.0.0.1:{api}", "--peer-addr",
                             f"127.0.0.1:{peer}", "--embedded-latency", "0ms", "--workers", "2",
                             "--cache-bytes", str(cache_bytes_total)], stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{api}"
        wait(lambda: status(f"{url}/ready") == 200, 20, "the single live node")
        rep = geeload("run", "--target", url, "--metrics", url, "--keys", spec, "--seed", 1,
                      "--requests", reqs, "--concurrency", 32,
                      "--title", "zipf 0.99, one live node with the cluster's total bytes",
                      json_path=f"{OUT}/zipf-single-node.json")
        models["single_live_node"] = rep["cluster"]["hit_rate"]
    finally:
        node.kill(); node.wait()
    return models


def scenario_herd(m, cl, ids, work):
    key = m["products"] + 500  # seeded, never in the Zipf trace
    targets = ",".join(cl.api(i) for i in ids)
    cl.pg.psql("geecache", "SELECT pg_stat_statements_reset()")
    # Hold the table locked so that the first load cannot finish before all requests are in:
    # then a second query could only come from a singleflight that failed.
    locker = subprocess.Popen(cl.pg.psql_argv("geecache"), stdin=subprocess.PIPE, text=True,
                              stdout=subprocess.DEVNULL)
    locker.stdin.write("BEGIN;\nLOCK TABLE products IN ACCESS EXCLUSIVE MODE;\n")
    locker.stdin.flush()
    wait(lambda: cl.pg.psql("geecache", "SELECT count(*) FROM pg_locks l JOIN pg_class c ON "
                            "c.oid = l.relation WHERE c.relname = 'products' AND l.granted "
                            "AND l.mode = 'AccessExclusiveLock'") == "1", 10, "the table lock")
    gets0 = sum(metric_sum(cl.api(i), "geecache_gets_total") for i in ids)
    deduped0 = sum(metric_sum(cl.api(i), "geecache_loads_deduped_total") for i in ids)
    t, box = in_background(geeload, "run", "--target", targets, "--keys", f"hot:{key}",
                           "--requests", HERD, "--concurrency", HERD, "--timeout", "20s",
                           "--title", f"thundering herd: {HERD} concurrent requests, one cold key",
                           json_path=f"{OUT}/herd.json")
    arrived = 0
    end = time.time() + 15
    while time.time() < end:
        arrived = sum(metric_sum(cl.api(i), "geecache_gets_total") for i in ids) - gets0
        if arrived >= HERD:
            break
        time.sleep(0.05)
    locker.stdin.write("COMMIT;\n")
    locker.stdin.close()
    locker.wait()
    t.join()
    rep = box["result"]
    deduped = sum(metric_sum(cl.api(i), "geecache_loads_deduped_total") for i in ids) - deduped0
    return {"requests": HERD, "ok": rep["ok"], "failed": rep["failed"],
            "arrived_before_release": int(arrived), "db_queries": cl.pg.product_queries(),
            "loads_deduped": int(deduped), "p99_ms": rep["latency_ms"]["p99"],
            "counted_at": "PostgreSQL pg_stat_statements"}


def scale_or_fail(m, cl, targets, metrics, name, title, action, secs):
    """An open-loop Zipf run of `secs` with `action(events)` happening at event_at seconds."""
    ev = Events(f"{cl.dir}/{name}.events")
    t, box = in_background(geeload, "run", "--target", ",".join(targets), "--metrics",
                           ",".join(metrics), "--keys", f"zipf:0.99:{m['products']}",
                           "--seed", 2, "--rate", m["rate"], "--concurrency", 256,
                           "--duration", f"{secs}s", "--events", ev.path,
                           "--scrape-interval", "1s", "--title", title,
                           "--plots", f"{OUT}/{name}", json_path=f"{OUT}/{name}.json")
    time.sleep(m["event_at"])
    facts = action(ev)
    t.join()
    return box["result"], facts


def first_event(rep, label_prefix):
    return next(e["t"] for e in rep["events"] if e["label"].startswith(label_prefix))


def smoothed(tl, key, width=3):
    """A centred moving average over `width` 1-s intervals (a single interval of 4,000
    requests has about 0.7 points of noise in its hit rate)."""
    out = []
    for i in range(len(tl)):
        part = tl[max(0, i - width // 2): i + width // 2 + 1]
        out.append({"t": tl[i]["t"], key: statistics.mean(x[key] for x in part)})
    return out


def smoothed_hit_rate(tl, width=3):
    """The hit rate over a centred window of `width` 1-s intervals, as 1 - sum(db) / sum(gets):
    a mean of per-second ratios over-weights a second in which few requests completed."""
    out = []
    for i in range(len(tl)):
        part = tl[max(0, i - width // 2): i + width // 2 + 1]
        gets = sum(x["gets_per_s"] for x in part)
        db = sum(x["db_qps"] for x in part)
        out.append({"t": tl[i]["t"], "hit_rate": 1 - min(db / gets, 1.0) if gets else 0.0})
    return out


def phase(tl, at, end, rate=None, reference=None):
    """The database and hit-rate figures of the interval (at, end] of a run against the five
    1-s intervals before `at`: peak database load over the steady one, the dip of the hit
    rate and the time until it is back within a point.

    With `reference` (the hit rate the configuration the phase ends in had when it was last
    steady, e.g. the warm 3-node level before a 3 -> 5 -> 3), the dip is counted under the
    lower of it and the level before: a scale-down loses cache capacity, and the hit rate
    that capacity held is not a handoff's to keep. The dip under the level before is
    reported beside it.

    With `rate` (an open loop's requests per second), the hit rate is the share of those
    requests that cost no query, 1 - db / rate: the nodes' own gets also count the consistency
    checker's closed-loop reads, whose rate falls whenever latency rises, which showed as a
    hit-rate dip of 12 points while the database's load did not move."""
    tl = [i for i in tl if i["hit_rate"] is not None]
    if rate:
        tl = [{**i, "gets_per_s": rate} for i in tl]
    before = [i for i in tl if i["t"] <= at][-5:]
    window = [i for i in tl if at < i["t"] <= end]
    if not before or not window:
        return None
    hr = [x for x in smoothed_hit_rate(tl) if at < x["t"] <= end]
    db = [x for x in smoothed(tl, "db_qps") if at < x["t"] <= end]
    base_gets = sum(i["gets_per_s"] for i in before)
    base_hr = 1 - min(sum(i["db_qps"] for i in before) / base_gets, 1.0) if base_gets else 0.0
    base_db = statistics.mean(i["db_qps"] for i in before)
    after_db = statistics.mean(i["db_qps"] for i in window[-3:])
    low = min(hr, key=lambda x: x["hit_rate"])
    target = base_hr if reference is None else min(base_hr, reference)
    back = next((x["t"] for x in hr if x["t"] >= low["t"] and x["hit_rate"] >= target - 0.01),
                None)
    steady = max(base_db, after_db)
    peak = max(x["db_qps"] for x in db)
    return {"hit_rate_before": base_hr, "hit_rate_min": low["hit_rate"],
            "hit_rate_reference": target,
            "hit_rate_dip_points": max(0.0, (target - low["hit_rate"]) * 100),
            "hit_rate_dip_under_before_points": max(0.0, (base_hr - low["hit_rate"]) * 100),
            "within_1_point_ms": 0.0 if low["hit_rate"] >= target - 0.01 else
            ((back - at) * 1000 if back is not None else None),
            "db_qps_before": base_db, "db_qps_after": after_db, "db_qps_peak": peak,
            "db_peak_over_steady": peak / steady if steady else None,
            "hit_rate_end": window[-1]["hit_rate"]}


def scenario_handoff(m, cl, work):
    """Issue 15's benchmark: 3 -> 5, 5 -> 3 and a rolling restart of nodes 1-3, one after the
    other in one open-loop Zipf run through a frontend (its hot cache off, so every request
    reaches an owner), with the consistency checker writing and reading throughout. Its rate
    is below the other scenarios': at 4,000/s five nodes, a frontend, PostgreSQL, the checker
    and geeload on 2 cores fell behind (p99 4 s), and the figures measured the overload.

    The checker writes and reads rows of its own (`chk-1`.. in the demo group `scores`), and the
    figures count the group `products` only: its loads, about 50/s from its writes, were 2
    points of the hit rate at this rate, and they came and went with its probes and its hot
    key, not with the handoff."""
    from .consistency import start_frontend_with
    front, front_api = start_frontend_with(cl, work, ["--hot-min-qps", "1e12"])
    ev = Events(f"{cl.dir}/handoff.events")
    ph = m["handoff_phase_secs"]
    secs = m["handoff_warm_secs"] + 2 * ph + 3 * m["handoff_restart_secs"] + 4
    metrics = [front_api] + [cl.api(i) for i in range(1, 6)]
    try:
        wait(lambda: status(f"{front_api}/ready") == 200, 30, "the frontend ready")
        load, box = in_background(
            geeload, "run", "--target", front_api, "--metrics", ",".join(metrics),
            "--keys", f"zipf:0.99:{m['products']}", "--seed", 3, "--rate", m["handoff_rate"],
            "--concurrency", 256, "--duration", f"{secs}s", "--events", ev.path,
            "--scrape-interval", "1s", "--metrics-group", "products",
            "--title", "handoff: 3 -> 5 -> 3, rolling restart",
            "--plots", f"{OUT}/handoff", json_path=f"{OUT}/handoff.json")
        out = f"{work}/handoff-check.json"
        check = subprocess.Popen(
            [GEELOAD, "check", "--database-url", cl.pg.url, "--target", front_api,
             "--metrics", ",".join(cl.api(i) for i in (1, 2, 3)), "--keys", "200",
             "--group", "scores", "--table", "scores", "--key-column", "name",
             "--key-prefix", "chk-", "--duration", f"{secs - 4}s", "--probes", str(m["probes"]),
             "--write-rate", "50",
             "--hot-duration", "1s", "--json", out], stdout=subprocess.DEVNULL)
        peeks = {}

        def harvest(i):
            """Adds node i's handoff peek counters (asked as the new owner) to `peeks`."""
            try:
                text = metrics_text(cl.api(i))
            except Exception:
                return
            for line in text.splitlines():
                if line.startswith("geecache_handoff_peeks_total{"):
                    outcome = line.split('outcome="')[1].split('"')[0]
                    peeks[outcome] = peeks.get(outcome, 0) + float(line.split()[-1])

        time.sleep(m["handoff_warm_secs"])
        facts = {}
        t0 = ev.mark("scale-up 3->5")
        cl.start(4); cl.start(5)
        wait(lambda: cl.agreed([1, 2, 3, 4, 5]), 30, "5 nodes agreed")
        facts["scale_up_ms"] = (time.time() - t0) * 1000
        time.sleep(max(0.0, ph - (time.time() - t0)))
        t0 = ev.mark("scale-down 5->3")
        for i in (4, 5):
            harvest(i)
            cl.procs[i].send_signal(signal.SIGTERM)
        for i in (4, 5):
            cl.procs[i].wait(30)
        wait(lambda: cl.agreed([1, 2, 3]), 30, "3 nodes agreed")
        facts["scale_down_ms"] = (time.time() - t0) * 1000
        time.sleep(max(0.0, ph - (time.time() - t0)))
        restarts = []
        for i in (1, 2, 3):
            t0 = ev.mark(f"restart-{i}")
            harvest(i)
            cl.procs[i].send_signal(signal.SIGTERM)
            cl.procs[i].wait(30)
            cl.start(i)
            wait(lambda: cl.agreed([1, 2, 3]), 30, f"node {i} back")
            restarts.append((time.time() - t0) * 1000)
            time.sleep(max(0.0, m["handoff_restart_secs"] - (time.time() - t0)))
        facts["restart_ms"] = restarts
        load.join()
        for i in (1, 2, 3):
            harvest(i)
        check.wait(60)
        rep, chk = box["result"], json.load(open(out))
    finally:
        front.send_signal(signal.SIGKILL)
        front.wait()
    at = {e["label"]: e["t"] for e in rep["events"]}
    end = rep["timeline"][-1]["t"] + 1 if rep["timeline"] else secs
    marks = sorted(at.items(), key=lambda kv: kv[1]) + [("end", end)]
    tl = rep["cluster_timeline"]
    phases = {}
    for (label, t), (_, nxt) in zip(marks, marks[1:]):
        # 5 -> 3 ends in the 3-node configuration, whose warm level was measured before 3 -> 5.
        three = phases.get("scale-up 3->5")
        ref = three["hit_rate_before"] if label == "scale-down 5->3" and three else None
        phases[label] = phase(tl, t, nxt, m["handoff_rate"], ref)
    restart_window = (at["restart-1"], end)
    rolling = phase(tl, *restart_window, m["handoff_rate"])
    worst = lambda key: max((p[key] for p in phases.values() if p and p[key] is not None),
                            default=None)
    return {**facts, "failed_requests": rep["failed"], "requests": rep["requests"],
            "statuses": rep["statuses"], "p99_ms": rep["latency_ms"]["p99"],
            "rate": m["handoff_rate"], "phases": phases, "rolling_restart": rolling,
            "db_peak_over_steady_worst": worst("db_peak_over_steady"),
            "hit_rate_dip_points_worst": worst("hit_rate_dip_points"),
            "stale_reads": chk["stale_reads"], "stale_forever": chk["stale_forever"],
            "checker_reads": chk["reads"], "checker_writes": chk["writes"],
            "peeks": peeks,
            "rules": "per phase (event to the next): peak of the 3-s moving average of database "
                     "queries/s over the larger of the mean of the 5 1-s intervals before and "
                     "the mean of the last 3 of the phase; the dip of the 3-s moving average of "
                     "the hit rate under the 5-interval mean before (for 5 -> 3: under the "
                     "lower of that and the warm 3-node level before 3 -> 5, since the "
                     "cluster loses 2/5 of its cache; the dip under the level before is "
                     "hit_rate_dip_under_before_points); within 1 point: from the "
                     "event to the first smoothed interval after the lowest one back within a "
                     "point"}


def scenario_failover(m, cl, ids):
    victim = cl.leader(ids[0])
    rest = [i for i in ids if i != victim]

    def act(ev):
        t0 = ev.mark(f"SIGKILL-node-{victim}")
        cl.kill(victim)
        wait(lambda: cl.agreed(rest), 30, "the ring without the dead node")
        ev.mark("ring-without-it")
        return {"ring_recovery_ms": (time.time() - t0) * 1000}
    rep, facts = scale_or_fail(m, cl, [cl.api(i) for i in rest], [cl.api(i) for i in ids],
                               "failover", f"failover: SIGKILL of the leader (node {victim})", act,
                               m["event_run_secs"])
    at = first_event(rep, "SIGKILL")
    ring_at = first_event(rep, "ring")
    secs = rep["timeline"]
    before = [s["p99_ms"] for s in secs if s["t"] + 1 <= at]
    during = [s["p99_ms"] for s in secs if at - 1 < s["t"] <= ring_at]
    base = statistics.median(before) if before else None
    bound = max(2 * base, base + 1.0) if base is not None else None
    # Latency recovered: the end of the first second after the worst one (within 10 s of the
    # kill) whose p99 is back within the bound; single noisy seconds later do not count.
    window = [s for s in secs if at - 1 < s["t"] <= at + 10]
    worst = max(window, key=lambda s: s["p99_ms"]) if window else None
    recovered = next((s["t"] + 1 for s in secs if worst and s["t"] > worst["t"]
                      and bound is not None and s["p99_ms"] <= bound), None)
    # Nothing is handed off from a SIGKILLed node: its keys arrive cold at their new owners.
    cold = phase(rep["cluster_timeline"], at, secs[-1]["t"] + 1 if secs else at + 10,
                 m["rate"])
    return {**facts, "victim": victim, "was_leader": True, "failed_requests": rep["failed"],
            "cold_start": cold, "requests": rep["requests"], "statuses": rep["statuses"],
            "p99_ms_before": base,
            "p99_ms_during": max(during) if during else None,
            "latency_recovery_ms": (recovered - at) * 1000 if recovered is not None else None,
            "rate": m["rate"], "targets": "the surviving nodes (as a load balancer's health "
                                           "check would leave them)",
            "recovery_rule": "end of the first second after the worst one (within 10 s of the "
                             "kill) whose p99 is within max(2x, +1 ms) of the median p99 before "
                             "the kill"}


def discovery(work, cloudmap=True):
    """Median lookup of the node's own discovery: DNS, and Cloud Map against moto (full mode:
    the quick suite's build leaves AWS discovery out, as `geecache up` does; its behaviour is
    tested by tests/aws_discovery.rs)."""
    out = {"dns": geeload("discover", "--seed", "dns://localhost:8001", "--lookups", 50)}
    if not cloudmap:
        out["cloudmap"] = None
        out["cloudmap_note"] = "quick mode: built without AWS discovery (load/bench.sh full times it)"
        return out
    moto_port = free_port()
    moto = subprocess.Popen([sys.executable, os.path.join(ROOT, "terraform/emulator/moto_server.py"),
                             str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            import boto3
        except ImportError:
            out["cloudmap"] = None
            out["cloudmap_note"] = "boto3 missing (scripts/install-deps.sh installs moto[server])"
            return out
        endpoint = f"http://127.0.0.1:{moto_port}"
        wait(lambda: status(endpoint) is not None, 30, "moto")
        env = dict(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                   AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
        sd = boto3.client("servicediscovery", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        sd.create_http_namespace(Name="geecache.local")
        ns = sd.list_namespaces()["Namespaces"][0]["Id"]
        svc = sd.create_service(Name="nodes", NamespaceId=ns)["Service"]["Id"]
        for i in range(1, 4):
            sd.register_instance(ServiceId=svc, InstanceId=f"task-{i}",
                                 Attributes={"AWS_INSTANCE_IPV4": f"10.0.1.{i}"})
        out["cloudmap"] = json.loads(subprocess.run(
            [GEELOAD, "discover", "--seed", "cloudmap://geecache.local/nodes:8001", "--lookups",
             "20"], check=True, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, **env)).stdout)
    finally:
        moto.kill(); moto.wait()
    return out


def observability(cl, i):
    text = metrics_text(cl.api(i))
    series = [l for l in text.splitlines() if l and not l.startswith("#")]
    names = {l.split("{")[0].split(" ")[0] for l in series}
    fields = set()
    with open(f"{cl.dir}/node{i}.log") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            fields |= set(rec) | {f"fields.{k}" for k in rec.get("fields", {})}
    return {"metric_series_per_node": len(series), "metric_names": len(names),
            "log_fields": sorted(fields)}


def inter_node(cl, i):
    api, peer = cl.ports[i]
    key = 1  # warm on its owner after the Zipf run; the peer protocol answers from the shard
    rep = geeload("run", "--target", f"http://127.0.0.1:{peer}", "--path", "/_geecache/products/{key}",
                  "--header", f"Authorization: Bearer {os.environ['GEECACHE_PEER_SECRET']}",
                  "--keys", f"hot:{key}", "--concurrency", 1, "--duration", "3s",
                  "--title", "peer GET on loopback (one at a time)", json_path=f"{OUT}/peer.json")
    return {"p50_ms": rep["latency_ms"]["p50"], "p99_ms": rep["latency_ms"]["p99"],
            "requests": rep["requests"], "failed": rep["failed"]}


def full_seed_timings(report):
    """Medians of 5 from the scripts that own these timings (full mode only). A script that
    fails is recorded in the report (and fails the run at the end), the others still run."""
    seed = report["seed"]
    seed["errors"] = []

    def step(name, argv, env=None):
        try:
            subprocess.run(argv, check=True, env=env)
            return True
        except subprocess.CalledProcessError as e:
            seed["errors"].append(f"{name}: exit {e.returncode}")
            return False

    raft = f"{OUT}/raft.json"
    if step("bench.raft", [sys.executable, "-m", "bench.raft", "--runs", "5", "--json", raft],
            dict(os.environ, PYTHONPATH=os.path.join(ROOT, "load"))):
        seed["raft_processes"] = json.load(open(raft))["medians_ms"]
    env = dict(os.environ, RUNS="5")
    if shutil.which("terraform") and os.path.isdir("/opt/tf-plugins"):
        if step("terraform-emulator.sh", ["bash", os.path.join(ROOT, "scripts/terraform-emulator.sh")], env):
            seed["terraform_apply_ms"] = json.load(open(f"{OUT}/terraform-emulator.json"))["apply_ms"]
    if shutil.which("docker"):
        peer_json = f"{OUT}/peer-containers.json"
        if os.path.exists(peer_json):
            os.remove(peer_json)
        if step("compose-test.sh", ["bash", os.path.join(ROOT, "scripts/compose-test.sh")], env):
            seed["containers"] = json.load(open(f"{OUT}/compose.json"))
        if os.path.exists(peer_json):
            p = json.load(open(peer_json))
            seed["inter_node_containers"] = {
                "p50_ms": p["latency_ms"]["p50"], "p99_ms": p["latency_ms"]["p99"],
                "requests": p["requests"], "failed": p["failed"],
                "path": "host -> container over the Docker bridge"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=MODES)
    a = ap.parse_args()
    m = MODES[a.mode]
    os.makedirs(OUT, exist_ok=True)
    started = time.time()
    work = tempfile.mkdtemp(prefix="geecache-bench-")
    report = {"mode": a.mode, "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                                          "python": platform.python_version()},
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "parameters": m}
    if a.mode == "quick":
        report["note"] = (f"quick mode: {m['products']:,} products instead of 1,000,000, "
                          f"{m['zipf_requests']:,} Zipf requests, one repetition of each timing; "
                          "seed.deploy_ms is the formation of 3 node processes, not a Terraform "
                          "apply (load/bench.sh full adds that and the containers)")

    log("scenario 1: hit path against a bare actix-web handler")
    report["hit"] = scenario_hit(m, work)
    report["hit_vs_bare_ratio"] = report["hit"]["ratio"]
    log("scenario 8: remote hits through a non-owner, with and without the hot cache")
    report["remote"] = bench_remote.run(m["remote_secs"], m["remote_rounds"], 64)
    report["remote_vs_local_ratio"] = report["remote"]["remote_vs_local_ratio"]
    report["remote_hot_vs_local_ratio"] = report["remote"]["remote_hot_vs_local_ratio"]
    report["remote_unbatched_vs_local_ratio"] = report["remote"]["remote_unbatched_vs_local_ratio"]

    pg = Pg()
    cl = None
    try:
        rows = max(m["products"] + 1000, m["miss_rows"])
        log(f"seeding {rows:,} products")
        replay = seed_for_zipf(pg, m, rows)
        log("scenario 9: cold misses on one node against pgbench with the same query")
        report["miss"] = scenario_miss(pg, m["miss_rows"], m["miss_secs"], m["miss_rounds"], work)
        report["miss_vs_pgbench_ratio"] = report["miss"]["miss_vs_pgbench_ratio"]
        report["miss_p99_vs_pgbench"] = report["miss"]["miss_p99_vs_pgbench"]
        per_node = replay["cache_bytes"] // 3
        cl = Cluster(pg, per_node, work)
        log(f"forming 3 nodes (--cache-bytes {per_node:,} each: {CACHE_FRACTION:.0%} of "
            f"{replay['data_bytes']:,} bytes of entries over 3)")
        t0 = time.time()
        for i in (1, 2, 3):
            cl.start(i)
        wait(lambda: cl.agreed([1, 2, 3]), 30, "3 nodes agreed")
        formation_ms = (time.time() - t0) * 1000

        log("scenario 2: Zipf 0.99 against one cache replaying the same trace")
        rep, at_pg = scenario_zipf(m, cl, [1, 2, 3], work)
        refs = zipf_references(m, replay["cache_bytes"])
        report["zipf"] = {
            "products": m["products"], "requests": m["zipf_requests"], "exponent": 0.99,
            "cache_fraction": CACHE_FRACTION, "data_bytes": replay["data_bytes"],
            "cache_bytes_total": replay["cache_bytes"], "cache_bytes_per_node": per_node,
            "cluster_hit_rate": rep["cluster"]["hit_rate"],
            "single_cache_hit_rate": refs["single_cache"],
            "loss_points": (refs["single_cache"] - rep["cluster"]["hit_rate"]) * 100,
            "references": refs,
            "loss_points_against_single_live_node":
                (refs["single_live_node"] - rep["cluster"]["hit_rate"]) * 100,
            "db_qps": rep["cluster"]["db_qps"], "db_queries_metrics": rep["cluster"]["db_queries"],
            "db_queries_at_postgres": at_pg, "throughput_rps": rep["throughput_rps"],
            "p99_ms": rep["latency_ms"]["p99"], "per_node_share": rep["cluster"]["per_node_share"],
            "failed": rep["failed"]}

        log("scenario 3: thundering herd")
        report["herd"] = scenario_herd(m, cl, [1, 2, 3], work)

        log("scenario 6: consistency checker, with faults (feed connections killed, a node "
            "killed and restarted)")
        report["consistency"] = scenario_consistency(m, cl, [1, 2, 3], work, a.mode == "full")
        log("scenario 7: the writers' cost of the feed (pgbench, with and without)")
        report["writers"] = writers_cost(m, pg, m["products"], list(cl.procs.values()))
        wait(lambda: cl.agreed([1, 2, 3]), 30, "3 nodes agreed again after the pause")

        log("seed: observability, inter-node latency, discovery")
        obs = observability(cl, 1)
        peer = inter_node(cl, 1)
        disc = discovery(work, a.mode == "full")

        log("scenario 5: warm handoff: 3 -> 5, 5 -> 3, rolling restart, under load, checked")
        report["handoff"] = scenario_handoff(m, cl, work)

        log("scenario 4: failover (SIGKILL, nothing handed off) under load")
        report["failover"] = scenario_failover(m, cl, [1, 2, 3])

        cm = disc.get("cloudmap")
        report["seed"] = {
            "deploy_ms": formation_ms, "deploy_source": "3 node processes to one agreed ring",
            "scale_up_ms": report["handoff"]["scale_up_ms"],
            "scale_up_source": "2 node processes started -> all 5 agreed and ready, under load",
            "discovery_ms": cm["median_ms"] if cm else disc["dns"]["median_ms"],
            "discovery_source": "Cloud Map DiscoverInstances against moto" if cm else "DNS",
            "discovery": disc, "observability": obs, "inter_node_loopback": peer,
            "singleflight": f"{HERD} -> {report['herd']['db_queries']}",
            "hit_rate_zipf": report["zipf"]["cluster_hit_rate"]}
    finally:
        if cl:
            cl.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    if a.mode == "full":
        # The scenarios' figures are on disk before the long external steps start.
        json.dump(report, open(f"{OUT}/report.json", "w"), indent=2)
        log("seed timings, medians of 5: processes, Terraform against moto, containers")
        full_seed_timings(report)
        if "terraform_apply_ms" in report["seed"]:
            report["seed"]["deploy_ms"] = report["seed"]["terraform_apply_ms"]
            report["seed"]["deploy_source"] = "terraform apply of envs/local against moto"
    report["elapsed_s"] = time.time() - started
    report["gates"] = gates(report)
    json.dump(report, open(f"{OUT}/report.json", "w"), indent=2)
    print_summary(report)
    failed = [g for g in report["gates"] if not g["passed"]]
    for g in report["gates"]:
        print(f"  gate {'ok  ' if g['passed'] else 'FAIL'} {g['name']}: {g['value']} ({g['rule']})")
    if failed:
        raise SystemExit(f"{len(failed)} regression gate(s) failed")
    if report["seed"].get("errors"):
        raise SystemExit(f"seed timing steps failed: {report['seed']['errors']}")


def gates(r):
    """What CI holds the quick run to: correctness outright, speed with room for noise."""
    z, c = r["zipf"], r["consistency"]
    checks = [
        ("herd.db_queries", r["herd"]["db_queries"], "== 1", r["herd"]["db_queries"] == 1),
        ("herd.failed", r["herd"]["failed"], "== 0", r["herd"]["failed"] == 0),
        ("failover.failed_requests", r["failover"]["failed_requests"], "== 0",
         r["failover"]["failed_requests"] == 0),
        ("handoff.failed_requests", r["handoff"]["failed_requests"], "== 0",
         r["handoff"]["failed_requests"] == 0),
        ("handoff.stale_reads_1s", r["handoff"]["stale_reads"]["1s"], "== 0",
         r["handoff"]["stale_reads"]["1s"] == 0),
        ("handoff.stale_forever", r["handoff"]["stale_forever"], "== 0",
         r["handoff"]["stale_forever"] == 0),
        # 0 stale reads of nothing read would pass the two above: the checker must have
        # written and read its rows (a checker whose every read failed reads 0).
        ("handoff.checker_writes", r["handoff"]["checker_writes"], ">= 100",
         r["handoff"]["checker_writes"] >= 100),
        ("handoff.checker_reads", r["handoff"]["checker_reads"], ">= 1000",
         r["handoff"]["checker_reads"] >= 1000),
        # Goals 1.15 and 2 points; the gates catch a handoff that stopped working (a cold
        # start measured 1.62 and 12.5 points).
        ("handoff.db_peak_over_steady_worst", round(r["handoff"]["db_peak_over_steady_worst"], 3),
         "<= 1.4", r["handoff"]["db_peak_over_steady_worst"] <= 1.4),
        ("handoff.hit_rate_dip_points_worst", round(r["handoff"]["hit_rate_dip_points_worst"], 2),
         "<= 6", r["handoff"]["hit_rate_dip_points_worst"] <= 6),
        ("zipf.failed", z["failed"], "== 0", z["failed"] == 0),
        ("seed.peer_get_failed", r["seed"]["inter_node_loopback"]["failed"], "== 0",
         r["seed"]["inter_node_loopback"]["failed"] == 0),
        # The checker's goals, outright for correctness, with room for noise for speed.
        ("consistency.stale_reads_1s", c["stale_reads"]["1s"], "== 0", c["stale_reads"]["1s"] == 0),
        ("consistency.stale_forever", c["stale_forever"], "== 0", c["stale_forever"] == 0),
        ("consistency.reads", c["reads"], ">= 1000", c["reads"] >= 1000),
        ("consistency.window_p99_ms", round(c["staleness_window_ms"]["p99"], 2), "<= 100",
         c["staleness_window_ms"]["p99"] <= 100),
        ("consistency.hot_loads_per_write", round(c["hot_key"]["loads_per_write"], 3), "<= 1.5",
         c["hot_key"]["loads_per_write"] <= 1.5),
        ("writers.ratio", round(r["writers"]["ratio"], 3), ">= 0.6", r["writers"]["ratio"] >= 0.6),
        # The target is < 2 points; the gate leaves half a point for noise (quick runs
        # measured 1.5-1.6; counting a miss twice in moka's sketch made it 2.9).
        ("zipf.loss_points", round(z["loss_points"], 2), "< 2.5", z["loss_points"] < 2.5),
        ("hit_vs_bare_ratio", round(r["hit_vs_bare_ratio"], 3), ">= 0.5",
         r["hit_vs_bare_ratio"] >= 0.5),
        # Issue 16's goals are 0.60, 2x, 0.50 and 0.90; the gates leave room for this shared
        # machine and catch a gross regression (before: 0.31, -, 0.40, 0.80; the remote ratio
        # measured 0.32 to 0.36 on the same code from one session to the next).
        ("miss_vs_pgbench_ratio", round(r["miss_vs_pgbench_ratio"], 3), ">= 0.4",
         r["miss_vs_pgbench_ratio"] >= 0.4),
        # p99 of a miss at half pgbench's rate: an HTTP request and a loader's hop on top of
        # pgbench's bare query, on a machine whose own p99 jumps 30x between rounds. The gate
        # catches an overloaded node (before pipelining: 2,327 ms, about 1,000x) and a store
        # whose hash table grows under load (a rehash in one go: 19.5x and 43x rounds; with
        # the table sized at startup, rounds of 0.6x to 2.9x).
        ("miss_p99_vs_pgbench", round(r["miss_p99_vs_pgbench"], 2), "<= 8",
         r["miss_p99_vs_pgbench"] <= 8),
        ("miss.failed", r["miss"]["failed"], "== 0", r["miss"]["failed"] == 0),
        # Batched peer fetches: 0.43-0.47x (goal 0.50); one request per fetch is 0.32-0.33x.
        ("remote_vs_local_ratio", round(r["remote_vs_local_ratio"], 3), ">= 0.36",
         r["remote_vs_local_ratio"] >= 0.36),
        ("remote_hot_vs_local_ratio", round(r["remote_hot_vs_local_ratio"], 3), ">= 0.7",
         r["remote_hot_vs_local_ratio"] >= 0.7),
        ("remote.batched_fetches_per_batch",
         round(r["remote"]["batched_fetches"] / max(r["remote"]["batches"], 1), 1), ">= 2",
         r["remote"]["batched_fetches"] >= 2 * max(r["remote"]["batches"], 1)),
        # Keep-alive: 64 client connections spread over the loaders' pools, not one per request.
        ("remote.peer_connections_opened_max", max(r["remote"]["peer_connections_opened"]),
         "<= 256", max(r["remote"]["peer_connections_opened"]) <= 256),
    ]
    return [{"name": n, "value": v, "rule": rule, "passed": bool(ok)} for n, v, rule, ok in checks]


def print_summary(r):
    z, h, f, s, sc = r["zipf"], r["herd"], r["failover"], r["seed"], r["handoff"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    pct = lambda v: None if v is None else v * 100
    rows = [
        ("hit path / bare handler (throughput)", f"{r['hit_vs_bare_ratio']:.2f}x",
         f"{r['hit']['node_rps']:,.0f} vs {r['hit']['bare_rps']:,.0f} req/s"),
        ("hit path / bare handler (server CPU)", f"{r['hit']['cpu_per_request_ratio']:.2f}x",
         f"{r['hit']['node_cpu_us_per_request']:.2f} vs {r['hit']['bare_cpu_us_per_request']:.2f} "
         "us per request"),
        ("cold misses / pgbench selects", f"{r['miss_vs_pgbench_ratio']:.2f}x",
         f"{r['miss']['node_rps']:,.0f} vs {r['miss']['pgbench_tps']:,.0f} /s; per miss "
         f"{r['miss']['user_us_per_miss']:.1f} us user, {r['miss']['system_us_per_miss']:.1f} us "
         f"system, {r['miss']['switches_per_miss']:.2f} switches"),
        ("miss p99 / pgbench p99 (open loop)", f"{r['miss_p99_vs_pgbench']:.2f}x",
         f"{r['miss']['node_p99_ms']:.2f} vs {r['miss']['pgbench_p99_ms']:.2f} ms at "
         f"{r['miss']['open_rate']:,} /s"),
        ("remote hit / local hit", f"{r['remote_vs_local_ratio']:.2f}x",
         f"with the hot cache {r['remote_hot_vs_local_ratio']:.2f}x; one peer request per fetch "
         f"(--peer-batch 1) {r['remote_unbatched_vs_local_ratio']:.2f}x; "
         f"{r['remote']['batched_fetches'] / max(r['remote']['batches'], 1):.1f} fetches per "
         f"batch; peer connections opened per round {r['remote']['peer_connections_opened']}"),
        ("Zipf cluster hit rate", f"{z['cluster_hit_rate'] * 100:.2f} %",
         f"single cache {z['single_cache_hit_rate'] * 100:.2f} %, loss {z['loss_points']:.2f} pts"),
        ("Zipf: one live node, same bytes", f"{z['references']['single_live_node'] * 100:.2f} %",
         f"replay split in 3: {z['references']['three_partitions'] * 100:.2f} %, and less the "
         f"hot share: {z['references']['three_partitions_less_hot_share'] * 100:.2f} %"),
        ("Zipf database load", f"{z['db_qps']:,.0f} q/s",
         f"{z['db_queries_at_postgres']:,} queries at PostgreSQL for {z['requests']:,} requests"),
        ("herd: queries for 1,000 requests", f"{h['db_queries']}",
         f"{h['arrived_before_release']} arrived before the lock was released, "
         f"{h['loads_deduped']} deduped"),
        *[(f"handoff {name}", fmt(ph and ph["db_peak_over_steady"], ".2f") + "x",
           f"db peak / steady ({fmt(ph and ph['db_qps_peak'], ',.0f')} vs "
           f"{fmt(ph and max(ph['db_qps_before'], ph['db_qps_after']), ',.0f')} q/s); hit rate dip "
           f"{fmt(ph and ph['hit_rate_dip_points'], '.1f')} pts, within 1 pt in "
           f"{fmt(ph and ph['within_1_point_ms'], ',.0f')} ms")
          for name, ph in (("3 -> 5", sc["phases"].get("scale-up 3->5")),
                           ("5 -> 3", sc["phases"].get("scale-down 5->3")),
                           ("rolling restart", sc["rolling_restart"]))],
        ("handoff: failed / stale at 1 s", f"{sc['failed_requests']} / {sc['stale_reads']['1s']}",
         f"of {sc['requests']:,} requests, {sc['checker_reads']:,} checked reads; peeks "
         + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(sc["peeks"].items()))),
        ("failover: failed requests", f"{f['failed_requests']}",
         f"of {f['requests']:,}; p99 {fmt(f['p99_ms_before'], '.2f')} -> "
         f"{fmt(f['p99_ms_during'], '.2f')} ms; ring in {f['ring_recovery_ms']:,.0f} ms, "
         f"latency in {fmt(f['latency_recovery_ms'], ',.0f')} ms"),
        ("failover: db peak / steady (cold)", fmt(f["cold_start"] and
                                                  f["cold_start"]["db_peak_over_steady"], ".2f")
         + "x", f"hit rate dip {fmt(f['cold_start'] and f['cold_start']['hit_rate_dip_points'], '.1f')}"
                f" pts: nothing can be handed off from a SIGKILLed node"),
        ("consistency: stale reads at 1 s", f"{r['consistency']['stale_reads']['1s']}",
         f"of {r['consistency']['reads']:,} reads; at 0/10/100 ms: "
         f"{r['consistency']['stale_reads']['0ms']}/{r['consistency']['stale_reads']['10ms']}/"
         f"{r['consistency']['stale_reads']['100ms']}; {r['consistency']['reads_answered_stale']} "
         f"answered STALE; stale forever {r['consistency']['stale_forever']}"),
        ("consistency: staleness window p99", f"{r['consistency']['staleness_window_ms']['p99']:.2f} ms",
         f"p50 {r['consistency']['staleness_window_ms']['p50']:.2f}, max "
         f"{r['consistency']['staleness_window_ms']['max']:.2f} ms, commit to the last node"),
        ("consistency: hot key loads per write", f"{r['consistency']['hot_key']['loads_per_write']:.2f}",
         f"{r['consistency']['hot_key']['loads']:.0f} loads for {r['consistency']['hot_key']['writes']} writes"),
        ("writers: tps with / without the feed", f"{r['writers']['ratio']:.2f}x",
         f"{r['writers']['tps_with_feed']:,.0f} vs {r['writers']['tps_without_feed']:,.0f} tps "
         f"(pgbench); {r['writers']['ratio_with_nodes_following']:.2f}x with "
         f"{r['writers']['nodes_following']} nodes following on the same cores"),
        ("seed: deploy", f"{s['deploy_ms']:,.0f} ms", s["deploy_source"]),
        ("seed: discovery", f"{s['discovery_ms']:.2f} ms", s["discovery_source"]),
        ("seed: metric series per node", f"{s['observability']['metric_series_per_node']}",
         f"{len(s['observability']['log_fields'])} log fields"),
        ("seed: peer GET p50 / p99", f"{s['inter_node_loopback']['p50_ms']:.3f} ms",
         f"p99 {s['inter_node_loopback']['p99_ms']:.3f} ms, loopback"),
    ]
    print(f"\nGeeCache-rs benchmark ({r['mode']}, {r['elapsed_s']:.0f} s) -> load/out/report.json")
    for name, value, detail in rows:
        print(f"  {name:<38} {value:>12}   {detail}")


if __name__ == "__main__":
    main()
