#!/usr/bin/env bash
# Overload isolation (load/bench_overload.py): shed misses' latency and warm hits' p99 while a
# slow source is asked for 10x the misses it can serve.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin geecache -p geecache -p geecache-load --bin geeload
exec python3 load/bench_overload.py "$@"
