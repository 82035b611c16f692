#!/usr/bin/env bash
# Cold misses on one node against pgbench with the same query (load/bench_miss.py):
# throughput, CPU and context switches per miss, p99 at a fixed rate.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin geecache -p geecache -p geecache-load --bin geeload
exec python3 load/bench_miss.py "$@"
