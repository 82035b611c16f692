"""The consistency checker and the staleness benchmark (run by load/bench/suite.py).

  consistency   geeload check: writers in PostgreSQL with increasing versions, readers on every
                node and a frontend, while faults are injected (every feed connection killed
                every few seconds, a node SIGKILLed and restarted; in full mode PostgreSQL
                restarted too): stale reads at 0/10/100/1000 ms, stale forever, the staleness
                window, a hot key under write churn
  writers       pgbench updating the products table with and without the change feed
                installed, interleaved: the writers' cost of the feed as a ratio of tps
"""
import json, os, signal, statistics, subprocess, tempfile, threading, time

from .kit import free_port

from .kit import ROOT
BIN = os.path.join(ROOT, "target/release/geecache")
GEELOAD = os.path.join(ROOT, "target/release/geeload")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_frontend(cl, work):
    return start_frontend_with(cl, work, [])


def start_frontend_with(cl, work, extra):
    api, peer = free_port(), free_port()
    proc = subprocess.Popen(
        [BIN, "node", "--role", "frontend", "--seeds", cl.seeds, "--self",
         f"http://127.0.0.1:{peer}", "--api-addr", f"127.0.0.1:{api}", "--peer-addr",
         f"127.0.0.1:{peer}", "--source", "postgres", "--database-url", cl.pg.url,
         "--workers", "1", "--statement-timeout", "10s", "--cache-bytes", str(cl.cache_bytes),
         *extra],
        stdout=open(f"{work}/frontend-{api}.log", "w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{api}"


def ready(url):
    import urllib.request
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def scenario_consistency(m, cl, ids, work, full):
    """geeload check over the nodes `ids` and a frontend, with faults during the run."""
    front, front_api = start_frontend(cl, work)
    try:
        end = time.time() + 30
        while not ready(front_api) and time.time() < end:
            time.sleep(0.05)
        targets = ",".join([cl.api(i) for i in ids] + [front_api])
        metrics = ",".join([cl.api(i) for i in ids] + [front_api])
        secs = m["check_secs"]
        faults = []

        def inject():
            # A node killed and restarted with its data dir, halfway through.
            time.sleep(secs / 2)
            victim = ids[-1]
            faults.append(f"SIGKILL node {victim} at {secs / 2:.0f} s, restarted")
            cl.kill(victim)
            cl.start(victim)
            if full:
                time.sleep(secs / 4)
                faults.append("PostgreSQL restarted")
                cl.pg.restart()

        t = threading.Thread(target=inject)
        t.start()
        out = f"{work}/check.json"
        subprocess.run([GEELOAD, "check", "--database-url", cl.pg.url, "--target", targets,
                        "--metrics", metrics, "--keys", "200", "--duration", f"{secs}s",
                        "--probes", str(m["probes"]), "--hot-duration", f"{m['hot_secs']}s",
                        "--kill-feed-every", "3s", "--json", out], check=True)
        t.join()
        rep = json.load(open(out))
        rep["faults"] = faults + [f"every node's feed connection killed every 3 s "
                                  f"({rep['feed_connections_killed']} connections)"]
        # The restarted node must be back in the ring for what follows.
        end = time.time() + 30
        while not cl.agreed(ids) and time.time() < end:
            time.sleep(0.1)
        return rep
    finally:
        front.send_signal(signal.SIGKILL)
        front.wait()


def pgbench_tps(pg, secs, script):
    out = subprocess.run(
        ([] if os.geteuid() != 0 else []) +
        [f"{pg.bin}/pgbench", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-n",
         "-c", "4", "-j", "2", "-T", str(secs), "-f", script, "geecache"],
        check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    for line in out.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise SystemExit(f"pgbench printed no tps:\n{out}")


def writers_cost(m, pg, rows, consumers):
    """pgbench UPDATEs of products, with and without the feed, interleaved ABBA (medians).

    The writers' cost of the feed is measured with the nodes paused (SIGSTOP): on this 2-core
    machine PostgreSQL, pgbench and the nodes share the cores, and the nodes' polls would be
    counted against the triggers. The same run with the nodes following the feed is reported
    beside it."""
    script = tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False)
    script.write(f"\\set id random(1, {rows})\n"
                 "UPDATE products SET value = 'w' || :id WHERE id = :id;\n")
    script.close()
    os.chmod(script.name, 0o644)
    pause = lambda sig: [p.send_signal(sig) for p in consumers]
    with_feed, without, followed = [], [], []
    try:
        feed = lambda verb: subprocess.run([BIN, "db", "feed", verb, "--database-url", pg.url],
                                           check=True, stdout=subprocess.DEVNULL)
        for r in range(m["pgbench_rounds"]):
            followed.append(pgbench_tps(pg, m["pgbench_secs"], script.name))
            pause(signal.SIGSTOP)
            try:
                # ABBA: the order alternates, so that what one run leaves behind (dead tuples,
                # a checkpoint under way) is not always charged to the same side.
                if r % 2 == 0:
                    with_feed.append(pgbench_tps(pg, m["pgbench_secs"], script.name))
                    feed("uninstall")
                    without.append(pgbench_tps(pg, m["pgbench_secs"], script.name))
                    feed("install")
                else:
                    feed("uninstall")
                    without.append(pgbench_tps(pg, m["pgbench_secs"], script.name))
                    feed("install")
                    with_feed.append(pgbench_tps(pg, m["pgbench_secs"], script.name))
            finally:
                pause(signal.SIGCONT)
    finally:
        os.unlink(script.name)
    w, wo, f = statistics.median(with_feed), statistics.median(without), statistics.median(followed)
    return {"tps_with_feed": w, "tps_without_feed": wo, "ratio": w / wo,
            "tps_with_feed_and_nodes_following": f, "ratio_with_nodes_following": f / wo,
            "nodes_following": len(consumers),
            "rounds": m["pgbench_rounds"], "seconds_each": m["pgbench_secs"],
            "clients": 4, "statement": "UPDATE products SET value = ... WHERE id = random"}
