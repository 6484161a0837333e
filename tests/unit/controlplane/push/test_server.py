"""The stream's connection caps in force for a descriptor limit (`effective_caps`)."""

from __future__ import annotations

from tulle.controlplane.push.server import PushServer, SnapshotCache, effective_caps


def test_caps_are_held_to_shares_of_the_descriptor_limit() -> None:
    assert effective_caps(10_000, 256, 1024) == (512, 256)
    assert effective_caps(10_000, 256, 256) == (128, 64)
    assert effective_caps(100, 256, 0) == (100, 100)  # unlimited: as configured, pending <= all
    assert effective_caps(10_000, 256, 1 << 20) == (10_000, 256)


def test_zero_means_no_cap_of_its_own_but_the_share_still_holds() -> None:
    assert effective_caps(0, 0, 0) == (0, 0)
    assert effective_caps(0, 0, 1000) == (500, 250)
    assert effective_caps(50, 0, 1000) == (50, 50)


async def test_the_caps_follow_the_limit_and_counters_show_them() -> None:
    limit = [4096]
    push = PushServer(SnapshotCache(), fd_limit=lambda: limit[0])
    assert push.update_caps() == (2048, 256)
    limit[0] = 200
    assert push.update_caps() == (100, 50)
    c = push.counters()
    assert (c["maxConnections"], c["maxPendingHellos"], c["pendingHellos"]) == (100, 50, 0)
