"""Issue 10's scenario through real proxies and a real redis-server: a global limit of N/s
across two proxies admits N/s ± 10% in total; Redis stopped mid-run, the fail-open route keeps
serving and the fail-closed one answers 429."""

from __future__ import annotations

import pytest
from bench.global_limit import global_limit_run
from tests.support.redis import available


@pytest.mark.skipif(not available(), reason="redis-server is not installed "
                    "(scripts/install-system-deps.sh test)")
async def test_two_proxies_share_one_global_limit_and_redis_going_away_follows_the_mode() -> None:
    run = await global_limit_run(limit_per_s=100, window_ms=200, offered_per_s=200.0,
                                 duration=3.0, after_stop=0.5, timeout_ms=25)
    assert run.offered >= 500  # the load really was twice the limit
    assert run.error_ratio <= 0.10, run
    assert set(run.open_after_stop) == {200} and sum(run.open_after_stop.values()) >= 40, run
    assert set(run.closed_after_stop) == {429} and sum(run.closed_after_stop.values()) >= 40, run
