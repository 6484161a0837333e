"""Attack review A2 (ADR 0060): the demo's state directory has a predictable name
(`/tmp/tulle-demo-ns-<pid>`), so another user can put something there first."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tulle.demo.topology import DemoError, make_state_dir, remove_stale_state


def test_a_link_planted_in_the_state_dirs_place_is_removed_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.mkdir()
    (target / "keep").write_text("x")
    state = tmp_path / "tulle-demo-ns-1"
    state.symlink_to(target)
    # What the demo did before: the link survives rmtree, and mkdir then fails.
    shutil.rmtree(state, ignore_errors=True)
    with pytest.raises(FileExistsError):
        state.mkdir(mode=0o711)
    make_state_dir(state)
    st = state.lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) & 0o022 == 0
    assert (target / "keep").read_text() == "x"  # the link's target is untouched


def test_a_file_or_a_directory_in_its_place_is_replaced(tmp_path: Path) -> None:
    state = tmp_path / "tulle-demo-ns-2"
    state.write_text("planted")
    make_state_dir(state)
    assert state.is_dir() and not any(state.iterdir())
    (state / "planted.log").write_text("x")  # a directory someone made there, with a file
    os.chmod(state, 0o777)
    make_state_dir(state)
    assert not any(state.iterdir()) and stat.S_IMODE(state.stat().st_mode) & 0o022 == 0


def test_something_that_keeps_coming_back_is_a_clear_error(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "tulle-demo-ns-3"
    real_mkdir = Path.mkdir

    def racing_mkdir(self: Path, *a: object, **k: object) -> None:
        if self == state:
            state.write_text("raced in again")
            raise FileExistsError(str(state))
        real_mkdir(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    with pytest.raises(DemoError, match="cannot create the state directory"):
        make_state_dir(state)


def test_stale_state_skips_links(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "tulle-demo-ns-999999999").symlink_to(victim)
    assert remove_stale_state(tmp_path) == []
    assert victim.is_dir()
