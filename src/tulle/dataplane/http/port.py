"""The request stream's two sides towards its driver: the connection it runs on
(`StreamConn`) and the port a driver's subclass renders for its protocol (`StreamPort`).

Kept apart from `stream.py` so the protocol-neutral request path there reads on its own; what
a driver (`listeners/h1exchange.py`, `listeners/h2exchange.py`) must provide is declared here.
`StreamPort` is a base class with empty `__slots__`, not a wrapper: a driver's overrides are
found first, so the request path pays nothing for the split (ADR 0015: one object per request).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    import asyncio

    from tulle.dataplane.exchange import Headers, ResponseHead, TunnelStream
    from tulle.dataplane.http.facts import ConnectionFacts
    from tulle.dataplane.http.filter import ReplyHeaders
    from tulle.dataplane.listeners.handle import ListenerHandle
    from tulle.dataplane.listeners.listener_context import ListenerContext
    from tulle.dataplane.overload import OverloadGuard
    from tulle.dataplane.routing.router import Router


@mypyc_attr(allow_interpreted_subclasses=True)  # (tests' stand-in connections)
class StreamConn:
    """What a request stream reads of its connection, as the fields of a compiled class.

    Both drivers (`listeners.http1.H1Downstream`, `listeners.http2.H2Downstream`) derive from
    it first, then from `asyncio.Protocol` and `listeners.context.RoutedConnection`, which keeps
    the routing logic.  Typed as this class, the stream's reads of these fields on every
    request (`RequestStream.dispatch` had sixteen) are loads from the connection's struct; typed
    as a protocol, each was a generic attribute lookup by name (ADR 0075).  `follow_snapshot`
    stays `RoutedConnection`'s: the stream reaches it through `RoutedOwner`, on a snapshot swap.
    """

    handle: ListenerHandle
    guard: OverloadGuard
    ctx: ListenerContext
    router: Router | None
    cluster: str
    loop: asyncio.AbstractEventLoop
    route_key: tuple[str, int] | str | None
    """(`RoutedConnection`'s routing key, kept here with the rest of its state.)"""
    sni: str
    facts: ConnectionFacts
    write_paused: bool
    """The client is not taking more response now: a new upstream starts paused."""
    deadline: float
    deadline_kind: str
    """The connection's next deadline for the listener's sweeper; kind `request` when it is
    the earliest `due` of its requests (the sweeper then calls their `on_timeout`)."""
    refused: str
    """Why the listener's admission refused this connection after it was admitted (a swap's
    `RoutedConnection.not_admitted`, or a request's `follow_snapshot`: `listeners/admission.py`,
    ADRs 0127 and 0129), else "".  Never cleared: a refused connection is ending, and nothing
    it still carries is served by a later swap that admits its source again."""
    header_from: float
    """Loop time of the connection's first byte when detection read it before this driver
    took the connection (0: this driver read it): the first request head's time counts from
    then, so sniffing gives a slow client no time beyond the header timeout."""

    def set_deadline(self, kind: str) -> None:
        """Arm the connection's header (`header`) or keep-alive (`idle`) timeout; the listener's
        sweeper calls `on_deadline` when it passes (ADR 0004).  Compiled here, for both
        drivers: they call it on every keep-alive request."""
        ctx = self.ctx
        timeout = ctx.header_timeout if kind == "header" else ctx.idle_timeout
        self.deadline_kind = kind
        self.deadline = self.loop.time() + timeout if timeout > 0 else 0.0

    def set_first_header_deadline(self) -> None:
        """The header timeout of the connection's first request head: from its first byte
        (Envoy's `request_headers_timeout`), also when detection read that byte before this
        driver took the connection (`header_from`)."""
        self.set_deadline("header")
        first = self.header_from
        if first and self.deadline:
            self.deadline = min(self.deadline, first + self.ctx.header_timeout)


class RoutedOwner(Protocol):
    """The one call a stream makes on its connection's routing (`RoutedConnection`)."""

    def follow_snapshot(self) -> str:
        """Resolve the connection's routing key against the snapshot now in force; why that
        snapshot refuses the connection, or "" (`RoutedConnection.follow_snapshot`)."""


@mypyc_attr(allow_interpreted_subclasses=True)  # via RequestStream (ADR 0052)
class StreamPort:
    """What the stream sends towards the client and asks of the connection; a driver's subclass
    of `RequestStream` implements it for its protocol."""

    __slots__ = ()

    # -- the port: what a driver's subclass renders for its protocol -----------------------

    def send_head(self, head: ResponseHead, end: bool) -> None:
        raise NotImplementedError

    def send_data(self, data: bytes) -> None:
        raise NotImplementedError

    def end_response(self, trailers: Headers | None) -> None:
        """The response body is complete: write its end, then `complete`."""
        raise NotImplementedError

    def complete(self) -> None:
        """The response is complete: record it and let the connection go on."""
        raise NotImplementedError

    def send_local(self, status: int, body: bytes, headers: ReplyHeaders = ()) -> None:
        """Answer with a response of our own (nothing was sent yet) and complete; `headers`
        go with it (a filter's reply: a redirect's `location`)."""
        raise NotImplementedError

    def send_reset(self) -> None:
        """The response began and cannot be finished: abort it towards the client, record."""
        raise NotImplementedError

    def pause_request(self) -> None:
        """Stop taking request body from the client for now (the held body is full)."""

    def resume_request(self) -> None: ...

    def overloaded(self) -> None:
        """The proxy is overloaded: refuse this request (503, flag OL already set) and tell
        the client not to reuse the connection."""
        raise NotImplementedError

    def send_continue(self) -> None:
        """The upstream is open and the client waits for `100 Continue` to send its body."""

    # The parts of `ResponseSink` that differ per protocol.

    def on_informational(self, head: ResponseHead) -> None:
        raise NotImplementedError

    def on_read_end(self) -> None:
        raise NotImplementedError

    def on_upgraded(self, head: ResponseHead, stream: TunnelStream) -> None:
        raise NotImplementedError

    def pause_request_body(self) -> None:
        raise NotImplementedError

    def resume_request_body(self) -> None:
        raise NotImplementedError
