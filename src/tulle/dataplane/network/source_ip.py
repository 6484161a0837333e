"""`source_ip`: admit or refuse a connection by the client's address (L4 authorization).

Config: `tulle.proxyconfig.network.source_ip`.  The networks are parsed once per snapshot; a
connection costs one address parse and a scan of the lists.  An IPv4-mapped IPv6 peer
(`::ffff:10.0.0.1`, a dual-stack listener) is checked as its IPv4 address, so `10.0.0.0/8`
means the same thing on every socket family.  A relay already open when a swap changes the
lists is decided again (`recheck`, ADR 0117) and cut when they refuse it.
"""

from __future__ import annotations

import ipaddress

from tulle.dataplane.network.filter import (
    CONTINUE,
    DEFAULT_STOP_TIMEOUT,
    ConnectionFacts,
    ConnectionRecord,
    Control,
    Reject,
    Verdict,
)
from tulle.proxyconfig.address import matched_network, peer_ip
from tulle.proxyconfig.network.source_ip import SourceIP

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DENIED = Reject("denied")
NOT_ALLOWED = Reject("not_allowed")


class SourceIPFilter:
    """Stateless: one instance serves every connection of the listener."""

    __slots__ = ("allow", "cfg", "deny")
    name = "source_ip"
    stop_timeout = DEFAULT_STOP_TIMEOUT
    observer = False

    def __init__(self, cfg: SourceIP) -> None:
        self.cfg = cfg
        self.allow: tuple[Network, ...] = tuple(matched_network(a) for a in cfg.allow)
        self.deny: tuple[Network, ...] = tuple(matched_network(d) for d in cfg.deny)

    def create(self) -> SourceIPFilter:
        return self

    def on_connect(self, facts: ConnectionFacts, control: Control) -> Verdict:
        v = self.recheck(facts)
        return CONTINUE if v is None else v

    def recheck(self, facts: ConnectionFacts) -> Reject | None:
        ip = peer_ip(facts.peer[0])
        if ip is None:  # not an IP peer (cannot happen on a TCP listener): refuse, never guess
            return DENIED
        for net in self.deny:
            if ip in net:
                return DENIED
        if not self.allow:
            return None
        for net in self.allow:
            if ip in net:
                return None
        return NOT_ALLOWED

    def on_close(self, record: ConnectionRecord) -> None:
        pass


def build(cfg: SourceIP) -> SourceIPFilter:
    return SourceIPFilter(cfg)
