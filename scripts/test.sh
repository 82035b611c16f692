#!/usr/bin/env bash
# The README's test command: installs what a fresh Debian machine lacks (PostgreSQL's server
# binaries, moto, iproute2, ...; scripts/install-deps.sh), then runs the whole test suite with
# every feature (AWS discovery included). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec cargo test --workspace --all-features --locked "$@"
