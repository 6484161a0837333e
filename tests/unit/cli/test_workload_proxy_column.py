"""`tulle get workloads` says why a workload's endpoints are out (ADR 0040)."""

from __future__ import annotations

import time

from tulle.cli.get import _proxy_state


def test_the_proxy_column() -> None:
    assert _proxy_state(None) == "-"  # never had a proxy: selected as declared
    assert _proxy_state({"state": "Connected", "since": "2026-01-01T00:00:00Z"}) == "connected"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 12))  # noqa: TID251
    got = _proxy_state({"state": "Disconnected", "since": since,
                        "reason": "the proxy closed the stream"})
    assert got in (f"disconnected {n}s ago, out of endpoints: the proxy closed the stream"
                   for n in (12, 13))
    assert _proxy_state({"state": "Disconnected", "reason": "x"}) == (
        "disconnected, out of endpoints: x")


def test_a_draining_proxy_is_shown_draining_not_disconnected() -> None:
    # ADR 0092: still on its stream, out of the endpoints; the reason is the control plane's.
    assert _proxy_state({"state": "Disconnected",
                         "reason": "draining: the proxy is shutting down"}) == (
        "draining, out of endpoints: the proxy is shutting down")


def test_the_cli_reads_the_reason_the_control_plane_writes() -> None:
    from tulle.cli.proxy_state import DRAINING_REASON, draining
    from tulle.controlplane.push.session import DRAINING

    assert DRAINING_REASON == DRAINING
    assert draining({"state": "Disconnected", "reason": DRAINING})
    # After the stream ends the reason says how it ended: no longer draining.
    assert not draining({"state": "Disconnected",
                         "reason": "the proxy closed the stream (it was shutting down)"})
