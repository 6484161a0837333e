"""Live tap in the proxy: the observer that turns matching requests into `TapRecord`s (ADR 0056).

Why an observer on `done` and not a filter: a tap is started and stopped at run time, by the
control plane, not by the snapshot, so it cannot be a filter built per route.  The request
stream calls `TapHub.see` from `record()` (DESIGN.md section 4: observers see only `done`)
only while a tap runs: with none, a request pays one attribute test.

The hub filters by each tap's `TapMatch` before it builds a record, spends the tap's token
bucket (a request over the rate is counted in `dropped`, never built), holds at most
`MAX_RECORDS_PER_BATCH` pending records per tap, and drops a tap at its deadline unless the
control plane renewed it; the agent's flush loop (`agent_tap.py`) sends the batches.  No
value of a `REDACTED_HEADERS` header ever leaves the proxy.  Sans-I/O apart from the clocks,
which are injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tulle.dataplane.telemetry.grpc_status import call_status, is_grpc
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.tap import (
    MAX_EXPIRES_MS,
    MAX_FIELD,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_ID,
    MAX_RATE,
    MAX_RECORDS_PER_BATCH,
    MAX_TAPS,
    MIN_RATE,
    REDACTED,
    REDACTED_HEADERS,
    TapRecord,
)

if TYPE_CHECKING:
    # (not at run time: a proxy run from a file never loads the stream protocol, which pulls
    # in hashlib; tests/integration/dataplane/test_footprint.py)
    from tulle.dataplane.http.stream import RequestStream
    from tulle.proxyconfig.stream import TapEvents, TapStart

_PROTOCOLS = {b"1.0": "HTTP/1.0", b"1.1": "HTTP/1.1", b"2": "HTTP/2"}


def _text(b: bytes, limit: int = MAX_FIELD) -> str:
    s = b[:limit].decode("utf-8", "replace")
    return s + "..." if len(b) > limit else s


class _Tap:
    """One running tap: its match (as bytes, compared without decoding), bucket and batch."""

    __slots__ = ("authority", "direction", "dropped", "expires", "headers", "id", "last",
                 "method", "path", "pending", "rate", "service", "status_max", "status_min",
                 "tokens", "workload")

    def __init__(self, msg: TapStart, now: float) -> None:
        self.id = msg.id
        self.pending: list[TapRecord] = []
        self.dropped = 0
        self.renew(msg, now)
        self.tokens = self.burst

    @property
    def burst(self) -> float:
        return max(1.0, self.rate)

    def renew(self, msg: TapStart, now: float) -> None:
        m = msg.match
        self.workload = m.workload
        self.service = m.service
        self.direction = m.direction
        self.method = m.method.upper().encode()
        self.path = m.path_prefix.encode()
        self.authority = m.authority.lower().encode()
        self.status_min = m.status_min
        self.status_max = m.status_max
        self.headers = msg.headers
        rate = msg.rate if msg.rate == msg.rate else MIN_RATE  # NaN: the least
        self.rate = min(max(rate, MIN_RATE), MAX_RATE)
        self.last = now
        self.expires = now + min(max(msg.expires_ms, 1), MAX_EXPIRES_MS) / 1000

    def take(self, now: float) -> bool:
        """Spend one token; False (and counted) when the tap is over its rate."""
        tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if tokens < 1.0 or len(self.pending) >= MAX_RECORDS_PER_BATCH:
            self.tokens = tokens
            self.dropped += 1
            return False
        self.tokens = tokens - 1.0
        return True


class TapHub:
    """The taps this proxy runs, and what it knows to attribute a request (from the config)."""

    __slots__ = ("_clock", "_listeners", "_local", "_own_service", "_services", "_tls",
                 "_wall", "ended", "refused", "taps")

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:  # noqa: TID251 - timestamps
        self.taps: tuple[_Tap, ...] = ()
        """Empty when nothing taps: the request path tests this alone."""
        self._clock = clock
        self._wall = wall
        self._listeners: dict[str, tuple[str, str]] = {}
        self._services: dict[str, str] = {}
        self._tls: frozenset[str] = frozenset()
        self._own_service = ""
        self._local = ""
        self.ended: list[TapEvents] = []
        """`ended` answers (refused, expired) to send with the next flush."""
        self.refused = 0

    # -- the config in force ---------------------------------------------------------------

    def configure(self, cfg: ProxyConfig) -> None:
        """Learn listener directions and workloads and cluster Services (`on_applied`)."""
        node = cfg.node
        self._local = local = f"{node.namespace}/{node.name}"
        self._own_service = f"{node.namespace}/{node.service}" if node.service else ""
        self._listeners = {lst.name: (lst.direction, lst.workload or local)
                           for lst in cfg.listeners}
        services = {}
        for c in cfg.clusters:
            md = c.metadata
            if md is not None and md.service:
                services[c.name] = f"{md.namespace or node.namespace}/{md.service}"
        self._services = services
        self._tls = frozenset(c.name for c in cfg.clusters if c.tls is not None)

    # -- the control plane's requests ------------------------------------------------------

    def start(self, msg: TapStart) -> bool:
        """Start or renew tap `msg.id`; False (and an `ended` answer queued) when refused."""
        now = self._clock()
        for tap in self.taps:
            if tap.id == msg.id:
                tap.renew(msg, now)
                return True
        if not msg.id or len(msg.id) > MAX_ID:
            self._refuse(msg.id[:MAX_ID], "refused: bad tap id")
            return False
        if len(self.taps) >= MAX_TAPS:
            self._refuse(msg.id, f"refused: this proxy runs {MAX_TAPS} taps already")
            return False
        self.taps = (*self.taps, _Tap(msg, now))
        return True

    def _refuse(self, tap_id: str, why: str) -> None:
        """Count a refusal and queue its answer; a flood of starts queues at most
        `MAX_TAPS` answers per flush (the rest are counted only)."""
        self.refused += 1
        if len(self.ended) < MAX_TAPS:
            from tulle.proxyconfig.stream import TapEvents  # lazily: see the imports

            self.ended.append(TapEvents(id=tap_id, ended=why))

    def stop(self, tap_id: str) -> None:
        self.taps = tuple(t for t in self.taps if t.id != tap_id)

    def clear(self) -> None:
        """The stream ended: every tap ends with it (its watcher is gone with the stream)."""
        self.taps = ()
        self.ended.clear()

    def flush(self) -> list[TapEvents]:
        """Pending batches, and the `ended` answers of refused and expired taps."""
        from tulle.proxyconfig.stream import TapEvents  # lazily: see the imports

        out, self.ended = self.ended, []
        now = self._clock()
        keep = []
        for tap in self.taps:
            if tap.pending or tap.dropped:
                out.append(TapEvents(id=tap.id, records=tap.pending, dropped=tap.dropped))
                tap.pending, tap.dropped = [], 0
            if now >= tap.expires:
                out.append(TapEvents(id=tap.id, ended="expired"))
            else:
                keep.append(tap)
        if len(keep) != len(self.taps):
            self.taps = tuple(keep)
        return out

    # -- the request path: called from `RequestStream.record` while `taps` is not empty -----

    def see(self, s: RequestStream) -> None:
        facts = s.conn.facts
        where = self._listeners.get(facts.listener)
        if where is None:
            return
        direction, workload = where
        inbound = direction == "inbound"
        service = self._own_service if inbound else self._services.get(s.cluster, "")
        head = s.head
        status = s.status
        now = 0.0
        record: TapRecord | None = None
        for tap in self.taps:
            if ((tap.path and not head.path.startswith(tap.path))
                    or (tap.service and tap.service != service)
                    or (tap.workload and tap.workload != workload)
                    or (tap.direction and tap.direction != direction)
                    or (tap.method and tap.method != head.method)
                    or (tap.authority and tap.authority != head.authority.lower())
                    or (tap.status_min and status < tap.status_min)
                    or (tap.status_max and status > tap.status_max)):
                continue
            if not now:  # the clock only once something matched
                now = self._clock()
            if now >= tap.expires or not tap.take(now):
                continue
            if record is None or tap.headers != bool(record.headers):
                record = self._record(s, direction, workload, service, inbound, tap.headers,
                                      now)
            tap.pending.append(record)

    def _record(self, s: RequestStream, direction: str, workload: str, service: str,
                inbound: bool, with_headers: bool, now: float) -> TapRecord:
        """`now`: this hub's clock, the monotonic clock the request's `start` was read from
        (`stream.request_clock`)."""
        head = s.head
        facts = s.conn.facts
        latency = (now - s.start) * 1000.0
        if inbound:
            peer = facts.peer
            source = facts.peer_identity or (f"{peer[0]}:{peer[1]}" if peer else "")
            destination, mtls = workload, bool(facts.peer_identity)
        else:
            source = workload
            destination = s.upstream_host or service
            mtls = s.cluster in self._tls
        headers: list[tuple[str, str]] = []
        if with_headers:
            for name, value in head.headers[:MAX_HEADERS]:
                n = _text(name.lower(), 128)
                headers.append((n, REDACTED if n in REDACTED_HEADERS
                                else _text(value, MAX_HEADER_VALUE)))
        grpc_status = ""
        if head.version == b"2" and is_grpc(head.headers):
            grpc_status = call_status(s.grpc_status, s.status, s.flags)
        return TapRecord(
            ts_ms=int((self._wall() - latency / 1000.0) * 1000), direction=direction,
            workload=workload, service=service, method=_text(head.method, 32),
            authority=_text(head.authority), path=_text(head.path),
            scheme=head.scheme.decode("latin-1"),
            protocol=_PROTOCOLS.get(head.version, ""), status=s.status, flags=s.flags,
            grpc_status=grpc_status, latency_ms=round(latency, 3), bytes_in=s.bytes_in,
            bytes_out=s.bytes_out,
            source=source, destination=destination, mtls=mtls,
            cluster="" if s.cluster == "-" else s.cluster, headers=headers)


__all__ = ["TapHub"]
