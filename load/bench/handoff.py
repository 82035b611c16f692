#!/usr/bin/env python3
"""Warm handoff against a cold start, in one run: the suite's handoff scenario (3 -> 5, 5 -> 3,
a rolling restart of nodes 1-3, open-loop Zipf through a frontend, the consistency checker
running) twice on fresh clusters over the same data, interleaved: with the handoff (the
default `--handoff-grace 60s`) and without it (`--handoff-grace 0s`: a new owner's miss goes
to PostgreSQL, as before issue 15). Prints database peak over steady and the hit-rate dip per
phase for both.

  load/bench.sh handoff [quick|full] [--rounds N] [--variants handoff,cold,drain15,...]

More variants (`--variants`) compare the handoff's own settings in the same run. Each run's
geeload report (its per-second cluster timeline included) is kept as
load/out/handoff-VARIANT-ROUND.json.
"""
import argparse, json, os, shutil, statistics, sys, tempfile

from . import suite
from .suite import MODES, Cluster, Pg, wait  # noqa: E402

VARIANTS = {"handoff": [], "cold": ["--handoff-grace", "0s"],
            "pull": ["--handoff-send", "false"],
            "drain15": ["--handoff-drain", "15s"], "drain1": ["--handoff-drain", "1s"]}
PHASES = (("3 -> 5", "scale-up 3->5"), ("5 -> 3", "scale-down 5->3"))


def one(m, pg, per_node, extra):
    work = tempfile.mkdtemp(prefix="geecache-handoff-")
    cl = Cluster(pg, per_node, work, extra)
    try:
        for i in (1, 2, 3):
            cl.start(i)
        wait(lambda: cl.agreed([1, 2, 3]), 30, "3 nodes agreed")
        return suite.scenario_handoff(m, cl, work)
    finally:
        cl.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="quick", choices=MODES)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--variants", default="handoff,cold",
                    help="comma-separated, of: " + ", ".join(VARIANTS))
    a = ap.parse_args()
    chosen = a.variants.split(",")
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}: choose from {list(VARIANTS)}")
    m = MODES[a.mode]
    os.makedirs(suite.OUT, exist_ok=True)
    pg = Pg()
    runs = {v: [] for v in chosen}
    try:
        replay = suite.seed_for_zipf(pg, m)
        per_node = replay["cache_bytes"] // 3
        for n in range(a.rounds):
            for name in chosen:
                extra = VARIANTS[name]
                suite.log(f"handoff scenario, {name} ({' '.join(extra) or 'default flags'})")
                runs[name].append(one(m, pg, per_node, extra))
                # geeload's report, per-second cluster timeline included, of each run.
                shutil.copy(f"{suite.OUT}/handoff.json", f"{suite.OUT}/handoff-{name}-{n + 1}.json")
    finally:
        pg.stop()
    med = lambda xs: statistics.median(xs) if xs else None
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    out = {}
    print(f"\nwarm handoff against a cold start ({a.mode}: {m['products']:,} products, "
          f"{m['handoff_rate']:,} req/s, {a.rounds} round(s), medians)")
    print(f"  {'phase':<16} {'variant':<8} {'db peak/steady':>15} {'hit-rate dip':>13} "
          f"{'(under before)':>15} {'within 1 pt':>12}")
    for label, key in PHASES + (("rolling restart", None),):
        for name in chosen:
            ph = [r["rolling_restart"] if key is None else r["phases"].get(key)
                  for r in runs[name]]
            ph = [p for p in ph if p]
            row = {k: med([p[k] for p in ph if p[k] is not None])
                   for k in ("db_peak_over_steady", "hit_rate_dip_points",
                             "hit_rate_dip_under_before_points", "within_1_point_ms")}
            out.setdefault(label, {})[name] = row
            print(f"  {label:<16} {name:<8} {fmt(row['db_peak_over_steady'], '.2f'):>14}x "
                  f"{fmt(row['hit_rate_dip_points'], '.1f'):>10} pts "
                  f"{fmt(row['hit_rate_dip_under_before_points'], '.1f'):>11} pts "
                  f"{fmt(row['within_1_point_ms'], ',.0f'):>9} ms")
    for name in chosen:
        fails = sum(r["failed_requests"] for r in runs[name])
        stale = sum(r["stale_reads"]["1s"] for r in runs[name])
        peeks = runs[name][-1]["peeks"]
        print(f"  {name}: failed {fails}, stale at 1 s {stale}, peeks (last round) "
              + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(peeks.items())))
    if a.json:
        json.dump({"phases": out, "runs": runs}, open(a.json, "w"), indent=2, default=str)


if __name__ == "__main__":
    main()
