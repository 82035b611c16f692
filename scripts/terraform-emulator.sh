#!/usr/bin/env bash
# terraform/envs/local against moto (with terraform/emulator/moto_server.py's fixes): apply,
# then a plan that must show no changes, then destroy; the apply timed (the seed's "deployment
# time"). RUNS=5 for a median. Needs terraform with the AWS provider (see terraform-check.sh)
# and moto[server] from PyPI (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/../terraform"
RUNS=${RUNS:-1}
mirror=${TF_PLUGIN_MIRROR:-/opt/tf-plugins}
if [ -d "$mirror/registry.terraform.io/hashicorp/aws" ]; then
  cfg=$(mktemp); sed "s#/opt/tf-plugins#$mirror#" terraformrc > "$cfg"; export TF_CLI_CONFIG_FILE=$cfg
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 emulator/moto_server.py "$port" > /tmp/geecache-moto-$port.log 2>&1 &
moto=$!
state=$(mktemp -d)
trap 'kill $moto 2>/dev/null || true; rm -rf "$state"' EXIT
for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$port/moto-api/" && break; sleep 0.2; done
tf() { terraform -chdir=envs/local "$@" -input=false -no-color -var "aws_endpoint=http://127.0.0.1:$port" -state="$state/terraform.tfstate"; }
terraform -chdir=envs/local init -input=false -backend=false >/dev/null
times=()
for i in $(seq 1 "$RUNS"); do
  t=$(date +%s%N)
  tf apply -auto-approve > "$state/apply.log" || { tail -40 "$state/apply.log"; exit 1; }
  ms=$(( ($(date +%s%N) - t) / 1000000 ))
  times+=("$ms")
  set +e; tf plan -detailed-exitcode > "$state/plan.log"; rc=$?; set -e
  [ $rc -eq 0 ] || { grep -E '^\s+[~+-] |Plan:' "$state/plan.log"; echo "FAIL: plan after apply shows changes (exit $rc)"; exit 1; }
  tf destroy -auto-approve > "$state/destroy.log" || { tail -40 "$state/destroy.log"; exit 1; }
  echo "run $i: apply ${ms} ms, plan shows no changes, destroy ok"
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
mkdir -p ../load/out
printf '{"apply_ms": %s, "runs": %s}\n' "$median" "$RUNS" > ../load/out/terraform-emulator.json
echo "terraform apply of envs/local against moto: median ${median} ms of ${times[*]}"
