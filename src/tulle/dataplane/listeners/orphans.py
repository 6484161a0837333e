"""At a swap, the connections of a kept listener whose way in left the config are drained.

A listener kept across a swap (same socket, same driver) only gets a new context, and its
connections follow it at their next request (`RoutedConnection.follow_snapshot`).  A
connection whose filter chain or destination rule is gone has no way in under the new config:
PERMISSIVE -> STRICT takes the `plaintext` chain away, and the documented answer to a
plaintext client of a STRICT port is a closed connection.  Left to its next request, such a
connection stayed open: an idle HTTP/1 one until its idle timeout, then `404 no route` on every
request for as long as the client kept it alive (never `Connection: close`); an opaque relay for
as long as its stream lasted, still reaching the application (audit, ADR 0108).

So the swap drains them, after the grace a swapped-out listener's connections get
(`server.SWAP_DRAIN_GRACE`, 0.25 s: a request already on its way is answered by the new
config, `404 no route` with `Connection: close`, not cut off): an HTTP connection as a
stopping proxy drains it (idle:
closed now; busy: the response in flight says `Connection: close` and the connection closes
after it; HTTP/2: GOAWAY), an opaque relay is closed on both sides (FIN; close reason
`no_filter_chain`).  Connections whose way in is still there are untouched: requests in
flight finish on the snapshot they started with (decision 3 of DESIGN.md).

A listener whose driver changes is not kept but replaced (DISABLED -> STRICT gives it filter
chains): a new listener takes the socket over, and the old one's connections drain after the
same grace.  HTTP ones close after their response; an opaque relay has no request to end at.
Where the new listener takes only mTLS, a relay of a stream this proxy did not decrypt has no
way in under it and is closed the same way (`close_unadmitted_relays`).
"""

from __future__ import annotations

from tulle.dataplane.listeners.context import RoutedConnection
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.network.tcp_proxy import TcpProxy


def drain_orphans(handle: ListenerHandle, ctx: ListenerContext) -> int:
    """Drain the connections of `handle` that `ctx` (its context from now on) has no way in
    for; how many."""
    n = 0
    for conn in list(handle.connections):
        if isinstance(conn, RoutedConnection):
            if conn.routable(ctx):
                continue
            conn.start_drain()
        elif isinstance(conn, TcpProxy):
            key = conn.route_key
            if key is None or key in ctx.chains_by_name:
                continue
            conn.way_in_gone()
        else:
            continue
        n += 1
    return n


def takes_only_mtls(ctx: ListenerContext) -> bool:
    """Every way in terminates TLS (STRICT's one `mtls` chain, no default chain, no
    passthrough): a stream this proxy did not decrypt itself has none."""
    return (bool(ctx.chains) and ctx.default_chain is None and not ctx.cfg.passthrough
            and all(c.tls_ref is not None for c in ctx.chains))


def close_unadmitted_relays(old: ListenerHandle, successor: ListenerContext) -> int:
    """A replaced listener's opaque relays (DISABLED -> STRICT changes the listener's
    filter chains, so a new one takes the socket over and the old one's connections drain):
    an opaque stream has no request boundary to drain at, and ran on for as long as it lasted.
    Where the new listener takes only mTLS, one this proxy did not decrypt (plaintext, or TLS
    relayed as it came) has no way in, and is closed as above; how many."""
    if not takes_only_mtls(successor):
        return 0
    n = 0
    for conn in list(old.connections):
        if isinstance(conn, TcpProxy) and not conn.client_tls:
            conn.way_in_gone()
            n += 1
    return n


__all__ = ["close_unadmitted_relays", "drain_orphans", "takes_only_mtls"]
