#!/usr/bin/env bash
# Install what the benchmark runs besides Python: the peer proxies (HAProxy, nginx-light — also
# the origin), wrk (closed-loop load), h2load (h2c load) and taskset (CPU pinning).
# Installs only what is missing, so a second run costs nothing.  Needs root for apt-get.
set -euo pipefail

declare -A PKG=([haproxy]=haproxy [nginx]=nginx-light [wrk]=wrk [h2load]=nghttp2-client
                [taskset]=util-linux)
missing=()
for tool in "${!PKG[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${PKG[$tool]}")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "bench/setup.sh: missing ${missing[*]}; run as root (or: sudo apt-get install -y ${missing[*]})" >&2
  exit 1
fi
echo "bench/setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}"
# Debian starts the packaged services on install; the benchmark runs its own instances.
for svc in haproxy nginx; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
