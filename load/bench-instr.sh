#!/usr/bin/env bash
# Instructions per request under callgrind (load/instr.py): the hit, the miss and the remote
# paths against a bare actix-web handler. Repeatable where wall-clock figures are not.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin geecache --example bare_handler -p geecache
exec python3 load/instr.py "$@"
