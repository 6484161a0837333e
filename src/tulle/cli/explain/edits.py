"""What the caller's proxy does to the request before it leaves: the rule's (and the chosen
backend's) `URLRewrite` and `RequestHeaderModifier`, or a `RequestRedirect` answered in place.

The destination's proxy routes and authorizes what the caller's proxy sends, not what the
application wrote: a rewrite to `/items` meets a DENY on `/items` there, a header a backend's
filter sets meets a rule on that header.  So the trace runs those filters as the proxy does --
the chain the proxy picks for the backend (`Route.backend_chains`, else `Route.chain`: the
declared order), each filter's own `on_request_head` -- on a copy of the request, over a stream
that holds only the head and takes a local reply.  Only the filters that edit the request or
answer it from what it carries run here: the others (authorization, rate limits, faults,
mirrors, session persistence) keep state or reach out, and are read where they decide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from tulle.cli.explain.routing import copy_head
from tulle.dataplane.exchange import RequestHead

if TYPE_CHECKING:
    from tulle.dataplane.http.chain import Chain
    from tulle.dataplane.http.filter import FilterStream, ReplyHeaders
    from tulle.dataplane.routing.router import Route

EDITING = frozenset({"redirect", "rewrite", "headers"})
"""The chain positions whose filters run in the trace (`http/chain.py` ORDER)."""


class _HeadOnly:
    """The part of a `FilterStream` a request-editing filter uses: the head, and a reply."""

    __slots__ = ("head", "replied")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self.replied: tuple[int, ReplyHeaders] | None = None

    def reply(self, status: int, body: bytes, headers: ReplyHeaders = ()) -> None:
        self.replied = (status, headers)


def chain_for(route: Route, cluster: str | None) -> Chain | None:
    """The chain the proxy runs for a request of `route` sent to `cluster`."""
    chains = route.backend_chains
    return chains.get(cluster, route.chain) if chains is not None and cluster else route.chain


def sent(route: Route, cluster: str | None, head: RequestHead
         ) -> tuple[RequestHead, tuple[int, ReplyHeaders] | None]:
    """(the request as the caller's proxy sends it to `cluster`, the local reply it answers
    with instead: status and fields, or None).  `head` is left as it is."""
    out = copy_head(head)
    chain = chain_for(route, cluster)
    if chain is None:
        return out, None
    stream = _HeadOnly(out)
    for factory in chain.factories:
        if factory.name not in EDITING:
            continue
        factory.create().on_request_head(cast("FilterStream", stream))
        if stream.replied is not None:
            break
    return out, stream.replied


def changes(before: RequestHead, after: RequestHead) -> dict[str, Any] | None:
    """What the caller's filters changed, by name only (header values are never printed):
    `path`, `authority`, `headersSet` (added or given another value), `headersRemoved`;
    None when nothing changed."""
    out: dict[str, Any] = {}
    if after.path != before.path:
        out["path"] = after.path.decode("latin-1")
    if after.authority != before.authority:
        out["authority"] = after.authority.decode("latin-1")
    old: dict[bytes, list[bytes]] = {}
    for n, v in before.headers:
        old.setdefault(n, []).append(v)
    new: dict[bytes, list[bytes]] = {}
    for n, v in after.headers:
        new.setdefault(n, []).append(v)
    set_ = sorted(n.decode("latin-1") for n in new if old.get(n) != new[n])
    removed = sorted(n.decode("latin-1") for n in old if n not in new)
    if set_:
        out["headersSet"] = set_
    if removed:
        out["headersRemoved"] = removed
    return out or None


def location(replied: tuple[int, ReplyHeaders]) -> str | None:
    return next((v.decode("latin-1") for n, v in replied[1] if n == b"location"), None)
