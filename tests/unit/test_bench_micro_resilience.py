"""`bench.micro_resilience` measures what it says: the resilience case balances over both
endpoints with the retry policy and limits of the resilience row, the plain case does not,
and every request is answered whole on a reused upstream connection."""

from __future__ import annotations

import asyncio

from bench.micro_http1 import BODY
from bench.micro_resilience import Rig, _config, _run, balancers
from bench.resilience_peers import LIMITS


def test_the_resilience_rig_is_the_rows_config_and_uses_both_endpoints() -> None:
    async def main() -> Rig:
        rig = Rig(True)
        for _ in range(200):
            rig.one()
        await asyncio.sleep(0)
        return rig

    rig = asyncio.run(main())
    assert len(rig.ups) == 2 and min(rig.served) > 0 and sum(rig.served) == 200
    # 200 responses held to the turn's end leave in a few writes of up to 32 KiB (ADR 0065)
    assert 200 * 1024 // (32 * 1024) <= rig.down_t.writes < 200
    assert rig.down_t.take().endswith(b"\r\n\r\n" + BODY)
    assert all(pool.idle == [up] for pool, (_, up) in zip(rig.pools, rig.ups, strict=True))


def test_the_resilience_case_is_the_rows_config() -> None:
    raw = _config(True)
    assert raw["clusters"][0]["lb_policy"] == "peak_ewma"  # type: ignore[index]
    assert raw["clusters"][0]["limits"] == LIMITS  # type: ignore[index]
    plain = _config(False)
    assert "limits" not in plain["clusters"][0]  # type: ignore[index]
    assert "retry" not in plain["route_tables"][0]["virtual_hosts"][0]["rules"][0]  # type: ignore[index]


def test_both_cases_run_and_report_a_time() -> None:
    for resilience in (False, True):
        runs = asyncio.run(_run(resilience, 300, 1, None))
        assert len(runs) == 1 and runs[0] > 0


def test_the_balancers_are_timed_each() -> None:
    got = balancers(1, n=200)
    assert set(got) == {"peak_ewma", "ring_hash", "maglev"}
    assert all(len(v) == 1 and v[0] > 0 for v in got.values())
