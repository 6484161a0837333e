#!/usr/bin/env bash
# The interpreter .venv is built on, and the check that an existing .venv is built on it
# (ADR 0124).
#
#   scripts/venv.sh pick          # print the interpreter a new .venv is made with
#   scripts/venv.sh check .venv   # remove .venv (and with it its install stamp) when it was
#                                 # made with another interpreter than `pick` gives
#
# Why: the proxies run on the interpreter of the virtualenv, and the distribution's CPython
# (Debian's /usr/bin/python3: profile-guided, link-time optimised, libpython linked into the
# executable) runs them on ~8% less CPU per request than a plain `./configure && make` build
# such as pyenv's.  It is also the interpreter a proxy started under its own uid inside a
# network namespace runs on (`tulle.net.netns.python_for`): with .venv on it, the compiled
# modules are built for the interpreter that loads them.
#
# `PYTHON=/path/to/python3 make ...` overrides the choice.  Without a usable distribution
# interpreter (not CPython >= 3.11, or no venv/ensurepip, or no headers for the C builds) the
# first `python3` on PATH is used, as before.
set -euo pipefail

usable() {
  "$1" - <<'EOF' 2>/dev/null
import os, sys, sysconfig
import ensurepip, venv  # noqa: F401  (Debian ships them in python3-venv)
ok = (sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] < (3, 14)
      and os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))
sys.exit(0 if ok else 1)
EOF
}

pick() {
  if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
  elif [ -x /usr/bin/python3 ] && usable /usr/bin/python3; then
    echo /usr/bin/python3
  else
    echo python3
  fi
}

# The directory a venv made by interpreter $1 records as its `home` (venv takes it from
# sys.executable, which a pyenv shim resolves to the real interpreter).
home_of() {
  "$1" -c 'import os, sys; print(os.path.dirname(os.path.realpath(sys.executable)))'
}

case "${1:-}" in
  pick) pick ;;
  check)
    venv=${2:?usage: $0 check VENV}
    cfg=$venv/pyvenv.cfg
    [ -f "$cfg" ] || exit 0
    want=$(home_of "$(pick)")
    have=$(sed -n 's/^home *= *//p' "$cfg")
    have_real=$(cd "$have" 2>/dev/null && pwd -P || echo "$have")
    if [ "$have_real" != "$want" ]; then
      echo "re-creating $venv on the interpreter in $want (it was made with the one in $have)"
      rm -rf "$venv"
    fi
    ;;
  *) echo "usage: $0 pick | check VENV" >&2; exit 2 ;;
esac
