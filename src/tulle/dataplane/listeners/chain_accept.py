"""The first moments of a connection on a listener with filter chains.

`ChainAccept` gathers the facts a chain is chosen by, asks `listeners.chains` for the chain, and
hands the connection to what the chain says, then steps aside:

1. **Destination.**  On a transparent listener the original destination (a loop is refused,
   as in `listeners.detect`); otherwise the address the client dialled.  The chains the
   destination leaves are the candidates.  When none of them (nor the default chain that
   would serve a miss) needs the first bytes -- no transport, SNI or ALPN condition, no TLS
   termination, a fixed protocol -- the chain is chosen at once and nothing is read: a
   server-first protocol's greeting flows.
2. **First bytes.**  Otherwise the proxy peeks: a first byte other than a TLS handshake
   record makes the connection `plaintext`; a TLS one is read up to the end of its
   ClientHello (`protocols.clienthello`, bounded) for SNI and ALPN.  A malformed or oversized
   ClientHello is closed and counted (`tulle_proxy_protocol_errors_total{kind=
   "tls_client_hello_invalid" | "tls_client_hello_too_large"}`).  A client silent for
   `detect_timeout_ms` is taken as plaintext with no bytes.
3. **Hand-over.**  TLS on a chain with `tls`: the handshake (`listeners.tls.TLSAccept`, fed the
   bytes already read), then the HTTP driver ALPN picks -- or, for ALPN `tulle-tcp` or a
   `tcp` chain, a relay of the decrypted stream to the chain's cluster (mesh mTLS carries
   opaque TCP and server-first protocols this way, ADR 0030).  TLS on a chain without `tls`: an
   opaque relay (SNI passthrough).  Plaintext: the chain's protocol, sniffed when `auto`
   (`protocols.detect`).  HTTP drivers route by the chain's *name* (a routing key that
   follows config swaps); relays pass the chain's network filters.
   No chain: the listener's default chain; else, on a transparent listener with
   `passthrough`, a relay to the original destination; else the connection is closed and
   counted (`kind="no_filter_chain"`).
Each chosen chain is counted in `tulle_proxy_protocol_detected_total{listener,protocol}` as
`chain:<name>` (`chain:` for the default chain, `passthrough` for a transparent miss).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from tulle.dataplane.listeners.chains import ChainRule, by_destination, by_hello, routes_http
from tulle.dataplane.listeners.detect import Deciding, _h2_driver, handover
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.http1 import H1Downstream
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.network.relay import Target, relay
from tulle.dataplane.protocols.clienthello import ClientHelloReader
from tulle.dataplane.protocols.detect import MAX_SNIFF_BYTES, detect_next, undecided
from tulle.dataplane.security.spiffe import TCP_ALPN

if TYPE_CHECKING:
    from tulle.dataplane.listeners.tls import Starter

_TLS_RECORD = 0x16


class ChainAccept(Deciding):
    """A connection whose filter chain is not chosen yet (see the module docstring)."""

    def __init__(self, handle: ListenerHandle) -> None:
        super().__init__(handle)
        self.destination: tuple[str, int] = ("", 0)
        self.candidates: list[ChainRule] = []
        self.chain: ChainRule | None = None
        """Chosen for a plaintext `auto` connection whose protocol is still being sniffed."""
        self.hello: ClientHelloReader | None = None
        self.sni = ""
        """The ClientHello's server name (for the connection's facts)."""
        self.sniffed = 0
        """Bytes of the buffer already sniffed `need_more` (`_sniff`)."""

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        if not self._opened(t):
            return
        ctx = self.ctx
        local = t.get_extra_info("sockname")
        if ctx.cfg.mode == "transparent":
            dst = self._original_destination(t, local)
            if dst is None:
                return
            self.destination = dst
        elif local is not None:
            self.destination = (str(local[0]), int(local[1]))
        self.candidates = by_destination(ctx.chains, *self.destination)
        fallback = ctx.default_chain
        if self.candidates:
            needs_bytes = any(c.inspects for c in self.candidates)
        else:
            needs_bytes = fallback is not None and fallback.inspects
        if needs_bytes:
            self._timer = self.loop.call_later(ctx.cfg.detect_timeout_ms / 1000,
                                               self._on_timeout)
        else:
            self._chosen(by_hello(self.candidates, "plaintext", None, ()), tls=False)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        buf = self.buffer = self.buffer + data if self.buffer else data
        if self.chain is not None:  # plaintext `auto` chain: sniffing its protocol
            self._sniff(self.chain)
            return
        reader = self.hello
        if reader is None:
            if buf[0] != _TLS_RECORD:
                self._plaintext()
                return
            reader = self.hello = ClientHelloReader()
            data = buf
        got = reader.feed(data)
        if got.status == "need_more":
            return
        if got.status == "not_tls":
            self._plaintext()
        elif got.status == "hello":
            self.sni = got.sni or ""
            self._chosen(by_hello(self.candidates, "tls", got.sni, got.alpn), tls=True)
        else:
            self._refuse(f"tls_client_hello_{got.status}")

    def eof_received(self) -> bool:
        if self._done or not self.buffer:
            return False
        # A half-closed client mid-prefix: decide on what it sent, as `listeners.detect` does.
        if self.hello is not None:
            self._refuse("tls_client_hello_invalid")
            return False
        t = self.transport
        self._plaintext(final=True)
        return self._eof_to_successor(t)

    # -- decisions -----------------------------------------------------------------------

    def _on_timeout(self) -> None:
        """Silent for `detect_timeout_ms`: plaintext on what was sent (maybe nothing)."""
        self._timer = None
        if self._done:
            return
        if self.hello is not None:
            self._refuse("tls_client_hello_timeout")
            return
        self._plaintext(final=True)

    def _plaintext(self, final: bool = False) -> None:
        if self.chain is not None:
            self._sniff(self.chain, final)
            return
        self._chosen(by_hello(self.candidates, "plaintext", None, ()), tls=False, final=final)

    def _fallback(self, chain: ChainRule | None) -> ChainRule | None:
        if chain is None:
            chain = self.ctx.default_chain
        return chain

    def _chosen(self, chain: ChainRule | None, *, tls: bool, final: bool = False) -> None:
        chain = self._fallback(chain)
        if chain is None:
            cfg = self.ctx.cfg
            if cfg.mode == "transparent" and cfg.passthrough:
                self._count("passthrough")
                self._relay(Target.passthrough(*self.destination), None)
            else:
                self._refuse("no_filter_chain")
            return
        self._count(f"chain:{chain.name}")
        if chain.tls_ref is not None:
            self._terminate(chain)
        elif tls or chain.protocol == "tcp":
            self._relay_chain(chain)
        elif chain.protocol == "auto":
            self.chain = chain
            self._sniff(chain, final)
        else:
            self._drive(chain, chain.protocol)

    def _sniff(self, chain: ChainRule, final: bool = False) -> None:
        buf = self.buffer
        # `detect_next`: what was `need_more` is not scanned again, so a client trickling its
        # prefix a byte per segment costs work linear in it, not quadratic (ADR 0073; an
        # attack audit found chain listeners still rescanning, ADR 0094).
        protocol = detect_next(buf, self.sniffed).protocol if buf else "need_more"
        if protocol == "need_more":
            self.sniffed = len(buf)
            if not final and len(buf) < MAX_SNIFF_BYTES:
                return
            protocol = undecided(buf)
        if protocol in ("http1", "http2"):
            self._drive(chain, protocol)
        else:
            self._relay_chain(chain)

    def _drive(self, chain: ChainRule, protocol: str) -> None:
        driver = self._driver(protocol)
        if driver is None:  # (an HTTP/2 engine not built: `detect._h2_driver`)
            self._refuse("http2_unavailable")
            return
        proto = driver(self.handle)
        proto.route_by_chain(chain.name, b"http")
        self._pass(lambda t, initial: handover(t, proto, initial))

    @staticmethod
    def _driver(protocol: str) -> Callable[[ListenerHandle], H1Downstream] | None:
        if protocol != "http2":
            return H1Downstream
        return cast(Callable[[ListenerHandle], H1Downstream] | None, _h2_driver())

    def _terminate(self, chain: ChainRule) -> None:
        from tulle.dataplane.listeners.tls import TLSAccept

        handle = self.handle
        name = chain.name

        def by_alpn(alpn: str | None) -> asyncio.Protocol | Starter | None:
            if chain.protocol == "tcp":
                return self._tls_relay(chain)
            if alpn == TCP_ALPN:
                # An opaque stream only where the chain carries no HTTP: on an HTTP chain
                # it would skip the route's filters (authorization first) -- on a
                # transparent listener the relay went straight to the application
                # (attack review A1, ADR 0045).  Refused, counted `tls_alpn`.
                if chain.router is not None or chain.protocol in ("http1", "http2"):
                    return None
                return self._tls_relay(chain)
            driver = self._driver("http2" if alpn == "h2" else "http1")
            if driver is None:  # h2 without its engine: refused, counted `tls_alpn`
                return None
            proto = driver(handle)
            proto.route_by_chain(name, b"https", self.sni)
            return proto

        assert chain.tls_ref is not None
        accept = TLSAccept(handle, chain.tls_ref.ctx, by_alpn)  # the context in force now
        self._pass(lambda t, initial: handover(t, accept, initial))

    def _tls_relay(self, chain: ChainRule) -> Starter | None:
        """The relay of a TLS-terminated opaque stream (`tulle-tcp`, or a `tcp` chain): the
        decrypted bytes go to the chain's cluster (or, transparent, the original destination)
        through the chain's network filters, whose facts carry the verified peer identity.
        None (refused, counted `tls_alpn`) when the chain has nowhere to relay to."""
        ctx = self.handle.ctx  # the context in force when the handshake ends
        target = self._target(chain, ctx)
        if target is None:
            return None
        dst = self.destination if ctx.cfg.mode == "transparent" else None
        handle = self.handle
        return lambda t, initial: relay(handle, t, initial, target, dst, network=chain.network,
                                        chain_name=chain.name)

    def _target(self, chain: ChainRule, ctx: ListenerContext) -> Target | None:
        """Where bytes that are not (or not taken as) HTTP go on `chain`: its cluster, or on a
        transparent listener the original destination -- never for a chain that routes HTTP
        and names no cluster.  That chain is the workload port's only way in (its route's
        filters, authorization first): a client silent past the detect timeout, a request
        line with a leading space or a ClientHello would otherwise reach the application
        around them (attack audit, ADR 0094)."""
        name = chain.cluster or ctx.cluster
        if name:
            cluster = ctx.clusters.get(name)
            return Target(name, cluster) if cluster is not None else None
        if ctx.cfg.mode == "transparent" and not routes_http(chain):
            return Target.passthrough(*self.destination)
        return None

    def _relay_chain(self, chain: ChainRule) -> None:
        target = self._target(chain, self.ctx)
        if target is None:
            self._refuse("no_cluster")
            return
        self._relay(target, chain)

    def _relay(self, target: Target, chain: ChainRule | None) -> None:
        dst = self.destination if self.ctx.cfg.mode == "transparent" else None
        network = chain.network if chain is not None else self.ctx.network
        name = chain.name if chain is not None else None
        self._pass(lambda t, initial: relay(self.handle, t, initial, target, dst,
                                            network=network, chain_name=name))

    def _finish(self) -> None:
        super()._finish()
        self.hello = None
