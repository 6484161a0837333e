#!/usr/bin/env bash
# Install the Debian packages a target needs, only those missing.  Idempotent; needs root for
# anything to install (prints what is missing otherwise).
#   scripts/install-system-deps.sh test    # what the test suite uses
#   scripts/install-system-deps.sh bench   # what the benchmarks use
set -euo pipefail
what=${1:-test}
case "$what" in
  test)  pkgs=(chromium curl iproute2 iptables nghttp2-client postgresql procps prometheus
         redis-server gcc libc6-dev libnghttp2-dev python3-dev python3-venv) ;;  # gcc..:
         # the HTTP/2 engine's cffi build and mypyc's (make native); python3-venv: .venv on
         # the distribution's CPython (scripts/venv.sh, ADR 0124)
  bench) pkgs=(curl haproxy nginx-light wrk nghttp2-client procps util-linux valgrind) ;;  # valgrind: bench.pair_instructions
  *) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages (run as root to install): ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
