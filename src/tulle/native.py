"""Which copy of the HTTP/1 hot path runs: the mypyc-compiled one or the Python source.

The modules in `COMPILED` carry every request of an HTTP/1 connection (codec, driver, request
stream, router, pool).  `scripts/build_native.py` (`make native`, a step of `make test`,
`make demo` and `.ci/run`) compiles them with mypyc from the same typed source into extension
modules beside the `.py` files, and writes `MANIFEST`: per source compiled, its size and
modification time (what this module compares: a `stat`, no hashing on the proxy's start-up path)
and its SHA-256 (what the build compares, so a touched but unchanged file costs no rebuild)
(ADR 0052).  Python's import system takes an extension module over the source next to it
whatever their ages, so `select()` decides once, when `tulle` is first imported:

* ``TULLE_PURE=1``: the source, always (how the suite runs the pure-Python fallback).
* No manifest (never built, or the build failed): the source, silently.
* A manifest whose sizes or times do not match the sources (a module edited since the
  build, or checked out again), or an extension missing: the source, with a
  `RuntimeWarning` naming the first stale module.  Compiled modules reach each other's
  classes through their C layout, so a mix of compiled and source copies is never an option:
  it is all or nothing.
* Otherwise the compiled modules.

In the source case a finder placed first on `sys.meta_path` loads the `.py` of each module in
`COMPILED`; every other import is untouched.  `mode()` says which copy runs and why (the
proxy's `/config_dump` and the benchmark record it).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from types import ModuleType
from typing import Final, TypeAlias

COMPILED: Final = (
    "tulle.dataplane.exchange",
    "tulle.dataplane.protocols.h1common",
    "tulle.dataplane.protocols.h1request",
    "tulle.dataplane.protocols.h1response",
    "tulle.dataplane.protocols.h1serialize",
    "tulle.dataplane.protocols.detect",
    "tulle.dataplane.listeners.detect",
    "tulle.dataplane.listeners.dispatch",
    "tulle.dataplane.listeners.h1exchange",
    "tulle.dataplane.listeners.http1",
    "tulle.dataplane.http.port",
    "tulle.dataplane.http.stream",
    "tulle.dataplane.routing.router",
    "tulle.dataplane.upstream.attempt",
    "tulle.dataplane.upstream.cluster",
    "tulle.dataplane.upstream.http1",
    "tulle.dataplane.upstream.lb",
    "tulle.dataplane.turn",
    "tulle.dataplane.telemetry.flags",
    "tulle.dataplane.telemetry.access_log",
    "tulle.dataplane.telemetry.starttime",
    "tulle.dataplane.telemetry.golden",
    "tulle.dataplane.telemetry.grpc_status",
    "tulle.dataplane.telemetry.sinks",
    "tulle.dataplane.telemetry.tracing.propagation",
    "tulle.dataplane.telemetry.tracing.tracer",
    "tulle.dataplane.telemetry.series",
    "tulle.dataplane.routing.decide",
    "tulle.dataplane.routing.match",
    "tulle.dataplane.upstream.lb_load",
    "tulle.dataplane.filters.header_edit",
    "tulle.dataplane.upstream.lb_hash",
    "tulle.dataplane.upstream.budget",
    "tulle.dataplane.upstream.limits",
    "tulle.dataplane.listeners.request_stats",
    "tulle.dataplane.listeners.listener_context",
    "tulle.dataplane.listeners.handle",
    "tulle.dataplane.http.facts",
    "tulle.dataplane.overload",
    "tulle.dataplane.protocols.h2common",
    "tulle.dataplane.protocols.h2events",
    "tulle.dataplane.protocols.h2fields",
    "tulle.dataplane.protocols.h2guard",
    "tulle.dataplane.protocols.h2translate",
    "tulle.dataplane.protocols.nghttp2",
    "tulle.dataplane.listeners.h2exchange",
    "tulle.dataplane.listeners.http2",
    "tulle.dataplane.upstream.http2",
    "tulle.dataplane.upstream.http2_pool",
    "tulle.dataplane.listeners.h1sniff",
)
"""The modules on the per-request HTTP/1 path, a sniffing listener's per-connection path and
the per-request telemetry observers (ADR 0062), compiled together (one mypyc group)."""

GROUP: Final = "tulle_native"
"""The mypyc group: its shared library is `tulle_native__mypyc` beside the `tulle` package."""

SRC: Final = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
"""The directory holding the `tulle` package (`src/` in a checkout).  Paths here are strings:
`pathlib` costs a proxy 0.7 MB of imports nothing else on its path needs (ADR 0068)."""

MANIFEST: Final = os.path.join(SRC, "tulle", "_native_build.txt")
"""Written by the build: one line per module compiled, `name size mtime_ns sha256`."""

PROFILE_NOTE: Final = os.path.join(SRC, "tulle", "_native_profile.txt")
"""Written by the build: whether the group was built with a profile (`trained: ...`) or
without one (`no profile: why`), ADR 0083.  Read (`read_profile_note`) by `mode()`, the build
and the benchmark's record, never on import."""

StrPath: TypeAlias = "str | os.PathLike[str]"
"""A path as a string or a `Path` (tests and the build pass either)."""

_state: list[str] = []
"""[mode, reason] once `select` ran."""


def source_path(name: str, root: StrPath = SRC) -> str:
    return os.path.join(root, *name.split(".")) + ".py"


def source_stamp(name: str, root: StrPath = SRC) -> str:
    """`size mtime_ns` of the module's source."""
    st = os.stat(source_path(name, root))
    return f"{st.st_size} {st.st_mtime_ns}"


def read_manifest(manifest: StrPath = MANIFEST) -> dict[str, tuple[str, str]]:
    """{name: (stamp, sha256)}; empty when there is none."""
    out: dict[str, tuple[str, str]] = {}
    try:
        with open(manifest, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            out[parts[0]] = (f"{parts[1]} {parts[2]}", parts[3])
    return out


def has_extension(name: str, root: StrPath = SRC) -> bool:
    base = os.path.join(root, *name.split("."))
    return any(os.path.exists(base + suffix) for suffix in EXTENSION_SUFFIXES)


def stale(manifest: StrPath = MANIFEST, root: StrPath = SRC,
          modules: Sequence[str] = COMPILED) -> str | None:
    """Why the compiled copy cannot be used (None: it can)."""
    built = read_manifest(manifest)
    if not built:
        return "not built"
    if set(built) != set(modules):
        return "the list of compiled modules changed since the build"
    for name in modules:
        if not has_extension(name, root):
            return f"{name}: no compiled module"
        try:
            if built.get(name, ("", ""))[0] != source_stamp(name, root):
                return f"{name}: source changed since the build"
        except OSError:
            return f"{name}: no source"
    return None


class PureFinder:
    """Finds the `.py` of the modules in `names`, never their extension modules."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        import importlib.util  # only in the source case

        leaf = fullname.rpartition(".")[2] + ".py"
        for entry in path or sys.path:
            candidate = os.path.join(entry, leaf)
            if os.path.isfile(candidate):
                return importlib.util.spec_from_file_location(fullname, candidate)
        return None


def select(environ: dict[str, str] | None = None) -> str:
    """Decide once which copy runs (see the module docstring); returns the mode."""
    if _state:
        return _state[0]
    env = os.environ if environ is None else environ
    if env.get("TULLE_PURE", "") not in ("", "0"):
        reason: str | None = "TULLE_PURE is set"
    elif not os.path.exists(MANIFEST):
        reason = "not built"
    else:
        reason = stale()
        if reason is not None:
            warnings.warn(f"tulle: running the Python source of the hot path ({reason}); "
                          f"`make native` rebuilds it", RuntimeWarning, stacklevel=2)
    if reason is None:
        _state[:] = ["compiled", "built from the current source"]
    else:
        # Also what an older build compiled: its leftover extensions must not load either.
        sys.meta_path.insert(0, PureFinder((*COMPILED, *read_manifest())))
        _state[:] = ["pure", reason]
    return _state[0]


def mode() -> tuple[str, str]:
    """(``compiled`` | ``pure``, why); the compiled case says how it was built (`profile`)."""
    select()
    if _state[0] == "compiled":
        return _state[0], f"{_state[1]}, {profile()}"
    return _state[0], _state[1]


def read_profile_note(note: StrPath = PROFILE_NOTE) -> str | None:
    """The build's note on its profile, as written; None when there is none."""
    try:
        with open(note, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def profile(note: StrPath = PROFILE_NOTE) -> str:
    """``profile-guided`` when the build trained the group (ADR 0083), else ``no profile
    (why)``; a build older than the note says that it left none."""
    text = read_profile_note(note)
    if text is None:
        return "no profile (the build left no note)"
    if text.startswith("trained"):
        return "profile-guided"
    if text.startswith("instrumented"):  # a build stopped while training (ADR 0083)
        return "instrumented, from an interrupted profile-guided build: `make native` rebuilds"
    return f"no profile ({text.removeprefix('no profile: ')})"
