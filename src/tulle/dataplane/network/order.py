"""The order of the network (L4) filter chain, declared once, with the reason for each place.

A listener's `network_filters` run in this order whatever order the config lists them in
(several of one type keep their config order among themselves); the TCP proxy is always the
terminal.  Places marked "reserved" have no filter yet: they say where one goes when it comes.

    source_ip -> authz -> connection_limit -> rate_limit -> tcp_proxy;  flow_log sees only
    close
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Final

from tulle.dataplane.network.filter import NetworkFilterFactory

ORDER: Final[tuple[tuple[str, str], ...]] = (
    ("source_ip",
     "Authorization first: a refused peer costs nothing after it — no slot in a connection "
     "limit, no rate budget, no upstream dial — and cannot exhaust what authorised peers share."),
    ("authz",
     "Authorization policies (ADR 0031), right after source_ip and for the same reason: a "
     "refused peer holds no connection slot and spends no budget."),
    ("connection_limit",
     "Concurrent connections, after authorization for the reason above; before the "
     "rate limit so a connection refused for concurrency spends no rate budget."),
    ("rate_limit",
     "New connections per interval: last of the deciders, so only connections that "
     "would otherwise be relayed spend tokens."),
    ("flow_log",
     "Observer: sees only close, for every connection including the rejected ones, after the "
     "deciders, so its record holds the verdict of the whole chain."),
)
TERMINAL: Final = "tcp_proxy"
"""The chain's end: dial the upstream (one dialler, `upstream/connect.py`) and relay."""

POSITION: Final = {name: i for i, (name, _) in enumerate(ORDER)}

def builder(tag: str) -> Callable[[Any], NetworkFilterFactory]:
    """The factory builder of config type `tag`: `build` of `tulle.dataplane.network.<tag>`,
    imported the first time a listener uses that filter (a proxy pays in memory only for the
    filters its config names, ADR 0068)."""
    if tag not in POSITION:
        raise KeyError(tag)
    build: Callable[[Any], NetworkFilterFactory] = importlib.import_module(
        f"tulle.dataplane.network.{tag}").build
    return build
