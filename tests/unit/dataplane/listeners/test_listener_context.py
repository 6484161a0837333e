"""`DestinationRule`: a transparent listener's original-destination rules, as the
dispatcher compares them."""

from __future__ import annotations

import pytest

from tulle.dataplane.listeners.listener_context import DestinationRule
from tulle.proxyconfig.model import Destination


@pytest.mark.parametrize(("address", "ip", "port", "expected"), [
    ("10.96.0.0/12", "10.96.0.7", 80, True),
    ("10.96.0.0/12", "10.112.0.1", 80, False),
    # An IPv4-mapped destination is the IPv4 one it names (original destinations are IPv4):
    # written so, it once matched no connection at all.
    ("::ffff:10.96.0.0/108", "10.96.0.7", 80, True),
    ("::ffff:10.0.0.5", "10.0.0.5", 80, True),
    ("::ffff:10.0.0.5", "::ffff:10.0.0.5", 80, True),
    ("10.0.0.5", "::ffff:10.0.0.5", 80, True),
    ("fd00::/64", "fd00::7", 80, True),
    ("fd00::/64", "10.0.0.5", 80, False),
    ("", "192.0.2.1", 80, True),
    ("10.0.0.5", "10.0.0.5", 81, False),
    ("10.0.0.5", "not-an-ip", 80, False),
])
def test_a_rule_matches_by_network_and_port(address: str, ip: str, port: int,
                                            expected: bool) -> None:
    rule = DestinationRule.build(Destination(address=address, port=80, cluster="c"), {})
    assert rule.matches(ip, port) is expected
