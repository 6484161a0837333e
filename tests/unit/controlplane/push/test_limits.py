"""The stream's budget of new refusal lines: a peer that invents a workload name per hello
gets at most `n` lines per interval."""

from __future__ import annotations

import pytest

from tulle.controlplane.push import limits
from tulle.controlplane.push.limits import _Budget


async def test_the_budget_refills_each_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = _Budget(2)
    assert [budget.take() for _ in range(3)] == [True, True, False]
    monkeypatch.setattr(limits, "REFUSAL_LOG_INTERVAL", 0.0)  # the interval has passed
    assert budget.take()
