"""Listener filter chains: which chain of a listener takes a connection.  No I/O.

A listener with `filter_chains` chooses, per connection, the protocol, TLS termination,
routing and network filters by what the connection is: its destination (the original one on
a transparent listener), and from its first bytes whether it is TLS and, if so, the SNI and
ALPN offers of its ClientHello (`protocols.clienthello`).  The accept side
(`listeners.chain_accept`) gathers those facts; this module decides.

**Selection order** (Envoy's `filter_chain_match`, minus the source fields): the candidates
are narrowed field by field, in this order --

1. destination port: chains naming the port, else chains with port 0;
2. destination address: chains whose longest matching prefix is longest, else chains with
   no addresses;
3. server name: an exact match, else the longest matching `*.suffix`, else chains with no
   server names (a connection without SNI only matches those);
4. transport (`tls` / `plaintext`): chains naming it, else `any`;
5. ALPN: chains naming the protocol the client offers first among those any chain names,
   else chains with none.

At each step, if no candidate matches specifically or by leaving the field empty, no chain
matches: a less specific chain at an earlier field is *not* reconsidered (as in Envoy).  The
validator refuses two chains that share a value at every field (ADR 0021), so at most one is
left.  No chain: the
listener's default chain (its own fields), if it has one.

Chains compile once per snapshot (`ChainRule`, held by the `ListenerContext`); a connection
keeps the chosen chain's *name* as its routing key and resolves it again after a swap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Union

from tulle.dataplane.network.chain import NetworkChain, build_chain
from tulle.dataplane.runtime.tls import TLSContexts
from tulle.proxyconfig.address import matched_network, peer_ip
from tulle.proxyconfig.model import FilterChain, FilterChainMatch, Listener, TLSContext

if TYPE_CHECKING:
    import ipaddress

    from tulle.dataplane.routing.router import Router
    from tulle.dataplane.runtime.tls import ServerRef
    from tulle.dataplane.telemetry.metrics import ProxyMetrics

IPNetwork = Union["ipaddress.IPv4Network", "ipaddress.IPv6Network"]
IPAddress = Union["ipaddress.IPv4Address", "ipaddress.IPv6Address"]

_EXACT = 1 << 16
"""Score of an exact server name: above any suffix length (host names are at most 255)."""


class ChainRule:
    """One compiled filter chain: its match and what it does (shape of a `DestinationRule`:
    `protocol`, `router`, `cluster`, so the drivers route by either)."""

    __slots__ = ("alpn", "cluster", "exact_names", "inspects", "name", "network", "networks",
                 "port", "protocol", "router", "suffixes", "tls", "tls_ref", "transport")

    def __init__(self, name: str, match: FilterChainMatch, protocol: str,
                 tls: TLSContext | None, tls_ref: ServerRef | None,
                 router: Router | None, cluster: str, network: NetworkChain | None) -> None:
        self.name = name
        self.port = match.destination_port
        self.networks = tuple(matched_network(a) for a in match.destination)
        names = [n.lower() for n in match.server_names]
        self.exact_names = frozenset(n for n in names if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # ".example.com"
        self.transport = match.transport
        self.alpn = frozenset(match.alpn)
        self.protocol = protocol
        self.tls = tls
        self.tls_ref = tls_ref
        """The shared server context entry to terminate TLS with (`.ctx`, read per accept:
        rotated or replaced by `runtime.tls`); None: no termination."""
        self.router = router
        self.cluster = cluster
        self.network = network
        """This chain's L4 filters for relayed connections; None: none."""
        self.inspects = bool(self.transport != "any" or names or self.alpn or tls is not None
                             or protocol == "auto")
        """Whether choosing or serving this chain needs the connection's first bytes."""

    # -- scores: -1 no match, 0 matches by leaving the field empty, > 0 specific -----------

    def port_score(self, port: int) -> int:
        if not self.port:
            return 0
        return 1 if self.port == port else -1

    def address_score(self, ip: IPAddress | None) -> int:
        if not self.networks:
            return 0
        best = -1
        if ip is not None:
            for net in self.networks:
                if ip.version == net.version and ip in net and net.prefixlen + 1 > best:
                    best = net.prefixlen + 1
        return best

    def name_score(self, sni: str | None) -> int:
        if not self.exact_names and not self.suffixes:
            return 0
        if not sni:
            return -1
        if sni in self.exact_names:
            return _EXACT
        best = -1
        for suffix in self.suffixes:
            if sni.endswith(suffix) and len(sni) > len(suffix) and len(suffix) > best:
                best = len(suffix)
        return best

    def transport_score(self, transport: str) -> int:
        if self.transport == "any":
            return 0
        return 1 if self.transport == transport else -1

    def alpn_score(self, offered: Sequence[str]) -> int:
        """Higher for a protocol the client offers earlier: between chains on different
        protocols the client's preference decides, as in Envoy (not the list order)."""
        if not self.alpn:
            return 0
        for i, p in enumerate(offered):
            if p in self.alpn:
                return len(offered) - i
        return -1


def _narrow(candidates: list[ChainRule], score: Callable[[ChainRule], int]) -> list[ChainRule]:
    """The candidates with the best non-negative score (empty when none matches)."""
    best = -1
    out: list[ChainRule] = []
    for c in candidates:
        s = score(c)
        if s > best:
            best, out = s, [c]
        elif s == best and s >= 0:
            out.append(c)
    return out


def by_destination(chains: Sequence[ChainRule], ip: str, port: int) -> list[ChainRule]:
    """Steps 1 and 2 of the selection order: what the destination alone leaves."""
    out = _narrow(list(chains), lambda c: c.port_score(port))
    if any(c.networks for c in out):  # parse the address only when some chain asks
        addr = peer_ip(ip)
        out = _narrow(out, lambda c: c.address_score(addr))
    return out


def by_hello(candidates: list[ChainRule], transport: str, sni: str | None,
             alpn: Sequence[str]) -> ChainRule | None:
    """Steps 3 to 5 on what `by_destination` left: the chain, or None."""
    out = _narrow(candidates, lambda c: c.name_score(sni))
    if out:
        out = _narrow(out, lambda c: c.transport_score(transport))
    if out:
        out = _narrow(out, lambda c: c.alpn_score(alpn))
    return out[0] if out else None


def select(chains: Sequence[ChainRule], ip: str, port: int, transport: str,
           sni: str | None = None, alpn: Sequence[str] = ()) -> ChainRule | None:
    """The chain for a connection with these facts (the whole selection order)."""
    return by_hello(by_destination(chains, ip, port), transport, sni, alpn)


DEFAULT_CHAIN = ""
"""The routing key (chain name) of a listener's default chain: no configured chain's name."""


def build_rules(cfg: Listener, routers: dict[str, Router], tls: TLSContexts | None,
                metrics: ProxyMetrics, listener_network: NetworkChain | None,
                ) -> tuple[tuple[ChainRule, ...], ChainRule | None]:
    """A listener's compiled chains and its default chain (its own fields, when it names a
    route table or a cluster; its network filters are the listener's, `listener_network`).
    May raise (a TLS context that does not load)."""

    cache = tls if tls is not None else TLSContexts()

    def rule(fc: FilterChain, network: NetworkChain | None = None) -> ChainRule:
        ref = cache.server_ref(fc.tls) if fc.tls is not None else None
        return ChainRule(fc.name, fc.match, fc.protocol, fc.tls, ref,
                         routers.get(fc.route_table) if fc.route_table else None, fc.cluster,
                         network if network is not None
                         else build_chain(fc.network_filters, cfg.name, metrics))

    rules = tuple(rule(fc) for fc in cfg.filter_chains)
    default = None
    if cfg.route_table or cfg.cluster:
        default = rule(FilterChain(name=DEFAULT_CHAIN, protocol=cfg.protocol, tls=cfg.tls,
                                   route_table=cfg.route_table, cluster=cfg.cluster),
                       listener_network)
    return rules, default


def routes_http(chain: ChainRule) -> bool:
    """`chain` hands HTTP to a route table (or is HTTP by its protocol).  Here, not in
    `chain_accept.py`, so that a swap's checks (`orphans.py`) read it without loading
    protocol detection into a proxy whose listeners never detect (test_footprint.py)."""
    return chain.router is not None or chain.protocol in ("http1", "http2")
