"""`controlplane/vips.py`: the virtual IPs each Service should hold, decided the same way on
every replica from what the store says."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest

from tulle.controlplane import vips


def svc(name: str, created: str, policy: str = "SingleStack", **status: str) -> dict[str, Any]:
    return {"kind": "Service",
            "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created},
            "spec": {"ipFamilyPolicy": policy}, "status": dict(status)}


def decided(*services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: st for obj, st in vips.statuses(services)}


def test_each_service_gets_one_and_a_dual_stack_one_two_and_a_single_stack_one_gives_v6_back(
        ) -> None:
    got = decided(svc("a", "1"), svc("b", "2", "RequireDualStack"),
                  svc("c", "3", virtualIP="240.240.0.9", virtualIPv6="fd74:756c:6c65:7669::9"))
    assert got == {"a": {"virtualIP": "240.240.0.1"},
                   "b": {"virtualIP": "240.240.0.2", "virtualIPv6": "fd74:756c:6c65:7669::1"},
                   "c": {"virtualIP": "240.240.0.9"}}
    settled = svc("d", "4", "PreferDualStack", virtualIP="240.240.0.3",
                  virtualIPv6="fd74:756c:6c65:7669::3")
    assert decided(settled) == {}  # nothing to write


def test_an_address_held_twice_stays_with_the_older_service_whatever_the_order_seen(
        caplog: pytest.LogCaptureFixture) -> None:
    older = svc("zeta", "2026-01-01T00:00:00Z", "PreferDualStack", virtualIP="240.240.0.1",
                virtualIPv6="fd74:756c:6c65:7669::1")
    younger = svc("alpha", "2026-01-02T00:00:00Z", "PreferDualStack", virtualIP="240.240.0.1",
                  virtualIPv6="fd74:756c:6c65:7669::1")
    for order in ((older, younger), (younger, older)):  # two replicas, two views
        assert decided(*order) == {"alpha": {"virtualIP": "240.240.0.2",
                                             "virtualIPv6": "fd74:756c:6c65:7669::2"}}
    assert "is also service shop/zeta's" in caplog.text


def test_a_used_up_range_leaves_that_service_without_one_and_decides_the_rest(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(vips, "VIP_RANGE6", ipaddress.ip_network("fd74::/127"))  # two
    caplog.set_level(logging.ERROR)
    got = decided(*(svc(n, str(i), "PreferDualStack") for i, n in enumerate("abc")))
    assert [bool(got[n].get("virtualIPv6")) for n in "abc"] == [True, True, False]
    assert all(got[n].get("virtualIP") for n in "abc")
    assert "no virtualIPv6 left to allocate" in caplog.text
