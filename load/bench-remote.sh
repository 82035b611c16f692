#!/usr/bin/env bash
# Remote hits through a non-owner (hot cache on and off) against local hits, in one run.
#   load/bench-remote.sh [--duration 10] [--rounds 3] [--connections 64]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin geecache
exec python3 load/bench_remote.py "$@"
