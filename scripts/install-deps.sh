#!/usr/bin/env bash
# Installs the system packages the tests and benchmarks need, when missing (Debian/Ubuntu).
# Tests start their own PostgreSQL cluster from the server binaries; they need no running one.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
ls /usr/lib/postgresql/*/lib/pg_stat_statements.so >/dev/null 2>&1 || need+=(postgresql-contrib)
command -v psql >/dev/null || need+=(postgresql-client)
command -v wrk >/dev/null || need+=(wrk)
command -v runuser >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)          # the partition test's namespaces
command -v iptables >/dev/null || need+=(iptables)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)      # load/ scripts
command -v debootstrap >/dev/null || need+=(debootstrap)   # the local Debian base image
command -v objcopy >/dev/null || need+=(binutils)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v promtool >/dev/null || need+=(prometheus)   # promtool check metrics, in the metrics test

python3 -c 'import moto.server' 2>/dev/null || pip install -q 'moto[server]>=5.1,<6'   # the AWS emulator
command -v checkov >/dev/null || pip install -q 'checkov>=3.2,<4'                        # Terraform policy checks

if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian's package starts a default cluster; the tests do not use it.
  $SUDO service postgresql stop >/dev/null 2>&1 || true
  $SUDO service prometheus stop >/dev/null 2>&1 || true   # only its promtool is used
else
  echo "all present"
fi
