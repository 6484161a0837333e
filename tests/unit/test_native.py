"""Which copy of the hot path runs (`tulle.native`, ADR 0052): the compiled modules only when
every one was built from the source beside it, the Python source otherwise, never a mix."""

from __future__ import annotations

import importlib.machinery
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tulle import native

MODS = ("pkg.alpha", "pkg.beta")
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def tree(tmp_path: Path, built: bool = True) -> tuple[Path, Path]:
    """A source tree with two modules, their (fake) extensions and a manifest of the build."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in MODS:
        leaf = name.rpartition(".")[2]
        (pkg / f"{leaf}.py").write_text(f"WHO = {leaf!r}\n")
        (pkg / f"{leaf}{SUFFIX}").write_bytes(b"not really a shared object")
    manifest = tmp_path / "build.txt"
    if built:
        manifest.write_text("".join(f"{name} {native.source_stamp(name, tmp_path)} {'0' * 64}\n"
                                    for name in MODS))
    return tmp_path, manifest


def test_a_build_of_the_current_sources_is_used(tmp_path: Path) -> None:
    root, manifest = tree(tmp_path)
    assert native.stale(manifest, root, MODS) is None


def test_no_manifest_means_not_built(tmp_path: Path) -> None:
    root, manifest = tree(tmp_path, built=False)
    assert native.stale(manifest, root, MODS) == "not built"
    manifest.write_text("garbage\n")
    assert native.stale(manifest, root, MODS) == "not built"


def test_a_source_edited_after_the_build_is_stale(tmp_path: Path) -> None:
    root, manifest = tree(tmp_path)
    (root / "pkg" / "beta.py").write_text("WHO = 'edited, longer'\n")
    assert native.stale(manifest, root, MODS) == "pkg.beta: source changed since the build"


def test_a_missing_extension_is_stale(tmp_path: Path) -> None:
    root, manifest = tree(tmp_path)
    (root / "pkg" / f"alpha{SUFFIX}").unlink()
    assert native.stale(manifest, root, MODS) == "pkg.alpha: no compiled module"


def test_the_pure_finder_loads_the_source_beside_an_extension(tmp_path: Path) -> None:
    root, _ = tree(tmp_path)
    finder = native.PureFinder(MODS)
    spec = finder.find_spec("pkg.alpha", [str(root / "pkg")])
    assert spec is not None and spec.origin == str(root / "pkg" / "alpha.py")
    assert finder.find_spec("pkg.gamma", [str(root / "pkg")]) is None  # not ours: untouched
    assert finder.find_spec("pkg.alpha", [str(tmp_path / "nowhere")]) is None


def test_a_fresh_process_obeys_tulle_pure() -> None:
    """`TULLE_PURE=1` runs every hot-path module from its `.py`, whatever is built."""
    env = {**os.environ, "TULLE_PURE": "1"}
    code = ("import tulle.native as n, importlib; "
            "print(n.mode()[0], all(importlib.import_module(m).__file__.endswith('.py') "
            "for m in n.COMPILED))")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["pure", "True"]


def test_this_run_uses_the_copy_it_was_asked_for() -> None:
    """`make test` sets TULLE_EXPECT_COMPILED=1 for its compiled pass and TULLE_PURE=1 for the
    fallback pass: each must really run the copy it names."""
    import tulle.dataplane.http.stream as stream

    expected = ("compiled" if os.environ.get("TULLE_EXPECT_COMPILED")
                else "pure" if os.environ.get("TULLE_PURE") else None)
    if expected is None:
        pytest.skip("neither TULLE_EXPECT_COMPILED nor TULLE_PURE is set")
    assert native.mode()[0] == expected, native.mode()
    assert str(stream.__file__).endswith(".py") == (expected == "pure")
    from tulle.dataplane.telemetry import access_record  # its C line encoder (ADR 0076)

    assert (access_record.NATIVE_LINE is not None) == (expected == "compiled")


def test_a_build_of_another_module_list_is_stale(tmp_path: Path) -> None:
    """A module added to or dropped from the list since the build: rebuild (the build also
    removes a dropped module's extension, and until then the finder hides it)."""
    root, manifest = tree(tmp_path)
    assert native.stale(manifest, root, MODS[:1]) == (
        "the list of compiled modules changed since the build")
    assert native.stale(manifest, root, (*MODS, "pkg.gamma")) == (
        "the list of compiled modules changed since the build")


def test_the_build_byte_compiles_the_package_even_when_python_may_not_write_bytecode(
        tmp_path: Path) -> None:
    """ADR 0068: a checkout run with PYTHONDONTWRITEBYTECODE=1 would otherwise compile every
    module from source at every proxy start (~0.8 MiB of compiler garbage per proxy)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "build_native.py"
    pkg = tmp_path / "tulle"
    pkg.mkdir()
    (pkg / "mod.py").write_text("X = 1\n")
    code = (f"import importlib.util, sys; sys.dont_write_bytecode = True; "
            f"spec = importlib.util.spec_from_file_location('b', {str(script)!r}); "
            f"m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            f"m.SRC = __import__('pathlib').Path({str(tmp_path)!r}); m.byte_compile()")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert list((pkg / "__pycache__").glob("mod.*.pyc"))


def _build_script() -> object:
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "build_native.py"
    spec = importlib.util.spec_from_file_location("build_native_flags", script)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("libc", "relr"), [
    ("glibc 2.36", True), ("glibc 2.41", True), ("glibc 2.35", False), ("glibc 2.9", False),
    ("", False), ("musl 1.2", False),
])
def test_link_flags_pack_relocations_only_where_the_loader_reads_them(
        tmp_path: Path, libc: str, relr: bool) -> None:
    flags = _build_script().link_flags(tmp_path, libc)  # type: ignore[attr-defined]
    assert ("-Wl,-z,pack-relative-relocs" in flags) is relr
    script = tmp_path / "exports.map"
    assert f"-Wl,--version-script={script}" in flags
    assert "global: PyInit_*;" in script.read_text() and "local: *;" in script.read_text()


def test_the_built_group_exports_only_module_inits() -> None:
    """ADR 0068: the group's symbols stay inside it (when it is built)."""
    import subprocess as sp

    libs = list(Path(native.SRC).glob(native.GROUP + "__mypyc.*.so"))
    if not libs or native.stale() is not None:
        pytest.skip("the compiled group is not built")
    out = sp.run(["nm", "-D", "--defined-only", str(libs[0])], capture_output=True, text=True,
                 check=True, timeout=60).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert names and all(n.startswith("PyInit_") for n in names), names[:5]


def test_the_build_tracks_the_modules_the_compiled_ones_take_types_from() -> None:
    """A compiled module typed against an interpreted one's protocol or union (the HTTP/2
    drivers against `h2engine.Codec`) is wrong after that module changes although its own
    source did not: the build follows the imports (`TYPE_CHECKING` ones too) and records them."""
    mod: Any = _build_script()
    current = mod.type_sources()
    assert "tulle.dataplane.protocols.h2engine" in current  # (imported by the HTTP/2 drivers)
    assert "tulle.dataplane.listeners.context" in current
    assert not set(current) & set(native.COMPILED)
    assert all(len(digest) == 64 for digest in current.values())
    assert mod.types_changed(dict(current), current) is None
    assert mod.types_changed(None, current) == (
        "the modules the compiled ones take types from were not recorded")
    edited = dict(current, **{"tulle.dataplane.protocols.h2engine": "0" * 64})
    assert mod.types_changed(edited, current) == (
        "tulle.dataplane.protocols.h2engine: changed since the build (the compiled modules take "
        "types from it)")
    assert mod.types_changed(dict(current, **{"tulle.gone": "0" * 64}), current) == (
        "tulle.gone: no longer imported by the compiled modules")
    # The hand-written C modules' sources are recorded and compared with them.
    c_source = "tulle.dataplane.telemetry._aline.c"
    assert c_source not in current
    inputs = mod.build_inputs()
    assert {**current, **mod.c_sources()}.items() <= inputs.items() and c_source in inputs
    assert mod.types_changed(dict(inputs, **{c_source: "0" * 64}), inputs) == (
        f"{c_source}: C source changed since the build")
    # So is the profile's training workload (ADR 0083).
    assert set(inputs) - set(current) - set(mod.c_sources()) == {"native_training.py",
                                                                 "python"}
    assert mod.types_changed(dict(inputs, **{"native_training.py": "0" * 64}), inputs) == (
        "native_training.py: the profile's workload changed since the build")


def test_the_build_tracks_the_interpreter_it_was_made_for(tmp_path: Path) -> None:
    """A .venv made again on another CPython 3.11 (scripts/venv.sh, ADR 0124) loads the old
    extensions (same ABI tag) although mypyc compiled them against the other's headers: the
    interpreter is a build input, recorded and read back whole."""
    mod: Any = _build_script()
    inputs = mod.build_inputs()
    here = inputs["python"]
    assert here.startswith(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    assert sys.version.split()[0] in here and "\n" not in here
    path = tmp_path / "types.txt"
    mod.write_types(inputs, path)
    assert mod.read_types(path) == inputs
    other = dict(inputs, python="/root/.pyenv/versions/3.11.7/bin/python3.11 3.11.7 (main)")
    assert mod.types_changed(other, inputs) == (
        f"built for /root/.pyenv/versions/3.11.7/bin/python3.11 3.11.7 (main), running on {here}")


def test_recorded_type_sources_read_back(tmp_path: Path) -> None:
    mod: Any = _build_script()
    path = tmp_path / "types.txt"
    assert mod.read_types(path) is None
    mod.write_types({"tulle.a": "1" * 64, "tulle.b": "2" * 64}, path)
    assert mod.read_types(path) == {"tulle.a": "1" * 64, "tulle.b": "2" * 64}


@pytest.mark.parametrize(("note", "said"), [
    ("trained: http1 708, grpc 2842\n", "profile-guided"),
    ("no profile: built with --no-profile\n", "no profile (built with --no-profile)"),
    ("no profile: the training run failed (boom)\n",
     "no profile (the training run failed (boom))"),
])
def test_the_profile_note_is_read_back(tmp_path: Path, note: str, said: str) -> None:
    (tmp_path / "note.txt").write_text(note)
    assert native.profile(tmp_path / "note.txt") == said


def test_a_build_without_a_note_says_so(tmp_path: Path) -> None:
    assert native.profile(tmp_path / "none.txt") == "no profile (the build left no note)"


def test_a_compiled_build_did_not_lose_its_profile_silently() -> None:
    """ADR 0083: a training run that fails leaves a plain build and says so; the suite (run
    after `make native`, as CI runs it) fails then, so a broken workload cannot quietly cost
    every proxy its profile-guided build.  `--no-profile` is a choice, and passes."""
    if native.stale() is not None:
        pytest.skip("the compiled group is not built")
    said = native.profile()
    assert said == "profile-guided" or said.endswith("--no-profile)"), said


def test_the_build_fails_over_to_a_plain_build_when_training_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training run that fails is said, and the flags of neither profile build are used."""
    build = _build_script()
    calls: list[tuple[list[str], list[str]]] = []
    monkeypatch.setattr(build, "extensions", lambda: ["ext"])
    monkeypatch.setattr(build, "compile_extensions",
                        lambda exts, profile=([], []): calls.append(profile))
    monkeypatch.setattr(build, "write_types", lambda *a, **k: None)
    monkeypatch.setattr(build, "write_manifest", lambda *a, **k: None)
    monkeypatch.setattr(build, "clean", lambda: None)
    notes: list[str] = []
    monkeypatch.setattr(build, "write_note", notes.append)
    monkeypatch.setattr(build, "PROFILE", tmp_path / "profile")
    monkeypatch.setattr(build, "train", lambda: "no profile: the training run failed (x)")
    note = build.build({}, {}, {})  # type: ignore[attr-defined]
    assert note == "no profile: the training run failed (x)"
    assert calls == [build.GENERATE, ([], [])]  # type: ignore[attr-defined]
    monkeypatch.setattr(build, "train", lambda: "trained: http1 1")
    calls.clear()
    assert build.build({}, {}, {}) == "trained: http1 1"  # type: ignore[attr-defined]
    assert calls == [build.GENERATE, build.USE]  # type: ignore[attr-defined]

    assert notes and all(n.startswith("instrumented") for n in notes)


def test_a_build_whose_profile_build_fails_falls_back_to_a_plain_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gcc refusing the profile (a mismatch is an error) leaves a plain build, not none."""
    build = _build_script()
    calls: list[tuple[list[str], list[str]]] = []

    def compile_extensions(exts: object, profile: tuple[list[str], list[str]] = ([], [])
                           ) -> None:
        calls.append(profile)
        if profile == build.USE:  # type: ignore[attr-defined]
            raise SystemExit("error: command 'gcc' failed")

    monkeypatch.setattr(build, "extensions", lambda: ["ext"])
    monkeypatch.setattr(build, "compile_extensions", compile_extensions)
    for name in ("write_types", "write_manifest", "write_note"):
        monkeypatch.setattr(build, name, lambda *a, **k: None)
    monkeypatch.setattr(build, "clean", lambda: None)
    monkeypatch.setattr(build, "PROFILE", tmp_path / "profile")
    monkeypatch.setattr(build, "train", lambda: "trained: http1 1")
    note = build.build({}, {}, {})  # type: ignore[attr-defined]
    assert note == "no profile: the build with the profile failed (error: command 'gcc' failed)"
    assert calls == [build.GENERATE, build.USE, ([], [])]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("note", "why"), [
    (None, "the build left no note on its profile (built before ADR 0083, or interrupted)"),
    ("instrumented: an interrupted profile-guided build",
     "an interrupted profile-guided build left its instrumented group in place"),
    ("trained: http1 1", None),
    ("no profile: built with --no-profile", None),
])
def test_an_interrupted_or_unnoted_build_is_never_up_to_date(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, note: str | None,
        why: str | None) -> None:
    """ADR 0083: a build killed while training leaves the instrumented group with a manifest
    that matches the sources; `make native` must rebuild it, not call it up to date."""
    build = _build_script()
    monkeypatch.setattr(native, "read_manifest",
                        lambda *a: {name: ("1 1", "h") for name in native.COMPILED})
    monkeypatch.setattr(native, "has_extension", lambda *a: True)
    monkeypatch.setattr(build, "sha256", lambda name: "h")
    monkeypatch.setattr(build, "build_inputs", lambda: {})
    monkeypatch.setattr(build, "read_types", lambda *a: {})
    monkeypatch.setattr(native, "read_profile_note", lambda *a: note)
    assert build.needs_build() == why  # type: ignore[attr-defined]


def test_the_instrumented_note_reads_back(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("instrumented: an interrupted profile-guided build\n")
    assert native.profile(tmp_path / "note.txt").startswith("instrumented")


def test_sigterm_during_training_runs_the_builds_cleanup() -> None:
    """The default SIGTERM (or SIGHUP) would end the build before `finally: clean()`."""
    build = _build_script()
    before = signal.getsignal(signal.SIGTERM)
    stopped = build._stopped_by_signals  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt), stopped():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_training_run_that_overruns_takes_the_processes_it_started_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training script's proxies are its children: ending the script alone (what
    `subprocess.run(timeout=...)` does) left them running the instrumented group."""
    build = _build_script()
    (tmp_path / "scripts").mkdir()
    pidfile = tmp_path / "child.pid"
    (tmp_path / "scripts" / "native_training.py").write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n")
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build, "TRAINING", tmp_path / "scripts" / "native_training.py")
    monkeypatch.setattr(build, "TRAINING_TIMEOUT", 3.0)
    said = build.train()  # type: ignore[attr-defined]
    assert said == "no profile: the training run took over 3 s"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
