"""The network (L4) filter contract: what an opaque TCP connection's filters see and answer.

The same shape as the HTTP filters (DESIGN.md section 4), one level down: a filter looks at a
connection once, when it is accepted and before anything is dialled (`on_connect`), and once
when it is over (`on_close`).  `on_connect` answers

* `CONTINUE` — the next filter (the last one's next is the TCP proxy, which dials);
* `Reject(reason)` — the connection is reset, nothing is dialled, the rejection is counted in
  `tulle_proxy_network_filter_rejections_total{listener,filter,reason}` (`reason` is a short
  fixed code: it is a metric label);
* `STOP` — wait: the filter calls `control.resume()` or `control.reject(reason)` later (an
  external check).  The wait is bounded by the factory's `stop_timeout`; past it the
  connection is rejected with reason `timeout`.

`on_close(record)` runs for every filter whose `on_connect` ran (a limit gives its slot back)
and for every observer (a flow log), rejected connections included.  A filter that raises
resets its connection and is counted in `tulle_proxy_network_filter_errors_total`; it never
takes the listener down.

Factories are built once per listener per snapshot from typed config (`order.py`); `create()`
gives a connection its filter — a stateless filter returns one shared instance.

A decider whose verdict is a function of the facts alone — authorization: `source_ip`,
`authz` — is a `PolicyFactory`: it also keeps its `cfg` and offers `recheck(facts)`.  When a
swap changes those filters, every relay already open is decided again by the new ones
(`chain.NetworkChain.recheck`, `listeners/orphans.py`), so a caller the new config refuses is
cut, not left flowing until its stream ends (ADR 0117).  Budgets (`connection_limit`,
`rate_limit`) are not rechecked: they govern admissions, and an open relay was admitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol


class Continue:
    """Go on to the next filter."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CONTINUE"


class Stop:
    """Wait for the filter to call `resume()` or `reject()` (bounded by `stop_timeout`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "STOP"


CONTINUE: Final = Continue()
STOP: Final = Stop()


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the connection; `reason` is a short fixed code (a metric label)."""

    reason: str


Verdict = Continue | Stop | Reject


@dataclass(frozen=True, slots=True)
class ConnectionFacts:
    """What is known about a downstream connection when its filters run."""

    listener: str
    direction: str
    """`inbound` or `outbound`, from the listener."""
    peer: tuple[str, int]
    """The client's address and port."""
    local: tuple[str, int] | None
    """The address the connection was accepted on."""
    original_destination: tuple[str, int] | None
    """Where a transparent (redirected) connection was going; None on explicit listeners."""
    tls: bool = False
    sni: str | None = None
    alpn: str | None = None
    peer_identity: str | None = None
    """The peer's verified identity (SPIFFE ID of a client certificate a mesh mTLS chain
    verified, ADR 0030); None: not authenticated."""


class ConnectionRecord:
    """A connection's life, handed to every `on_close`: what a flow log writes."""

    __slots__ = ("bytes_received", "bytes_sent", "close_reason", "cluster", "duration",
                 "facts", "reject_reason", "rejected_by", "upstream")

    def __init__(self, facts: ConnectionFacts, cluster: str) -> None:
        self.facts = facts
        self.cluster = cluster
        """The relay's target: a cluster name, or `PassthroughCluster`."""
        self.upstream: tuple[str, int] | None = None
        """The endpoint dialled (None when nothing was)."""
        self.bytes_received = 0
        """Bytes from the client relayed upstream."""
        self.bytes_sent = 0
        """Bytes from upstream relayed to the client."""
        self.duration = 0.0
        """Seconds from the relay's start to its end (loop clock)."""
        self.close_reason = ""
        """`eof` (both sides finished), `reset` (a side reset or failed), `idle_timeout`,
        `aborted` (drain or shutdown), `rejected`, `filter_error`, `no_endpoint`,
        `connect_failed`, `no_descriptors`; closed by a config swap (ADRs 0108, 0117):
        `revoked` (the new authorization denies it: `rejected_by` / `reject_reason` say
        which filter and why), `no_filter_chain` (the new config has no way in for it),
        `listener_removed`."""
        self.rejected_by = ""
        """The filter that rejected the connection (or raised), else empty."""
        self.reject_reason = ""


class Control(Protocol):
    """What a filter that answered `STOP` calls later, exactly once; later calls are ignored."""

    def resume(self) -> None: ...

    def reject(self, reason: str) -> None: ...


class NetworkFilter(Protocol):
    def on_connect(self, facts: ConnectionFacts, control: Control) -> Verdict: ...

    def on_close(self, record: ConnectionRecord) -> None: ...


class NetworkFilterFactory(Protocol):
    """Built once per listener per snapshot from one filter config."""

    name: str
    """The config's type tag (`source_ip`): metric label and position in `order.ORDER`."""
    stop_timeout: float
    """Seconds a `STOP` may wait before the connection is rejected (`timeout`)."""
    observer: bool
    """True: the filter only watches (`on_close`); its `on_connect` is never called."""

    def create(self) -> NetworkFilter: ...


DEFAULT_STOP_TIMEOUT: Final = 5.0


class PolicyFactory(NetworkFilterFactory, Protocol):
    """A decider whose verdict depends on the connection's facts alone (authorization)."""

    cfg: object
    """The filter's config: two snapshots with equal configs decide every connection alike,
    so a swap that keeps them rechecks nothing."""

    def recheck(self, facts: ConnectionFacts) -> Reject | None:
        """The verdict `on_connect` would give `facts` now (None: admitted), for a relay
        already open.  Counted only where it cuts the relay or a dry run would: the relay
        was counted when it opened."""
        ...
