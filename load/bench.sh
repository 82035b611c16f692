#!/usr/bin/env bash
# The benchmark suite (load/suite.py): hit path, Zipf hit rate against one cache, thundering
# herd, scale-up and failover under load, and the seed talk's tests.
#   load/bench.sh quick   # < 3 minutes; CI runs it
#   load/bench.sh full    # 1,000,000 products, longer runs, medians of 5 (Terraform, containers)
# Writes load/out/report.json, one JSON and SVG plots per scenario. Needs PostgreSQL's server
# binaries (scripts/install-deps.sh); full mode also terraform and Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-quick}
case "$mode" in quick|full) ;; *) echo "usage: load/bench.sh quick|full" >&2; exit 2 ;; esac
# One invocation, every feature (geeload's discovery timings need AWS discovery): the cache's
# crate is compiled once for the node, the bare handler and geeload.
cargo build --release --locked --quiet --workspace --all-features --bins --example bare_handler
exec python3 load/suite.py "$mode"
