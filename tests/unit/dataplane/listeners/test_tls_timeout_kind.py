"""A handshake that failed when its timeout fired is counted as `tls_handshake_timeout` even
when libuv's millisecond timer fired a fraction of a millisecond before the loop's clock
reached the timeout (seen in CI: 300 ms measured as 299.9)."""

from __future__ import annotations

import pytest

from tulle.dataplane.listeners.tls import handshake_timed_out


@pytest.mark.parametrize(("elapsed", "ms", "timed_out"), [
    (0.2999, 300, True), (0.300, 300, True), (1.2, 300, True),
    (0.297, 300, False), (0.01, 300, False), (5.0, 0, False),
])
def test_the_clock_says_timeout_within_the_timers_resolution(
        elapsed: float, ms: int, timed_out: bool) -> None:
    assert handshake_timed_out(elapsed, ms) is timed_out
