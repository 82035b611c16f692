#!/usr/bin/env bash
# Raft membership timings: formation, failover, scale-up 3 -> 5 (medians of 5).
#   load/bench-raft.sh [--runs 5] [--dead-after 3s]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin geecache
exec python3 load/bench_raft.py "$@"
