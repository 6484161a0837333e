"""HTTP/2 upstream pools: the multiplexed connections to one endpoint, and the streams that wait
for room on them (split from `http2.py`, which has the stream and the connection).

Assignment: a new stream goes on the first connection with room; when none has room it waits
in `waiting` (bounded by the cluster's `max_pending_requests`) and connections are dialled for
the waiting streams, one per `max_concurrent_streams` of them, while the cluster is under
`max_connections` (a pool with no connection at all still dials one).  Waiting streams are
assigned from the loop (`kick`), never from inside another connection's event handling.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from tulle.dataplane.exchange import (
    RequestHead,
    ResponseSink,
    connect_failure,
    upstream_protocol_error,
)
from tulle.dataplane.upstream.connect import ConnectFailed, dial_transport
from tulle.dataplane.upstream.http2 import H2UpConnection, H2UpStream

if TYPE_CHECKING:
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.dataplane.upstream.lb import EndpointState


class H2Pool:
    """Multiplexed HTTP/2 connections to one endpoint of one cluster."""

    def __init__(self, cluster: ClusterRuntime, endpoint: EndpointState) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.limits = cluster.limits
        """The cluster's counters (the same object for every runtime of this cluster name)."""
        self.conns: list[H2UpConnection] = []
        """Connections that take new streams."""
        self.all: set[H2UpConnection] = set()
        """Every open connection, including those winding down after GOAWAY."""
        self.waiting: deque[H2UpStream] = deque()
        """Streams waiting for a connection with room (pending requests), oldest first."""
        self._connecting: set[asyncio.Task[bool]] = set()
        self._kick: asyncio.Handle | None = None
        self.closed = False

    def open_stream(self, head: RequestHead, sink: ResponseSink,
                    end_stream: bool) -> H2UpStream:
        """A stream on a connection with room, or waiting for one (raises the 503 UO
        `UpstreamError` when the cluster's pending requests are at their limit)."""
        conn = None if self.waiting else self._free()
        if conn is None:
            limits = self.limits
            if limits.pending >= limits.max_pending:
                raise limits.overflow("pending")
        s = H2UpStream(self, head, sink, end_stream)
        if conn is not None:  # room now: straight onto it, as `_assign` would put it
            if not conn.start(s):
                self.cluster.loop.call_soon(
                    s._failed,
                    upstream_protocol_error("request head not accepted by HTTP/2 upstream"))
            return s
        self.limits.pending += 1
        self.waiting.append(s)
        self._assign()
        return s

    def adopt(self, s: H2UpStream) -> None:
        """Take a stream another pool could not send (a replay, `Attempt._rehome`); it waits
        for a connection, assigned from the loop (not from inside the connection event that
        failed it).  Raises 503 UO past the pending limit."""
        limits = self.limits
        if limits.pending >= limits.max_pending:
            raise limits.overflow("pending")
        limits.pending += 1
        self.waiting.append(s)
        self.kick()

    def unwait(self, s: H2UpStream) -> None:
        """A waiting stream was reset."""
        try:
            self.waiting.remove(s)
        except ValueError:
            return
        self.limits.pending -= 1

    def _free(self) -> H2UpConnection | None:
        """The first connection with room for a stream."""
        for c in self.conns:
            if c.capacity > 0:
                return c
        return None

    def _next(self) -> H2UpStream:
        self.limits.pending -= 1
        return self.waiting.popleft()

    def kick(self) -> None:
        """Assign waiting streams soon (not from inside another connection's event loop)."""
        if self.waiting and self._kick is None:
            self._kick = self.cluster.loop.call_soon(self._assign)

    def _assign(self) -> None:
        self._kick = None
        waiting = self.waiting
        while waiting:
            conn = self._free()
            if conn is None:
                break
            s = self._next()
            if not conn.start(s):
                self.cluster.loop.call_soon(
                    s._failed,
                    upstream_protocol_error("request head not accepted by HTTP/2 upstream"))
        if waiting:
            per_conn = self.cluster.max_concurrent_streams
            needed = -(-len(waiting) // per_conn) - len(self._connecting)
            limits = self.limits
            for _ in range(needed):
                if not (limits.can_connect() or not (self.all or self._connecting)):
                    break
                limits.connections += 1
                task = asyncio.get_running_loop().create_task(self._connect())
                self._connecting.add(task)
                task.add_done_callback(self._dial_done)

    def _dial_done(self, task: asyncio.Task[bool]) -> None:
        self._connecting.discard(task)
        if task.cancelled() or not task.result():
            self.limits.connections -= 1  # else the connection's loss will
        if self.waiting:
            # Streams that came while this finished dial still counted in `_connecting`
            # found enough dials in flight; they need one now (as the HTTP/1 pool).
            self._assign()

    async def _connect(self) -> bool:
        """Dial a connection for waiting streams; True when a transport was made (its loss
        then gives its place under the connection limit back)."""
        cluster = self.cluster
        ep = self.endpoint
        try:
            transport, conn = await dial_transport(
                lambda: H2UpConnection(self), ep.address, ep.port, cluster.connect_timeout,
                ssl_context=cluster.ssl_context, server_name=cluster.sni or None,
                peer_check=cluster.peer_check)
        except ConnectFailed as exc:
            self._connect_failed(exc.what)
            return False
        if cluster.ssl_context is not None:
            # Dialled, but not a connection this pool can use: still a failed connect for the
            # streams that waited for it.
            obj = transport.get_extra_info("ssl_object")
            if obj is None or obj.selected_alpn_protocol() != "h2":
                transport.abort()
                self._connect_failed("upstream did not negotiate ALPN h2")
                return True
        if self.closed and not self.waiting:
            conn.close_gracefully()
            return True
        self.conns.append(conn)
        self.all.add(conn)
        self._assign()
        return True

    def _connect_failed(self, what: str) -> None:
        cluster = self.cluster
        cluster.m_connect_failures.value += 1
        error = connect_failure(f"cannot connect to {self.endpoint.key} ({cluster.name}): {what}")
        # This attempt was for up to one connection's worth of the waiting streams.
        take = len(self.waiting) if len(self._connecting) <= 1 else \
            cluster.max_concurrent_streams
        for _ in range(min(take, len(self.waiting))):
            self._next()._failed(error)

    def forget(self, conn: H2UpConnection, closed: bool = False) -> None:
        """`conn` takes no new streams (GOAWAY), or is gone (`closed`)."""
        if closed:
            self.all.discard(conn)
            self.kick()  # its place under the connection limit is free
        try:
            self.conns.remove(conn)
        except ValueError:
            pass

    def sweep(self, now: float, idle_timeout: float) -> None:
        """Close connections without streams idle longer than `idle_timeout` seconds."""
        if idle_timeout <= 0:
            return
        for conn in [c for c in self.conns if not c.streams and now - c.idle_since > idle_timeout]:
            self.forget(conn)
            conn.close_gracefully()

    def close(self) -> None:
        """Stop taking streams: idle connections close now, busy ones after their last stream."""
        self.closed = True
        for conn in list(self.conns):
            if not conn.streams:
                self.forget(conn)
                conn.close_gracefully()

    def abort(self) -> None:
        self.closed = True
        for conn in list(self.all):
            conn._close()
        self.conns.clear()
        for task in list(self._connecting):
            task.cancel()

    @property
    def active(self) -> int:
        return len(self.conns)
