#!/usr/bin/env python3
"""Instructions per request, counted by valgrind's callgrind: repeatable on a noisy machine
where wall-clock throughput is not. Run through load/bench.sh instr.

For each path, a server runs under callgrind with one worker; the script warms what the path
needs, zeroes the counters, sends N requests one at a time on one keep-alive connection, dumps
the counters and divides:

  bare        the bare actix-web handler (examples/bare_handler): the floor
  hit         a warm hit on one node
  miss        a miss on one node (embedded source, no latency): every key asked once
  remote      a key owned by another node, the hot cache off: the asker's instructions
  remote_hot  the same with the hot cache on

Prints a table and the ratios to the bare handler; --json writes them.
"""
import argparse, http.client, json, os, re, socket, subprocess, sys, tempfile, time

from .kit import ROOT
os.environ.setdefault("GEECACHE_PEER_SECRET", "geecache-bench-secret-0123456789")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self, argv, port, work, name, instrumented=True):
        self.out = os.path.join(work, f"{name}.callgrind")
        prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}",
                  "--dump-instr=no", "--collect-jumps=no"] if instrumented else []
        self.log = open(os.path.join(work, f"{name}.log"), "w")
        self.proc = subprocess.Popen(prefix + argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = port
        self.instrumented = instrumented
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                c.getresponse().read()
                return
            except Exception:
                time.sleep(0.2)
        raise SystemExit(f"{name} did not start; see {self.log.name}")

    def zero(self):
        subprocess.run(["callgrind_control", "-z", str(self.proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def instructions(self):
        """Dumps and returns the instructions counted since the last zero."""
        before = set(os.listdir(os.path.dirname(self.out)))
        subprocess.run(["callgrind_control", "-d", str(self.proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        dumps = [f for f in os.listdir(os.path.dirname(self.out))
                 if f.startswith(os.path.basename(self.out)) and f not in before]
        total = 0
        for d in dumps:
            for line in open(os.path.join(os.path.dirname(self.out), d)):
                m = re.match(r"(summary|totals):\s+(\d+)", line)
                if m:
                    total = max(total, int(m.group(2)))
        return total

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def requests(port, paths):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for p in paths:
        c.request("GET", p)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"GET {p}: {r.status}")


def node(binary, work, name, extra=(), instrumented=True, api=None, peer=None):
    api, peer = api or free_port(), peer or free_port()
    argv = [binary, "node", "--api-addr", f"127.0.0.1:{api}", "--peer-addr", f"127.0.0.1:{peer}",
            "--workers", "1", "--embedded-latency", "0ms", "--log-format", "json", *extra]
    return Server(argv, api, work, name, instrumented)


def measure(server, warm, paths):
    """Instructions per request, less what the process does idle for as long (its timers:
    metrics upkeep, Raft ticks, the hot-key decay), measured right after."""
    requests(server.port, warm)
    server.zero()
    t0 = time.time()
    requests(server.port, paths)
    elapsed = time.time() - t0
    busy = server.instructions()
    server.zero()
    time.sleep(elapsed)
    idle = server.instructions()
    return max(busy - idle, 0) / len(paths)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/geecache"))
    ap.add_argument("--bare", default=os.path.join(ROOT, "target/release/examples/bare_handler"))
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--json")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="geecache-instr-")
    n = a.n
    keys = [f"/api/products/{i}" for i in range(1, 201)]
    hits = [keys[i % len(keys)] for i in range(n)]
    out = {}

    port = free_port()
    bare = Server([a.bare, f"127.0.0.1:{port}"], port, work, "bare")
    try:
        out["bare"] = measure(bare, ["/api"] * 200, ["/api"] * n)
    finally:
        bare.stop()

    one = node(a.binary, work, "hit", ["--products", "1000000"])
    try:
        out["hit"] = measure(one, keys * 2, hits)
        misses = [f"/api/products/{1000 + i}" for i in range(n)]
        out["miss"] = measure(one, [f"/api/products/{500000 + i}" for i in range(200)], misses)
    finally:
        one.stop()

    # Two nodes, static ring; the asker under callgrind, the owner not.
    for name, qps in (("remote", "1000000000"), ("remote_hot", "1")):
        pa, pb = free_port(), free_port()
        peers = f"http://127.0.0.1:{pa},http://127.0.0.1:{pb}"
        owner = node(a.binary, work, f"{name}-owner", ["--self", f"http://127.0.0.1:{pb}",
                     "--peers", peers, "--hot-min-qps", qps], instrumented=False, peer=pb)
        asker = node(a.binary, work, name, ["--self", f"http://127.0.0.1:{pa}", "--peers",
                     peers, "--hot-min-qps", qps], peer=pa)
        try:
            c = http.client.HTTPConnection("127.0.0.1", asker.port, timeout=30)
            remote = []
            for i in range(1, 5000):
                c.request("GET", f"/cluster/owner?key={i}")
                if json.loads(c.getresponse().read()).get("owner") == f"http://127.0.0.1:{pb}":
                    remote.append(f"/api/products/{i}")
                if len(remote) == 200:
                    break
            paths = [remote[i % len(remote)] for i in range(n)]
            out[name] = measure(asker, remote * 3, paths)
        finally:
            asker.stop()
            owner.stop()

    print(f"\ninstructions per request (callgrind, {n} requests each, one worker)")
    for k, v in out.items():
        print(f"  {k:<12} {v:>12,.0f}   {v / out['bare']:.2f}x bare")
    ratios = {k: v / out["bare"] for k, v in out.items()}
    print(f"  remote / hit: {out['remote'] / out['hit']:.2f}x instructions, remote_hot / hit: "
          f"{out['remote_hot'] / out['hit']:.2f}x")
    if a.json:
        json.dump({"instructions": out, "ratio_to_bare": ratios, "requests": n},
                  open(a.json, "w"), indent=2)


if __name__ == "__main__":
    sys.exit(main())
