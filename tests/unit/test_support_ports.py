"""The test support's port assignment: a multi-worker proxy's admin block never takes a port
already handed to one of the same config's listeners (a CI run's worker 1 once found its admin
port taken by the listener chosen a moment before, and never became ready)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support import subproc


def test_the_admin_block_skips_the_configs_own_listener_ports(
        monkeypatch: pytest.MonkeyPatch) -> None:
    picks: Iterator[int] = iter([27636, 27635, 27640])  # the listener's, a colliding base, a good one
    monkeypatch.setattr(subproc, "free_port", lambda: next(picks))
    cfg = subproc.assign_ports({"listeners": [{"name": "out", "port": 0}],
                                "settings": {"workers": 2}})
    assert cfg["listeners"][0]["port"] == 27636
    assert cfg["admin"]["port"] == 27640  # 27635 + 1 would have been the listener's port
