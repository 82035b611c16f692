#!/usr/bin/env bash
# Fuzzes what bytes from clients, peers and operators reach (fuzz/, cargo-fuzz and libFuzzer):
#   scripts/fuzz.sh [SECONDS] [TARGET...]    # default: 60 s each, every target
# Each target runs for SECONDS from its corpus (fuzz/corpus/T, seeded from fuzz/seeds/T); a
# crash stops the script with a non-zero exit, the input in fuzz/artifacts/T. Prints each
# target's executions and coverage. Needs the nightly toolchain (installs cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(client_request peer_path peer_response raft_batch raft_command config_file)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
printf '%-16s %12s %10s %8s %s\n' TARGET EXECUTIONS EXEC/S COVERAGE RESULT
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cp -n "seeds/$t/"* "corpus/$t/" 2>/dev/null || true
    log="target/fuzz-$t.log"
    mkdir -p target
    if cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" \
        -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (see fuzz/$log, input in fuzz/artifacts/$t)"
        status=1
    fi
    execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
    rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    printf '%-16s %12s %10s %8s %s\n' "$t" "${execs:--}" "${rate:--}" "${cov:--}" "$result"
done
exit $status
