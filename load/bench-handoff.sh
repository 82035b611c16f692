#!/usr/bin/env bash
# Warm handoff against a cold start in one run (load/bench_handoff.py): database peak over
# steady and the hit-rate dip for 3 -> 5, 5 -> 3 and a rolling restart, with and without.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --workspace --all-features --bins
exec python3 load/bench_handoff.py "$@"
