"""The load suite's kit: where the binaries are, free ports, waiting for a node, reading a
process's CPU and memory and a node's metrics. Every scenario module imports from here."""
import os, socket, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "load/out")
BIN = os.environ.get("GEECACHE_BIN", os.path.join(ROOT, "target/release/geecache"))  # A/B: another build
GEELOAD = os.path.join(ROOT, "target/release/geeload")
BARE = os.path.join(ROOT, "target/release/examples/bare_handler")
LUA = os.path.join(ROOT, "load/keys.lua")
TICK = os.sysconf("SC_CLK_TCK")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_http(url, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(api, series):
    text = urllib.request.urlopen(f"{api}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0
