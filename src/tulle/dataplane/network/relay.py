"""Where an opaque TCP connection's path starts: its network filters, then the TCP proxy.

`relay()` is what the detection driver calls once a connection is to be relayed.  It gathers
the connection's facts for the listener's network filter chain (only when the listener has
one), and picks the engine: splice for plaintext on both sides, copy otherwise.
"""

from __future__ import annotations

import asyncio
import os
from typing import Final, Literal

from tulle.dataplane.listeners.context import Connection
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.network.chain import ConnectionChain, NetworkChain
from tulle.dataplane.network.copy import CopyRelay
from tulle.dataplane.network.splice import SpliceRelay
from tulle.dataplane.network.tcp_proxy import Target, TcpProxy, transport_facts
from tulle.dataplane.security.spiffe import spiffe_id

HAS_SPLICE: Final = hasattr(os, "splice")
USE_SPLICE = HAS_SPLICE
"""Module switch: tests turn it off to exercise the copy relay on plaintext connections."""


def relay(handle: ListenerHandle, transport: asyncio.Transport, initial: bytes,
          target: Target, original_destination: tuple[str, int] | None = None, *,
          network: NetworkChain | Literal["listener"] | None = "listener",
          chain_name: str | None = None) -> Connection:
    """Start relaying a client connection to `target` (after the listener's network filters);
    the relay owns `transport` from now on.  `original_destination`: where a transparent
    connection was going (the filters' facts).  `network`: the filters of the connection's
    filter chain instead of the listener's (`listeners.chain_accept`); `chain_name`: that
    chain's name (a swap that removes it closes the relay, `listeners/orphans.py`)."""
    if network == "listener":
        network = handle.ctx.network
    chain: ConnectionChain | None = None
    flow = handle.ctx.flow_log
    facts = None
    if network is not None or flow is not None:
        facts = transport_facts(handle.ctx.cfg, transport, original_destination)
    if network is not None and facts is not None:
        chain = network.connection(facts)
    cluster = target.cluster
    plain = (transport.get_extra_info("sslcontext") is None
             and transport.get_extra_info("ssl_object") is None
             and transport.get_extra_info("socket") is not None
             and (cluster is None or cluster.ssl_context is None))
    conn: TcpProxy = (SpliceRelay if USE_SPLICE and plain else CopyRelay)(handle, target, chain)
    conn.route_key = chain_name
    if original_destination is not None:
        conn.original_destination = original_destination
    conn.client_tls = (transport.get_extra_info("ssl_object") is not None
                       or transport.get_extra_info("sslcontext") is not None)
    golden = handle.ctx.golden
    if golden is not None:
        if chain is not None:
            identity = chain.facts.peer_identity or ""
        else:
            ssl_object = transport.get_extra_info("ssl_object")
            identity = spiffe_id(ssl_object) if ssl_object is not None else ""
        conn.golden = golden.tcp(handle.ctx.cfg, cluster.cfg if cluster is not None else None,
                                 identity)
    if flow is not None and facts is not None:
        # A ClientHello relayed as it came (SNI passthrough) is TLS to a flow log too.
        flow.opened(conn, facts, tls=facts.tls or initial[:2] == b"\x16\x03")
    conn.start(transport, initial)
    return conn


__all__ = ["HAS_SPLICE", "USE_SPLICE", "Target", "relay"]
