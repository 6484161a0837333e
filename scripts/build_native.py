"""Compile the HTTP/1 hot path (`tulle.native.COMPILED`) with mypyc, in place (ADR 0052),
and the C modules beside it (`C_MODULES`: the access log's line encoder, ADR 0076).

    .venv/bin/python scripts/build_native.py [--force] [--check]

The extension modules land beside their sources in src/ (never in git: .gitignore), the C
sources and objects under build/native/.  Nothing is compiled when the manifest
(`src/tulle/_native_build.txt`) lists the current SHA-256 of every source, every extension
exists, and no module the compiled ones take types from has changed since the build
(`src/tulle/_native_types.txt`: every `tulle` module they import, directly or through
others, with its SHA-256; the proxy's start-up checks only the compiled sources' sizes and
times); if only sizes or times moved (a checkout, a `touch`) the manifest is refreshed.
Otherwise the old extensions and the manifest are removed first, so a build that fails leaves
the Python source in force (`tulle.native.select`), never a stale compiled copy.  Needs gcc
and the Python headers (scripts/install-system-deps.sh test) and mypy (the `test` extra).
`--check` exits 1 when a build is needed, without building.

It also byte-compiles the package (`__pycache__/*.pyc`, never in git), as installing a wheel
does: an editable checkout run with PYTHONDONTWRITEBYTECODE=1 otherwise compiles every module
from source at every start, which costs each proxy ~0.8 MB of heap left behind by the compiler
and ~0.1 s of start-up (ADR 0068).  Only stale or missing files are written.
"""

from __future__ import annotations

import argparse
import ast
import compileall
import copy
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
os.environ["TULLE_PURE"] = "1"  # this process needs only the list, never the extensions
sys.path.insert(0, str(SRC))

from tulle import native  # noqa: E402


def sha256(name: str) -> str:
    return hashlib.sha256(Path(native.source_path(name)).read_bytes()).hexdigest()


TYPES = SRC / "tulle" / "_native_types.txt"
"""The type sources of the last build (`type_sources`) and the C modules' sources: `name
sha256` per line."""

C_MODULES = {"tulle.dataplane.telemetry._aline": "src/tulle/dataplane/telemetry/_aline.c"}
"""Hand-written C extension modules built with the compiled ones (module: its source,
relative to the checkout).  Each has a pure-Python equivalent its importer falls back to."""


def module_file(name: str) -> Path | None:
    """The source of a `tulle` module or package; None for a name that is not one (a class
    imported from a module, a third-party module)."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def type_sources() -> dict[str, str]:
    """Every `tulle` module the compiled ones import, directly or through each other, and not
    compiled itself, with the SHA-256 of its source.  mypyc compiled against their types (a
    protocol or a union the compiled code calls through, a class's fields), so a change there
    can leave the extensions wrong although no compiled source changed: a union that gained a
    class is a `TypeError` at run time.  Imports under `TYPE_CHECKING` count: mypyc reads them."""
    seen: set[str] = set()
    todo = list(native.COMPILED)
    while todo:
        path = module_file(todo.pop())
        if path is None:
            continue
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if (name.split(".", 1)[0] == "tulle" and name not in seen
                        and module_file(name) is not None):
                    seen.add(name)
                    todo.append(name)
    return {name: hashlib.sha256(path.read_bytes()).hexdigest()
            for name in sorted(seen - set(native.COMPILED))
            if (path := module_file(name)) is not None}


def c_sources() -> dict[str, str]:
    """The C modules' sources (`C_MODULES`), keyed `<module>.c`, with their SHA-256."""
    return {f"{name}.c": hashlib.sha256((ROOT / source).read_bytes()).hexdigest()
            for name, source in C_MODULES.items()}


TRAINING = ROOT / "scripts" / "native_training.py"
"""The profile's workload (ADR 0083): a change to it is a change to the build."""


INTERPRETER = "python"
"""`TYPES`'s entry for the interpreter the extensions were built for and against."""


def interpreter() -> str:
    """The interpreter this build runs on, as the extensions depend on it: its real path under
    the virtualenv and its full version (release, build date, compiler).  Two CPython 3.11
    builds load each other's extensions (same ABI tag), but mypyc's code is compiled against
    one's headers and trained on one's profile: a .venv made again on another interpreter
    (scripts/venv.sh, ADR 0124) rebuilds them."""
    base = getattr(sys, "_base_executable", sys.executable)
    return f"{os.path.realpath(base)} {' '.join(sys.version.split())}"


def build_inputs() -> dict[str, str]:
    """What a build depends on beyond the compiled sources (the manifest's): the type sources,
    the C sources, the training workload and the interpreter, recorded together in `TYPES`."""
    return {**type_sources(), **c_sources(),
            TRAINING.name: hashlib.sha256(TRAINING.read_bytes()).hexdigest(),
            INTERPRETER: interpreter()}


def read_types(path: Path = TYPES) -> dict[str, str] | None:
    """The type sources a build recorded; None when it recorded none."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return dict(line.split(" ", 1) for line in lines if " " in line)


def types_changed(recorded: dict[str, str] | None, current: dict[str, str]) -> str | None:
    """Why the type sources now differ from the build's (None: they do not)."""
    if recorded is None:
        return "the modules the compiled ones take types from were not recorded"
    for name, digest in current.items():
        if recorded.get(name) != digest:
            if name.endswith(".c"):
                return f"{name}: C source changed since the build"
            if name == TRAINING.name:
                return f"{name}: the profile's workload changed since the build"
            if name == INTERPRETER:
                return (f"built for {recorded.get(name) or 'an unrecorded interpreter'}, "
                        f"running on {digest}")
            return f"{name}: changed since the build (the compiled modules take types from it)"
    gone = sorted(set(recorded) - set(current))
    return f"{gone[0]}: no longer imported by the compiled modules" if gone else None


def write_types(current: dict[str, str], path: Path = TYPES) -> None:
    path.write_text("".join(f"{name} {digest}\n" for name, digest in current.items()),
                    encoding="utf-8")


def needs_build() -> str | None:
    """Why the extensions do not match the sources (None: they do)."""
    built = native.read_manifest()
    if not built:
        return "not built"
    if set(built) != set(native.COMPILED):
        return "the list of compiled modules changed"
    for name in (*native.COMPILED, *C_MODULES):
        if not native.has_extension(name):
            return f"{name}: no compiled module"
    for name in native.COMPILED:
        if built.get(name, ("", ""))[1] != sha256(name):
            return f"{name}: source changed since the build"
    note = native.read_profile_note()
    if note is None:
        return "the build left no note on its profile (built before ADR 0083, or interrupted)"
    if note.startswith(INSTRUMENTED):
        return "an interrupted profile-guided build left its instrumented group in place"
    return types_changed(read_types(), build_inputs())


def write_note(text: str) -> None:
    Path(native.PROFILE_NOTE).write_text(text + "\n", encoding="utf-8")


def write_manifest(hashes: dict[str, str], stamps: dict[str, str]) -> None:
    Path(native.MANIFEST).write_text("".join(f"{name} {stamps[name]} {hashes[name]}\n"
                                       for name in native.COMPILED))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="build even when up to date")
    ap.add_argument("--check", action="store_true", help="exit 1 if a build is needed")
    ap.add_argument("--no-profile", action="store_true",
                    help="one plain build, without the profile-guided one (faster; ADR 0083)")
    args = ap.parse_args(argv)
    why = needs_build()
    if args.check:
        print(why or "up to date")
        return 1 if why else 0
    byte_compile()
    if why is None and not args.force:
        if native.stale() is not None:  # same contents, new times: only the manifest moves
            write_manifest({n: sha256(n) for n in native.COMPILED},
                           {n: native.source_stamp(n) for n in native.COMPILED})
        print("tulle native: up to date")
        return 0
    print(f"tulle native: building ({why or 'forced'}): {len(native.COMPILED)} modules")
    clean()
    # Taken before compiling: a source edited during the build then reads as stale.
    hashes = {name: sha256(name) for name in native.COMPILED}
    stamps = {name: native.source_stamp(name) for name in native.COMPILED}
    types = build_inputs()
    profile = build(hashes, stamps, types, trained=not args.no_profile)
    missing = [name for name in (*native.COMPILED, *C_MODULES) if not native.has_extension(name)]
    if missing:
        print(f"tulle native: the build produced no module for {missing}", file=sys.stderr)
        return 1
    write_types(types)
    write_manifest(hashes, stamps)
    write_note(profile)
    print(f"tulle native: built ({profile})")
    return 0


def byte_compile() -> None:
    """`.pyc` beside every module of the package that has none or a stale one."""
    if not compileall.compile_dir(str(SRC / "tulle"), quiet=1, workers=1):
        print("tulle native: some modules could not be byte-compiled", file=sys.stderr)


def clean() -> None:
    """The manifest first, then every mypyc extension in the package (a module dropped from
    `COMPILED` must not leave its old one behind) and the group's.  Not the libnghttp2
    engine's cffi module (`ng2/_ng2*.so`, ADR 0051): that one is `make deps`'s."""
    Path(native.MANIFEST).unlink(missing_ok=True)
    Path(native.PROFILE_NOTE).unlink(missing_ok=True)
    TYPES.unlink(missing_ok=True)
    for old in (Path(native.SRC) / "tulle").rglob("*.so"):
        if old.parent.name == "ng2" and old.name.startswith("_ng2"):
            continue
        old.unlink()
    for old in Path(native.SRC).glob(native.GROUP + "__mypyc.*.so"):
        old.unlink()


PROFILE = ROOT / "build" / "native" / "profile"
"""Where the instrumented build's proxies write their profile (`*.gcda`) for the second build."""

Flags = tuple[list[str], list[str]]
"""Extra (compile, link) flags of one build."""

GENERATE: Flags = ([f"-fprofile-generate={PROFILE}", "-fprofile-update=prefer-atomic"],
                   [f"-fprofile-generate={PROFILE}"])
USE: Flags = ([f"-fprofile-use={PROFILE}", "-fprofile-correction", "-Wno-missing-profile"], [])
"""(compile, link) flags of the instrumented build and of the build that uses its profile."""

TRAINING_TIMEOUT = 300.0
"""Seconds the training run may take in all (it runs ~4 s of traffic)."""

INSTRUMENTED = "instrumented"
"""The note while the instrumented group is in place: a build stopped then (SIGKILL) leaves it
selected by the manifest, and `needs_build` rebuilds (never "up to date")."""


def build(hashes: dict[str, str], stamps: dict[str, str], types: dict[str, str],
          trained: bool = True) -> str:
    """Compile the group and the C modules; with `trained`, profile-guided (ADR 0083): an
    instrumented build, `scripts/native_training.py` run through it, then the build that uses
    its profile.  A training run that fails leaves a plain build, said so on stderr and in the
    returned note.  Returns the note `native.PROFILE_NOTE` keeps."""
    exts = extensions()
    if not trained:
        compile_extensions(exts)
        return "no profile: built with --no-profile"
    shutil.rmtree(PROFILE, ignore_errors=True)
    compile_extensions(exts, GENERATE)
    try:
        with _stopped_by_signals():  # SIGTERM, SIGHUP: `finally` runs, as on Ctrl-C
            # The proxies load the instrumented group only if the manifest says it is current.
            write_note(f"{INSTRUMENTED}: an interrupted profile-guided build")
            write_types(types)
            write_manifest(hashes, stamps)
            summary = train()
    finally:
        clean()  # never leave the instrumented group in place
    if not summary.startswith("no profile"):
        try:
            compile_extensions(exts, USE)
            return summary
        except (Exception, SystemExit) as e:  # setuptools: SystemExit("error: ...")
            clean()
            summary = f"no profile: the build with the profile failed ({e})"
    print(f"tulle native: {summary}; building without one", file=sys.stderr)
    compile_extensions(exts)
    return summary


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `KeyboardInterrupt` inside, as SIGINT does: their default
    action would end the build before its `finally` removes the instrumented group."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def train() -> str:
    """Run the training workload; `trained: <what ran>` or `no profile: <why>`."""
    # Its own session: on a timeout or an interrupt the whole group goes, the proxies it
    # started with it (killing the script alone would leave them running the instrumented
    # group, holding their ports, for good).
    with subprocess.Popen([sys.executable, str(TRAINING)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          start_new_session=True) as run:
        try:
            out, err = run.communicate(timeout=TRAINING_TIMEOUT)
        except subprocess.TimeoutExpired:
            end_group(run)
            return f"no profile: the training run took over {TRAINING_TIMEOUT:.0f} s"
        except BaseException:
            end_group(run)
            raise
    said = (out + err).strip().splitlines()
    if run.returncode != 0:
        return f"no profile: the training run failed ({said[-1] if said else run.returncode})"
    if not any(PROFILE.glob(f"*{native.GROUP}.gcda")):
        return "no profile: the training proxies wrote none (did they run the compiled group?)"
    done = said[-1].removeprefix("tulle native training: ") if said else ""
    return f"trained: {done}"


def end_group(proc: subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGTERM to `proc`'s process group (the training script cleans up, its proxies drain),
    SIGKILL to whatever of it is left after `grace` seconds; `proc` reaped."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None:  # the leader reaped: the group empties once its
                try:                     # members (reparented) are gone
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.05)
    proc.wait()


def extensions() -> list[Any]:
    """The group's extensions (mypyc writes the C) and the C modules, with `link_flags`."""
    from mypyc.build import mypycify
    from setuptools import Extension

    warnings.filterwarnings("ignore")  # setuptools' notes on pyproject.toml's license table
    os.chdir(ROOT)
    paths = [str(Path(native.source_path(name)).relative_to(ROOT)) for name in native.COMPILED]
    os.environ.setdefault("MYPYPATH", str(SRC))
    exts = mypycify(paths, opt_level="3", group_name=native.GROUP, target_dir="build/native")
    flags = link_flags(ROOT / "build" / "native")
    exts += [Extension(name, [source], extra_compile_args=["-O2", "-Wall", "-Werror"])
             for name, source in C_MODULES.items()]
    for ext in exts:
        ext.extra_link_args = [*ext.extra_link_args, *flags]
    return list(exts)


def compile_extensions(exts: list[Any], profile: Flags = ([], [])) -> None:
    """Compile and link every extension in place, every object anew (`--force`: the objects
    of another build's flags must not be reused), with the profile's extra flags."""
    from setuptools import setup

    built = [copy.copy(ext) for ext in exts]
    for ext in built:
        ext.extra_compile_args = [*ext.extra_compile_args, *profile[0]]
        ext.extra_link_args = [*ext.extra_link_args, *profile[1]]
    setup(
        name="tulle-native",
        package_dir={"": "src"},
        ext_modules=built,
        script_args=["-q", "build_ext", "--inplace", "--force", "--build-temp",
                     "build/native/obj"],
    )


EXPORTS = "{\n  global: PyInit_*;\n  local: *;\n};\n"
"""Only the modules' init functions leave the shared libraries: the group's thousands of
functions are reached through capsules, never by symbol."""

RELR_GLIBC = (2, 36)
"""The first glibc whose loader reads packed relative relocations (DT_RELR)."""


def link_flags(workdir: Path, libc: str | None = None) -> list[str]:
    """Linker flags that shrink what every proxy maps (ADR 0068): a version script exporting
    only `PyInit_*` (the symbol tables go from ~195 KB to ~13 KB, and calls inside the group
    need no PLT), and packed relative relocations (`.rela.dyn` ~259 KB -> ~7 KB) when this
    machine's glibc loads them: the build runs where the proxies run."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "exports.map"
    script.write_text(EXPORTS)
    flags = [f"-Wl,--version-script={script}"]
    name, _, version = (libc if libc is not None else _libc()).partition(" ")
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if name == "glibc" and len(parts) == 2 and parts >= RELR_GLIBC:
        flags.append("-Wl,-z,pack-relative-relocs")
    return flags


def _libc() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
