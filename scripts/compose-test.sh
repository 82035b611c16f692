#!/usr/bin/env bash
# The local container cluster, tested as a user would: build the images, start PostgreSQL and 3
# nodes that find each other by DNS, then Tom through every node, a network partition, a killed
# node, and 3 -> 5 -> 3; formation and scale-up timed (medians of 5). Cleans up what it started.
# Exit 0 on success.
set -euo pipefail
cd "$(dirname "$0")/.."
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-gcci$$}
export GEECACHE_PORT=${GEECACHE_PORT:-$((20000 + $$ % 10000))}
export GEECACHE_DEAD_AFTER=3s
export GEECACHE_PROMETHEUS_PORT=${GEECACHE_PROMETHEUS_PORT:-$((30000 + $$ % 10000))}
RUNS=${RUNS:-5}
dc() { docker-compose "$@"; }
cleanup() { dc down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; dc logs --tail=30 node >&2 || true; exit 1; }
now() { date +%s%N; }
ms() { echo $(( ($(now) - $1) / 1000000 )); }

# The first node container's id. Not `| head -1`: under pipefail, head leaving early can kill
# `dc ps` with SIGPIPE and the script with status 141 (CI saw it).
first_node() { local ids; mapfile -t ids < <(dc ps -q node); echo "${ids[0]}"; }
nodes() { dc ps -q node | xargs -r docker inspect -f '{{.State.Running}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' | awk '$1=="true"{print $2}'; }

# agreed N [IP...]: every listed (default: running) node is ready and reports the same N members,
# epoch and leader.
agreed() {
  local n=$1; shift
  local ips=("$@"); [ ${#ips[@]} -gt 0 ] || mapfile -t ips < <(nodes)
  python3 - "$n" "${ips[@]}" <<'PY'
import json, sys, urllib.request
n, ips = int(sys.argv[1]), sys.argv[2:]
views = []
for ip in ips:
    try:
        if urllib.request.urlopen(f"http://{ip}:9999/ready", timeout=1).status != 200:
            sys.exit(1)
        views.append(json.load(urllib.request.urlopen(f"http://{ip}:9999/cluster", timeout=1)))
    except Exception:
        sys.exit(1)
ok = (len(ips) == n and all(len(v["members"]) == n for v in views)
      and len({(v["epoch"], v["leader_id"]) for v in views}) == 1 and views[0]["leader_id"])
sys.exit(0 if ok else 1)
PY
}

wait_for() { # wait_for SECONDS command...
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@"; do [ "$(date +%s)" -lt "$deadline" ] || return 1; sleep 0.1; done
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

answers_all() { # answers_all IP...: 200 for 100 product keys and Tom through each
  for ip in "$@"; do
    [ "$(curl -s -m 3 "http://$ip/api?key=Tom")" = 630 ] || return 1
    for k in $(seq 1 100); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' -m 3 "http://$ip/api/products/$k")" = 200 ] || return 1
    done
  done
}

echo "== images"
t=$(now); scripts/docker-build.sh; echo "images built in $(ms "$t") ms"
size=$(docker image inspect geecache:local -f '{{.Size}}')
echo "geecache:local image size: $((size / 1024 / 1024)) MiB"

echo "== peer secret, PostgreSQL and seed"
dc run --rm secret >/dev/null 2>&1 || fail "secret"
dc up -d postgres >/dev/null
dc run --rm seed >/dev/null 2>&1 || fail "seed"

echo "== formation: 3 nodes through DNS discovery, $RUNS times"
formations=()
for i in $(seq 1 "$RUNS"); do
  dc rm -sf node frontend >/dev/null 2>&1 || true
  t=$(now)
  dc up -d --no-deps --scale node=3 node >/dev/null 2>&1
  wait_for 60 agreed 3 || fail "3 nodes did not form one ring"
  formations+=("$(ms "$t")")
done
formation=$(printf '%s\n' "${formations[@]}" | median)
echo "formation (up -> 3 ready on one epoch): median ${formation} ms of ${formations[*]}"
dc up -d --no-deps frontend >/dev/null 2>&1
front=127.0.0.1:$GEECACHE_PORT
wait_for 30 curl -sf -o /dev/null "http://$front/ready" || fail "frontend not ready"

echo "== Tom through every node and the frontend"
mapfile -t ips < <(nodes)
for ip in "${ips[@]}"; do [ "$(curl -s "http://$ip:9999/api?key=Tom")" = 630 ] || fail "Tom via $ip"; done
[ "$(curl -s "http://$front/api?key=Tom")" = 630 ] || fail "Tom via the frontend"

if [ -x target/release/geeload ]; then
  echo "== peer GET over the Docker bridge (geeload from the host, one request at a time)"
  mkdir -p load/out
  secret=$(dc run --rm --no-deps --entrypoint cat secret /run/geecache/peer-secret 2>/dev/null | tr -d '\r\n')
  [ -n "$secret" ] || fail "no peer secret in the volume"
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://${ips[0]}:8001/_geecache/scores/Tom")" = 401 ] \
    || fail "the peer port answered without the secret"
  target/release/geeload run --target "http://${ips[0]}:8001" --path '/_geecache/scores/{key}' \
    --header "Authorization: Bearer $secret" \
    --keys hot:Tom --concurrency 1 --duration 3s --title "peer GET, host -> container" \
    --json load/out/peer-containers.json | sed -n 3,4p
  python3 -c 'import json,sys; r=json.load(open("load/out/peer-containers.json")); sys.exit(1 if r["failed"] or not r["ok"] else 0)' \
    || fail "peer GETs across the Docker bridge failed"
fi

echo "== Prometheus scrapes every node"
dc up -d --no-deps prometheus >/dev/null 2>&1
prom_up() {
  curl -s "http://127.0.0.1:$GEECACHE_PROMETHEUS_PORT/api/v1/query?query=sum(up%7Bjob%3D%22geecache%22%7D)" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; sys.exit(0 if r and float(r[0]["value"][1]) == 3 else 1)' 2>/dev/null
}
wait_for 60 prom_up || fail "Prometheus does not see 3 nodes up"
echo "prometheus: 3 nodes scraped"

echo "== partition: disconnect one node from the network"
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(first_node)")
leader_ip=$(curl -s "http://${ips[0]}:9999/cluster" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(next(m["peer_url"] for m in d["members"] if m["id"]==d["leader_id"]).split("//")[1].split(":")[0])')
victim=""
for c in $(dc ps -q node); do
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c")
  if [ "$ip" != "$leader_ip" ]; then victim=$c; victim_ip=$ip; break; fi
done
majority=(); for ip in "${ips[@]}"; do [ "$ip" = "$victim_ip" ] || majority+=("$ip"); done
docker network disconnect "$net" "$victim"
wait_for 30 agreed 2 "${majority[@]}" || fail "the majority did not remove the isolated node"
answers_all "${majority[0]}:9999" "$front" || fail "the majority did not answer every key"
docker network connect --ip "$victim_ip" "$net" "$victim" 2>/dev/null || docker network connect "$net" "$victim"
wait_for 60 agreed 3 || fail "the isolated node did not rejoin after reconnecting"
echo "partition: majority served and removed the isolated node; it rejoined after reconnect"

echo "== kill one node"
mapfile -t ips < <(nodes)
killed=$(first_node)
docker kill "$killed" >/dev/null
mapfile -t rest < <(nodes)
answers_all "${rest[0]}:9999" "${rest[1]}:9999" "$front" || fail "keys failed after a kill"
wait_for 30 agreed 2 || fail "the killed node was not removed"
echo "kill: every key answered through the others; the ring dropped the dead node"
docker rm -f "$killed" >/dev/null
dc up -d --no-deps --scale node=3 node >/dev/null 2>&1
wait_for 60 agreed 3 || fail "back to 3"

echo "== scale 3 -> 5 -> 3, $RUNS times"
ups=()
for i in $(seq 1 "$RUNS"); do
  t=$(now)
  dc up -d --no-deps --scale node=5 node >/dev/null 2>&1
  wait_for 60 agreed 5 || fail "scale to 5"
  ups+=("$(ms "$t")")
  dc up -d --no-deps --scale node=3 node >/dev/null 2>&1
  wait_for 60 agreed 3 || fail "scale back to 3 (graceful leave)"
done
scale=$(printf '%s\n' "${ups[@]}" | median)
echo "scale-up (up --scale node=5 -> 5 ready on one epoch): median ${scale} ms of ${ups[*]}"
[ "$(curl -s "http://$front/api?key=Tom")" = 630 ] || fail "Tom after scaling"

mkdir -p load/out
printf '{"image_bytes": %s, "formation_ms": %s, "scale_up_ms": %s, "runs": %s}\n' \
  "$size" "$formation" "$scale" "$RUNS" > load/out/compose.json
echo "compose-test: OK"
