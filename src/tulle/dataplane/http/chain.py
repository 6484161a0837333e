"""The declared order of HTTP filters, and running a route's filters over one request.

The order is written once, here, with the reason for each position (DESIGN.md section 4).  A
route's filters run in this order whatever order its config lists them in; filters at the same
position keep their config order.  Request hooks run first to last; response hooks run last to
first (the filter nearest the router sees the response first), as Envoy's encoder filters do.

A route with no filters has no `Chain` at all (`build_chain` returns None): the drivers test one
attribute and take the path they took before filters existed, with no per-request object.

A route with filters gets one `Chain` per snapshot (its factories, built once); each request
gets one `ChainRun` that holds the per-request filters and where the request is in them.  The
request stream (`http/stream.py`) is the run's `ChainPort`: it opens the upstream when the
request head has passed every filter (`filters_continue`, called only after a STOP was resumed
— a synchronous pass returns True instead), lets a stopped response head go on
(`response_continue`) and renders local replies (`filter_reply`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from tulle.dataplane.http.filter import (
    BUFFER,
    CONTINUE,
    STOP,
    FilterFactory,
    HttpFilter,
    ReplyHeaders,
    RequestRecord,
)

if TYPE_CHECKING:
    from tulle.dataplane.exchange import RequestHead, ResponseHead
    from tulle.dataplane.http.facts import ConnectionFacts
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.dataplane.upstream.lb import EndpointState

log = logging.getLogger("tulle.proxy")

ORDER: tuple[tuple[str, str], ...] = (
    ("authz", "first: a request that may not pass must cost nothing further and leak nothing "
              "to the filters after it (no rate-limit token, no fault, no mirror)"),
    ("rate_limit", "after authz, so refused callers do not spend the budget of allowed ones; "
                   "before anything that does work for the request"),
    ("fault", "injected delays and aborts stand in for the upstream, so they come after the "
              "admission checks and before anything that changes the request"),
    ("redirect", "answers locally; before rewrite and headers, which would edit a request that "
                 "never goes upstream"),
    ("rewrite", "changes the path and authority the upstream sees; before headers so header "
                "edits see the final request"),
    ("headers", "request and response header modifiers: the last edit of the request and the "
                "first of the response"),
    ("mirror", "copies the request exactly as the upstream will receive it, so after every "
               "edit"),
    ("session", "session persistence prefers an endpoint for the router: last, next to the "
                "router, so no filter after it can stop or answer a request it pinned; the "
                "first to see the response, which reaches it with the endpoint that answered"),
)
"""Every position of the chain, first to last; the router is the terminal after `session`.
`redirect`, `rewrite`, `headers` and `mirror` have filters (`dataplane/filters/`); the other
names reserve their place."""

POSITION = {name: i for i, (name, _) in enumerate(ORDER)}

DEFAULT_BUFFER_LIMIT = 1_048_576
"""Bytes a data hook may hold with BUFFER before the request is answered locally."""


HeaderListEdit = Callable[[list[tuple[bytes, bytes]]], None]
"""An edit of a head's header list in place (`filters/headers.py` `HeaderEdit.apply`)."""


class ChainPort(RequestRecord, Protocol):
    """What the request stream does for the chain (`stream.RequestStream` implements it); it
    is also the request's record the observers read."""

    @property
    def facts(self) -> ConnectionFacts: ...

    def filters_continue(self) -> None:
        """The request head passed every filter after a STOP: open the upstream now."""

    def response_continue(self) -> None:
        """The response head passed every filter after a STOP: send it and what waited."""

    def filter_reply(self, status: int, body: bytes, headers: ReplyHeaders = ()) -> None:
        """Answer the request locally (dropping an upstream stream if one is open)."""

    bodiless: bool

    def upstream_cluster(self, name: str) -> ClusterRuntime | None:
        """A cluster of the snapshot the request runs on (`FilterStream.cluster`)."""

    def prefer_endpoint(self, cluster: str, endpoint: EndpointState) -> None:
        """Pin the request's first try (`FilterStream.prefer_endpoint`)."""


class ErrorCounter(Protocol):
    """Where a failing filter is counted (the listener context), and what filters count."""

    def filter_error(self, name: str) -> None: ...

    def authz_decision(self, policy: str, action: str, result: str) -> None:
        """One authorization decision (`filters/authz.py`)."""

    def fault_injected(self, policy: str, fault: str) -> None:
        """One injected fault, `abort` or `delay` (`filters/fault.py`)."""

    def rate_limited(self, policy: str, scope: str) -> None:
        """One request refused by a rate limit, `local` or `global` (`filters/ratelimit.py`)."""

    def rate_limit_backend_failure(self, policy: str) -> None:
        """Redis did not answer a global limit's check in time (`filters/ratelimit.py`)."""


def _overrides(cls: type[HttpFilter], hook: str) -> bool:
    return getattr(cls, hook) is not getattr(HttpFilter, hook)


class Chain:
    """A route's filters for one snapshot: factories in the declared order, and for each hook
    the positions whose filter implements it (a hook left at the default is never called)."""

    __slots__ = ("buffer_limit", "edits_only", "factories", "logged", "observers",
                 "request_datas", "request_edits", "request_heads", "response_datas",
                 "response_edits", "response_heads", "shared")

    def __init__(self, factories: Sequence[FilterFactory],
                 buffer_limit: int = DEFAULT_BUFFER_LIMIT) -> None:
        # sorted() is stable: filters at one position keep their config order.
        self.factories = tuple(sorted(factories, key=lambda f: POSITION[f.name]))
        self.buffer_limit = buffer_limit
        self.logged = False
        """A failing filter is logged once per chain (per route per snapshot), counted always."""
        kinds = [f.filter_type for f in self.factories]
        n = len(kinds)
        self.request_heads = tuple(i for i in range(n) if _overrides(kinds[i], "on_request_head"))
        self.response_heads = tuple(i for i in range(n - 1, -1, -1)
                                    if _overrides(kinds[i], "on_response_head"))
        self.request_datas = tuple(i for i in range(n)
                                   if _overrides(kinds[i], "on_request_data"))
        self.response_datas = tuple(i for i in range(n - 1, -1, -1)
                                    if _overrides(kinds[i], "on_response_data"))
        self.observers = tuple(i for i in range(n) if _overrides(kinds[i], "on_done"))
        self.shared: tuple[HttpFilter, ...] | None = None
        """When every filter is stateless: the instances all requests share (no allocation)."""
        if all(f.stateless for f in self.factories):
            self.shared = tuple(f.create() for f in self.factories)
        req: list[HeaderListEdit | None] = [getattr(f, "request_edit", None)
                                            for f in self.factories]
        resp: list[HeaderListEdit | None] = [getattr(f, "response_edit", None)
                                             for f in self.factories]
        self.edits_only = all(a is not None or b is not None for a, b in zip(req, resp,
                                                                             strict=True))
        """Every filter is a pure header-list edit (a header modifier: never stops, replies,
        buffers or observes): the request stream applies `request_edits` to the request head
        and `response_edits` to the response head itself, with no `ChainRun` per request.
        The order is the chain's: requests first to last, responses last to first."""
        self.request_edits: tuple[HeaderListEdit, ...] = tuple(e for e in req if e is not None)
        self.response_edits: tuple[HeaderListEdit, ...] = tuple(
            e for e in reversed(resp) if e is not None)


class ChainRun:
    """One request's pass through a chain (`FilterStream` for its filters)."""

    __slots__ = ("_buf", "_in_hook", "_reply", "answered", "chain", "errors", "filters",
                 "finished", "head", "index", "port", "response", "stopped")

    def __init__(self, chain: Chain, head: RequestHead, port: ChainPort,
                 errors: ErrorCounter) -> None:
        self.chain = chain
        self.head = head
        self.port = port
        self.errors = errors
        shared = chain.shared
        self.filters: tuple[HttpFilter, ...] = (
            shared if shared is not None else tuple([f.create() for f in chain.factories]))
        self.index = 0
        self.stopped = False
        self.answered = False
        self.finished = False
        self._in_hook = False
        self._reply: tuple[int, bytes, ReplyHeaders] | None = None
        self._buf: _Buffer | None = None
        """What a data hook that returned BUFFER holds (made on the first data hook)."""
        self.response: ResponseHead | None = None
        """The response head while a response-head hook holds it stopped."""

    @property
    def facts(self) -> ConnectionFacts:
        """The connection the request came on (peer, TLS, identity, original destination)."""
        return self.port.facts

    @property
    def record(self) -> RequestRecord:
        """The request's record (the stream itself): complete when `on_done` runs."""
        return self.port

    @property
    def counters(self) -> ErrorCounter:
        """The listener's counters."""
        return self.errors

    # -- FilterStream ---------------------------------------------------------------------

    def reply(self, status: int, body: bytes, headers: ReplyHeaders = ()) -> None:
        if self.answered or self.finished:
            return
        self.answered = True
        if self._in_hook:
            self._reply = (status, body, headers)  # rendered when the hook returns
        elif headers:
            self.port.filter_reply(status, body, headers)
        else:
            self.port.filter_reply(status, body)

    @property
    def bodiless(self) -> bool:
        return self.port.bodiless

    def cluster(self, name: str) -> ClusterRuntime | None:
        return self.port.upstream_cluster(name)

    def prefer_endpoint(self, cluster: str, endpoint: EndpointState) -> None:
        self.port.prefer_endpoint(cluster, endpoint)

    def resume(self) -> None:
        if not self.stopped or self.answered or self.finished:
            return
        self.stopped = False
        head = self.response
        if head is not None:
            self.response = None
            if self.response_head(head, self.index + 1):
                self.port.response_continue()
        elif self.request_head(self.index + 1):
            self.port.filters_continue()

    # -- driver side ----------------------------------------------------------------------

    def request_head(self, start: int = 0) -> bool:
        """Run the request-head hooks (from the `start`-th that has one).  True: go on now.
        False: answered (the port's `filter_reply` was called) or stopped (`filters_continue`
        follows on resume)."""
        return self._heads(self.chain.request_heads, start,
                           lambda f: f.on_request_head(self), "on_request_head", None)

    def response_head(self, head: ResponseHead, start: int = 0) -> bool:
        """Run the response-head hooks (last filter first, from the `start`-th that has one).
        True: go on now.  False: answered, or stopped (`response_continue` follows on
        resume)."""
        return self._heads(self.chain.response_heads, start,
                           lambda f: f.on_response_head(self, head), "on_response_head", head)

    def _heads(self, order: tuple[int, ...], start: int, hook: Callable[[HttpFilter], int],
               name: str, held: ResponseHead | None) -> bool:
        """The head hooks of `order` (from the `start`-th): the one loop behind `request_head`
        and `response_head`.  A STOP keeps `held` (the response head; None for the request's)
        until `resume`."""
        filters = self.filters
        for i in order[start:] if start else order:
            self._in_hook = True
            try:
                r = hook(filters[i])
            except Exception as exc:
                self._in_hook = False
                self._failed(i, exc)
                return False
            self._in_hook = False
            if self.answered:
                self._answer()
                return False
            if r == STOP:
                self.index = order.index(i)
                self.stopped = True
                self.response = held
                return False
            if r != CONTINUE:
                self._failed(i, ValueError(f"{name} returned {r}"))
                return False
        return True

    def request_data(self, data: bytes, end: bool) -> bytes | None:
        """Run the request-data hooks: the bytes to send upstream now, or None (held)."""
        return self._data(data, end, self.chain.request_datas, 413)

    def response_data(self, data: bytes, end: bool) -> bytes | None:
        """Run the response-data hooks (last filter first): bytes for the client, or None."""
        return self._data(data, end, self.chain.response_datas, 500)

    def done(self) -> None:
        """The request ended (any way): observers' `on_done`, once; later resumes do nothing."""
        if self.finished:
            return
        self.finished = True
        for i in self.chain.observers:
            try:
                self.filters[i].on_done(self)
            except Exception as exc:
                self._count(i, exc)

    # -- internals ------------------------------------------------------------------------

    def _data(self, data: bytes, end: bool, order: tuple[int, ...],
              too_big: int) -> bytes | None:
        """Data through the hooks in `order`.  A hook that returned BUFFER is called again
        with everything held so far plus the new chunk, until it lets the bytes go on."""
        filters = self.filters
        buf = self._buf
        if buf is None:
            buf = self._buf = _Buffer()
        for i in order:
            if i == buf.at:
                buf.chunks.append(data)
                buf.size += len(data)
                if buf.size > self.chain.buffer_limit:
                    buf.clear()
                    self.reply(too_big, b"filter buffer limit exceeded\n")
                    return None
                data = b"".join(buf.chunks) if len(buf.chunks) > 1 else data
            self._in_hook = True
            try:
                f = filters[i]
                r = (f.on_request_data(self, data, end) if too_big == 413
                     else f.on_response_data(self, data, end))
            except Exception as exc:
                self._in_hook = False
                self._failed(i, exc)
                return None
            self._in_hook = False
            if self._answer():
                return None
            if r == BUFFER and not end:
                if buf.at != i:
                    buf.at = i
                    buf.chunks = [data]
                    buf.size = len(data)
                return None
            if i == buf.at:
                buf.clear()
            if r not in (CONTINUE, BUFFER):
                self._failed(i, ValueError(f"data hook returned {r}: STOP is for heads"))
                return None
        return data

    def _answer(self) -> bool:
        """After a hook: render a reply it made.  True when the request was answered."""
        if not self.answered:
            return False
        reply = self._reply
        if reply is not None:
            self._reply = None
            if reply[2]:
                self.port.filter_reply(*reply)
            else:
                self.port.filter_reply(reply[0], reply[1])
        return True

    def _count(self, i: int, exc: Exception) -> None:
        name = self.chain.factories[i].name
        self.errors.filter_error(name)
        if not self.chain.logged:
            self.chain.logged = True
            log.warning("filter %s failed (logged once per route and snapshot; counted in "
                        "tulle_proxy_filter_errors_total)", name, exc_info=exc)

    def _failed(self, i: int, exc: Exception) -> None:
        """A filter raised (or broke the contract): count it and answer 500."""
        self._count(i, exc)
        pending = self._reply is not None  # it replied, then raised: the 500 wins
        self._reply = None
        if pending or not (self.answered or self.finished):
            self.answered = True
            self.port.filter_reply(500, b"filter error\n")


class _Buffer:
    """Chunks held for the data hook at position `at` (-1: none), `size` bytes in all."""

    __slots__ = ("at", "chunks", "size")

    def __init__(self) -> None:
        self.at = -1
        self.chunks: list[bytes] = []
        self.size = 0

    def clear(self) -> None:
        self.at = -1
        self.chunks = []
        self.size = 0


def build_chain(factories: Sequence[FilterFactory],
                buffer_limit: int = DEFAULT_BUFFER_LIMIT) -> Chain | None:
    """The chain of a route, or None when it has no filters (then it pays nothing)."""
    return Chain(factories, buffer_limit) if factories else None
