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


def metrics_text(api):
    """The Prometheus text of the node whose client API is at `api`."""
    with urllib.request.urlopen(f"{api}/metrics", timeout=5) as r:
        return r.read().decode()


def metrics(api):
    """Every series of the node at `api`, by its name and labels as printed."""
    out = {}
    for line in metrics_text(api).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def metric(api, series):
    """One series (name and labels as printed), 0 when absent."""
    return metrics(api).get(series, 0.0)


def metric_sum(api, name):
    """A metric summed over its label sets."""
    return sum(v for k, v in metrics(api).items() if k == name or k.startswith(name + "{"))
