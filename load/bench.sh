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
# One invocation: the cache's crate is compiled once for the node, the bare handler and
# geeload. Full mode adds AWS discovery (geeload times Cloud Map against moto); quick mode,
# which CI runs, leaves it out, as `geecache up`'s build does (the AWS SDK is most of a cold
# release build; tests/aws_discovery.rs tests that discovery).
features=()
[ "$mode" = full ] && features=(--all-features)
cargo build --release --locked --quiet --workspace "${features[@]}" --bins --example bare_handler
exec python3 load/suite.py "$mode"
