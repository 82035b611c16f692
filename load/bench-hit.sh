#!/usr/bin/env bash
# Warm-hit throughput, latency and server CPU per request of a node against a bare actix-web
# handler, interleaved in one run; then RSS with the cache full. Needs wrk (scripts/install-deps.sh).
#   load/bench-hit.sh [--duration 10] [--rounds 3] [--connections 64]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin geecache --example bare_handler
exec python3 load/bench_hit.py "$@"
