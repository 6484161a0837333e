"""`listeners/admission.py`: what a swap asks an open connection again, and the answer, with no
sockets (ADR 0127).  The wire: tests/integration/dataplane/test_open_connections_readmitted.py."""

from __future__ import annotations

from typing import Any

from tulle.dataplane.listeners.admission import (
    DESTINATION_REFUSED,
    SOURCE_REFUSED,
    asked,
    refusal,
)
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.proxyconfig import validate

POD = ("10.232.0.4", 9000)


def context(sources: list[str],
            destinations: list[dict[str, Any]] | None = None) -> ListenerContext:
    """A node agent's pod listener (transparent, passthrough)."""
    lc: dict[str, Any] = {"name": "pod", "port": 15001, "mode": "transparent",
                          "passthrough": True, "sources": sources,
                          "destinations": destinations or []}
    cfg = validate({"listeners": [lc], "clusters": [{"name": "c", "protocol": "tcp"}]})
    return ListenerContext(cfg.listeners[0], cfg.settings, {}, {}, ProxyMetrics())


def test_only_what_a_swap_changed_is_asked() -> None:
    a = context(["10.232.0.2"])
    assert not asked(a, context(["10.232.0.2"]))  # the same sources decide alike
    assert asked(a, context(["10.232.0.12"])).sources
    assert not asked(a, context([]))  # no sources: everyone, nothing to ask
    assert asked(None, context(["10.232.0.2"])).sources  # a replaced listener: unknown before
    refusing = [{"address": POD[0], "refuse": True}]
    assert asked(context([]), context([], refusing)).destinations
    assert not asked(context([], refusing), context([], refusing))
    assert not asked(None, context([])).destinations


def test_a_source_outside_the_new_sources_is_refused() -> None:
    before, after = context(["10.232.0.0/24"]), context(["10.232.0.12", "fd00::12"])
    what = asked(before, after)
    assert refusal(after, what, "10.232.0.2", None) == SOURCE_REFUSED
    assert refusal(after, what, "10.232.0.12", None) == ""
    assert refusal(after, what, "::ffff:10.232.0.12", None) == ""  # a dual-stack socket's
    assert refusal(after, what, "fd00::12", None) == ""
    assert refusal(after, what, "", None) == SOURCE_REFUSED  # unknown: never admitted


def test_a_destination_is_refused_by_the_rule_that_matches_it_first() -> None:
    declared = {"address": POD[0], "port": 8080, "cluster": "c"}
    after = context([], [declared, {"address": POD[0], "refuse": True}])
    what = asked(context([], [declared]), after)
    assert refusal(after, what, "10.232.0.2", POD) == DESTINATION_REFUSED
    assert refusal(after, what, "10.232.0.2", (POD[0], 8080)) == ""  # its declared port
    assert refusal(after, what, "10.232.0.2", ("10.232.0.9", 9000)) == ""  # passed through
    assert refusal(after, what, "10.232.0.2", None) == ""  # not a transparent connection's


def test_what_is_not_asked_is_not_refused() -> None:
    after = context(["10.232.0.12"], [{"address": POD[0], "refuse": True}])
    what = asked(context(["10.232.0.12"]), after)  # only the destinations changed
    assert not what.sources and what.destinations
    assert refusal(after, what, "10.232.0.2", ("10.0.0.1", 80)) == ""
