"""At a swap, the open connections of a listener the swap touched follow the config in force.

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

An opaque relay has no next request at which a new decision could reach it, so it is looked
at by the swap itself (ADR 0117), by the same rules a new connection like it meets:

* **Authorization, at the swap** (`recheck_relays`).  Where the way in it has under the new
  config carries other policy filters (`authz`, `source_ip`) than those that admitted it, the
  relay is decided again by them on its facts (peer identity, address, port); a relay they
  refuse is reset on both sides (close reason `revoked`), counted as a refusal at open is.
  No grace: a denial has no exchange in flight to let finish, and from this instant new
  connections of that caller are refused.
* **A way in, after the grace** (`drain_orphans`, `close_unadmitted_relays`): its filter
  chain, or for a relay of a replaced listener (a new listener took the socket over: DISABLED
  -> STRICT gives it filter chains) the chain its successor would choose for such a stream,
  and that way must still relay opaque streams (not only HTTP, a target to relay to).
  Otherwise: FIN on both sides, `no_filter_chain`.
* **A removed listener's relays** (a workload port deleted) are closed after the grace
  (`close_removed_relays`, FIN, `listener_removed`), as its HTTP connections drain then.

On a transparent listener without filter chains the way in is the original destination's
rule: a relay whose destination has none any more while nothing is passed through (ALLOW_ANY
-> REGISTRY_ONLY) is closed after the grace as well, with the reason a new connection to it
is refused for, `no_destination` (ADR 0127).  What the listener refuses outright -- a source
its `sources` no longer list, a destination whose rule now says `refuse` -- is decided at the
swap itself, for every kind of connection (`listeners/admission.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tulle.dataplane.listeners.chains import ChainRule, routes_http, select
from tulle.dataplane.listeners.context import RoutedConnection
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.network.chain import policy_key
from tulle.dataplane.network.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from tulle.dataplane.network.chain import NetworkChain


def relays_opaque(ctx: ListenerContext, chain: ChainRule | None, conn: TcpProxy) -> bool:
    """Whether `chain` of `ctx` (None: the listener's own fields) would relay the opaque stream
    of `conn`, as `listeners/chain_accept.py` and `listeners/detect.py` relay a new one."""
    protocol = chain.protocol if chain is not None else ctx.cfg.protocol
    if protocol in ("http1", "http2"):
        return False
    if chain is not None and chain.tls_ref is not None:
        if not conn.client_tls:  # it would terminate TLS this proxy never terminated here
            return False
        if protocol != "tcp" and routes_http(chain):  # ALPN `tulle-tcp` is refused there
            return False
    name = (chain.cluster if chain is not None else "") or ctx.cluster
    if name:
        return name in ctx.clusters
    return ctx.cfg.mode == "transparent" and (chain is None or not routes_http(chain))


def destination_gone(ctx: ListenerContext, conn: TcpProxy) -> bool:
    """On a transparent listener without filter chains: whether the original destination of
    `conn` has no rule in `ctx` and nothing is passed through any more (ALLOW_ANY ->
    REGISTRY_ONLY), or its rule refuses it -- a new connection to it is refused at accept
    (`no_destination`, `destination_refused`: `listeners/detect.py`)."""
    dst = conn.original_destination
    cfg = ctx.cfg
    if dst is None or cfg.mode != "transparent" or ctx.chains_by_name:
        return False
    rule = ctx.destination_for(*dst)
    return rule.refuse if rule is not None else not cfg.passthrough


def way_in(ctx: ListenerContext, conn: TcpProxy) -> tuple[bool, NetworkChain | None]:
    """Whether the config of `ctx` has a way in for the stream `conn` relays, and that way's
    network filters (what a new connection like it would pass)."""
    if not ctx.chains_by_name:  # no filter chains: the listener's own fields
        if destination_gone(ctx, conn):
            return False, None
        return relays_opaque(ctx, None, conn), ctx.network
    key = conn.route_key
    if key is not None:  # the chain it came in by, by name
        chain = ctx.chains_by_name.get(key)
        if chain is None:
            return False, None
        return relays_opaque(ctx, chain, conn), chain.network
    cfg = ctx.cfg
    if cfg.mode == "transparent" and cfg.passthrough:  # a miss, passed through
        return True, ctx.network
    # It came in with no chain (a replaced listener had none): the chain its successor would
    # choose for such a stream -- TLS where this proxy terminated it, else plaintext.
    facts = conn.live_facts()
    if facts is None:  # the client's side is gone: the relay is ending anyway
        return True, conn.decided_by
    dst = facts.original_destination or facts.local or ("", 0)
    chosen = select(ctx.chains, dst[0], dst[1], "tls" if conn.client_tls else "plaintext",
                    facts.sni, (facts.alpn,) if facts.alpn else ()) or ctx.default_chain
    if chosen is None:
        return False, None
    return relays_opaque(ctx, chosen, conn), chosen.network


def recheck_relays(handle: ListenerHandle, ctx: ListenerContext) -> int:
    """At a swap: decide each open relay of `handle` again by the policy filters of its way in
    under `ctx` (the listener's, or its successor's, context from now on) where they differ
    from those that admitted it; reset those they refuse.  How many.  A relay without a way
    in is left to the grace (`drain_orphans`, `close_unadmitted_relays`)."""
    n = 0
    for conn in list(handle.connections):
        if not isinstance(conn, TcpProxy) or conn.ended:
            continue
        ok, network = way_in(ctx, conn)
        if not ok:
            continue
        if policy_key(network) == policy_key(conn.decided_by):
            conn.decided_by = network
            continue
        facts = conn.live_facts()
        if facts is None:
            continue
        refused = network.recheck(facts) if network is not None else None
        if refused is None:
            conn.decided_by = network
            continue
        by, reject = refused
        conn.revoke(by, reject.reason)
        n += 1
    return n


def _close_wayless_relays(handle: ListenerHandle, ctx: ListenerContext) -> int:
    n = 0
    for conn in list(handle.connections):
        if isinstance(conn, TcpProxy) and not conn.ended and not way_in(ctx, conn)[0]:
            conn.way_in_gone("no_destination" if destination_gone(ctx, conn)
                             else "no_filter_chain")
            n += 1
    return n


def drain_orphans(handle: ListenerHandle, ctx: ListenerContext) -> int:
    """Drain the connections of `handle` that `ctx` (its context from now on) has no way in
    for; how many."""
    n = 0
    for conn in list(handle.connections):
        if isinstance(conn, RoutedConnection) and not conn.routable(ctx):
            conn.start_drain()
            n += 1
    return n + _close_wayless_relays(handle, ctx)


def close_unadmitted_relays(old: ListenerHandle, successor: ListenerContext) -> int:
    """A replaced listener's opaque relays (DISABLED -> STRICT changes the listener's
    filter chains, so a new one takes the socket over and the old one's connections drain):
    an opaque stream has no request boundary to drain at, and ran on for as long as it lasted.
    One its successor has no way in for (STRICT's only chain terminates mTLS, and this proxy
    did not decrypt the stream) is closed as above; how many."""
    return _close_wayless_relays(old, successor)


def close_removed_relays(old: ListenerHandle) -> int:
    """A removed listener's opaque relays, closed (FIN, `listener_removed`); how many."""
    n = 0
    for conn in list(old.connections):
        if isinstance(conn, TcpProxy) and not conn.ended:
            conn.listener_gone()
            n += 1
    return n


__all__ = ["close_removed_relays", "close_unadmitted_relays", "destination_gone",
           "drain_orphans", "recheck_relays", "relays_opaque", "way_in"]
