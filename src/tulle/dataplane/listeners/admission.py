"""What a listener decides once, at accept, about who may connect and where to: asked again of
its open connections when a swap changes it (ADR 0127).

The accept step (`listeners/detect.py` `Deciding`) refuses a connection before a byte is
read for two conditions of the listener's own config:

* **a source** its `sources` do not list (`source_refused`): a node agent's pod listener lends
  that pod's identity to no other address (ADR 0098);
* **a destination** whose rule says `refuse` (`destination_refused`), on a transparent
  listener without filter chains: a meshed pod's undeclared port behind a node agent, never
  passed through (ADR 0114).

Checked at accept only, a change that narrows them left every connection already open running
under the admission it had: a pod whose address changed kept lending its identity to the old
address's open streams and keep-alive HTTP connections, a destination that became a meshed
pod's kept its passthrough relays (audit, ADR 0127).  So a swap that changes them asks every
open connection of the listener again (`readmit`), by the facts it opened with, and each
connection the new config would refuse is ended the way its kind ends (`Connection.
not_admitted`): a relay or an upgraded tunnel reset on both sides at once, an HTTP connection
closed when idle and otherwise drained after the request in flight, one still being detected
refused as at accept.  No grace, as for a relay the new authorization refuses (ADR 0117): a
refusal has nothing in flight that it is owed.

Equal conditions decide every connection alike, so a swap that keeps a listener's `sources`
and `destinations` looks at none of its connections; one that changes them costs a look per
open connection, at the swap, and nothing per request or byte.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Final

from tulle.proxyconfig.address import peer_host, peer_ip

if TYPE_CHECKING:
    import asyncio

    from tulle.dataplane.listeners.handle import ListenerHandle
    from tulle.dataplane.listeners.listener_context import ListenerContext

SOURCE_REFUSED: Final = "source_refused"
DESTINATION_REFUSED: Final = "destination_refused"


class Asked:
    """Which of a listener's admission conditions a swap changed: only those are asked again
    (`asked`)."""

    __slots__ = ("destinations", "sources")

    def __init__(self, sources: bool, destinations: bool) -> None:
        self.sources = sources
        self.destinations = destinations

    def __bool__(self) -> bool:
        return self.sources or self.destinations



def peer_address(transport: asyncio.BaseTransport) -> str:
    """The client's address as the accept step compares it ("" when the transport does not
    say): what a connection still in its accept step (detecting, in its TLS handshake)
    answers when a swap asks its admission again."""
    peer = transport.get_extra_info("peername")
    return peer_host(str(peer[0])) if isinstance(peer, tuple) and peer else ""

def asked(before: ListenerContext | None, after: ListenerContext) -> Asked:
    """What to ask the open connections of a listener whose context goes from `before` (None:
    unknown, a replaced listener's) to `after`: its sources when `after` has some and they
    changed, its destinations when `after` refuses one and they changed (first match wins, so
    any change may move a destination onto a refusing rule)."""
    cfg = after.cfg
    sources = bool(after.sources) and (before is None or before.cfg.sources != cfg.sources)
    destinations = (cfg.mode == "transparent" and not cfg.filter_chains
                    and (before is None or before.cfg.destinations != cfg.destinations)
                    and any(d.refuse for d in after.destinations))
    return Asked(sources, destinations)


def refusal(ctx: ListenerContext, what: Asked, peer: str,
            destination: tuple[str, int] | None) -> str:
    """Why `ctx` would refuse at accept a connection from `peer` (its address) to
    `destination` (a transparent connection's original destination; None otherwise), asking
    only `what`; "" when it would take it."""
    if what.sources:
        addr = peer_ip(peer)
        if addr is None or not any(addr in n for n in ctx.sources):
            return SOURCE_REFUSED
    if what.destinations and destination is not None:
        rule = ctx.destination_for(*destination)
        if rule is not None and rule.refuse:
            return DESTINATION_REFUSED
    return ""


def readmit(handle: ListenerHandle, ctx: ListenerContext,
            before: ListenerContext | None) -> Counter[str]:
    """At a swap: each open connection of `handle` that `ctx` (the listener's, or its
    successor's, context from now on) would refuse at accept is ended
    (`Connection.not_admitted`).  How many, by reason."""
    ended: Counter[str] = Counter()
    what = asked(before, ctx)
    if not what:
        return ended
    for conn in list(handle.connections):
        facts = conn.admission_facts()
        if facts is None:
            continue
        why = refusal(ctx, what, *facts)
        if why:
            conn.not_admitted(why)
            ended[why] += 1
    return ended


__all__ = ["DESTINATION_REFUSED", "SOURCE_REFUSED", "Asked", "asked", "readmit", "refusal"]
