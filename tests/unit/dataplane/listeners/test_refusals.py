"""The refusal log: the first refusal of a listener at once, then at most one line every
`EVERY_S` carrying how many were left out since; listeners counted apart."""

from __future__ import annotations

import logging

import pytest

from tulle.dataplane.listeners.refusals import EVERY_S, RefusalLog


def test_a_flood_of_refusals_makes_one_line_per_period_with_the_count(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tulle.proxy")
    log = RefusalLog()
    log.no_destination("outbound", "10.231.0.10", 15681, now=100.0)
    for i in range(1000):  # a client opening refused connections as fast as it can
        log.no_destination("outbound", "10.231.0.11", 80, now=100.0 + i * 0.001)
    log.no_destination("inbound-other", "10.0.0.1", 1, now=101.0)  # its own listener
    log.no_destination("outbound", "10.231.0.12", 443, now=100.0 + EVERY_S)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0] == ("listener outbound: refused an outbound connection to 10.231.0.10:15681: "
                        "no mesh Service or endpoint has that address and port, and the mesh's "
                        "outbound policy is REGISTRY_ONLY (Mesh.spec.outboundTrafficPolicy.mode)")
    assert lines[1].startswith("listener inbound-other: refused an outbound connection to "
                               "10.0.0.1:1")
    assert lines[2].startswith("listener outbound: refused an outbound connection to "
                               "10.231.0.12:443")
    assert lines[2].endswith("(1000 more since the last line)")  # the 1,000 not logged
