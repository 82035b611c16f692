#!/usr/bin/env bash
# The load suite's one entry point: builds what a scenario needs (release), then runs it
# (`python3 -m bench.SCENARIO`, the modules in load/bench/).
#   load/bench.sh quick             # every scenario, small; CI runs it and holds it to gates
#   load/bench.sh full              # 1,000,000 products, medians of 5 (+ Terraform, containers)
#   load/bench.sh hit|miss|remote|raft|overload|handoff|restart|instr [ARGS]   # one scenario
# Writes load/out/ (report.json for quick and full, a JSON and plots per scenario). Needs
# PostgreSQL's server binaries (scripts/install-deps.sh); full mode also terraform and Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-quick}
[ $# -gt 0 ] && shift
build() { cargo build --release --locked --quiet "$@"; }
case "$scenario" in
  quick | full)
    # One invocation: the cache's crate is compiled once for the node, the bare handler and
    # geeload. Full mode adds AWS discovery (geeload times Cloud Map against moto); quick mode,
    # which CI runs, leaves it out, as `geecache up`'s build does (the AWS SDK is most of a
    # cold release build; tests/aws_discovery.rs tests that discovery).
    features=()
    [ "$scenario" = full ] && features=(--all-features)
    build --workspace "${features[@]}" --bins --example bare_handler
    set -- "$scenario" "$@"
    module=suite
    ;;
  hit | instr) build -p geecache --bin geecache --example bare_handler; module=$scenario ;;
  miss | overload) build -p geecache --bin geecache -p geecache-load --bin geeload; module=$scenario ;;
  raft | remote) build -p geecache --bin geecache; module=$scenario ;;
  handoff | restart) build --workspace --all-features --bins; module=$scenario ;;
  *)
    echo "usage: load/bench.sh quick|full|hit|miss|remote|raft|overload|handoff|restart|instr [ARGS]" >&2
    exit 2
    ;;
esac
PYTHONPATH=load exec python3 -m "bench.$module" "$@"
