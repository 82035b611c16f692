#!/usr/bin/env bash
# Builds geecache:local and geecache-postgres:local on a machine that reaches no image
# registry: the Debian base image is made locally (debootstrap -> docker import, under the
# tag the Dockerfile expects), the node binary is the host's release build (same Debian release
# as the runtime image). Elsewhere, plain `docker build -t geecache .` does the same job.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE_IMAGE:-debian:bookworm-slim}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "building $BASE with debootstrap ($SUITE, minbase)"
  debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/*
  tar -C "$root" -c . | docker import - "$BASE" >/dev/null
fi

# GEECACHE_PROFILE=debug reuses the test build (CI: the compose test checks behaviour, not speed):
# the test command's workspace and features, so that only the binary is linked again (with
# `--features aws` alone, cargo resolved the dependencies' features anew and rebuilt them).
profile=${GEECACHE_PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release --locked --features aws --bin geecache
  bin=target/release/geecache
else
  cargo build --locked --workspace --all-features --bin geecache
  bin=target/debug/geecache
fi
mkdir -p target/docker
objcopy --strip-debug "$bin" target/docker/geecache
docker build -q --target prebuilt --build-arg RUNTIME_IMAGE="$BASE" -t geecache:local . >/dev/null
docker build -q --build-arg BASE_IMAGE="$BASE" -t geecache-postgres:local -f docker/postgres.Dockerfile docker >/dev/null
docker build -q --build-arg BASE_IMAGE="$BASE" -t geecache-prometheus:local -f docker/prometheus.Dockerfile docker >/dev/null
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^geecache(-postgres|-prometheus)?:local'
