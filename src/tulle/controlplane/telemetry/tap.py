"""The control plane's side of live tap: watchers, the proxies each one taps, and the records
in between (ADR 0056).

Why a broker and not a pass-through: a watcher (`tulle tap`, `tulle top`, the dashboard) names
a Service or a workload, not proxies.  The broker picks the connected proxies that can see
that traffic and announced the feature `tap`, sends each a `TapStart`, renews it while the
watcher stays (a proxy drops a tap that is not renewed: a tap never outlives its watcher, even
if this control plane dies), sends `TapStop` the moment the watcher goes, and starts the tap
on proxies that connect while it runs.

Bounds: at most `MAX_WATCHES` taps at once (a flood of tap requests gets 429s, not proxy
work); a watcher's queue holds `QUEUE` items and what does not fit is counted as dropped
(a slow reader never grows this process); a record is taken only from a proxy the tap was
sent to and only for a workload that proxy's stream was admitted for.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec

from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import Message, TapEvents, TapStart, TapStop, WorkloadInfo
from tulle.proxyconfig.tap import (
    MAX_FIELD,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_RATE,
    MAX_RECORDS_PER_BATCH,
    MIN_RATE,
    REDACTED,
    REDACTED_HEADERS,
    TapMatch,
    TapRecord,
)

log = logging.getLogger("tulle.controlplane.tap")

FEATURE = "tap"
MAX_WATCHES = 16
"""Taps this control plane runs at once, every watcher together."""
MAX_WATCHES_PER_READER = 4
"""Taps one read-only token runs at once, so that one viewer cannot hold every slot for an
hour and lock the admins out (attack review A2, ADR 0060); admin tokens are held only by
`MAX_WATCHES`."""
QUEUE = 1000
"""Items one watcher may have waiting (records, notices); beyond: dropped and counted."""
EXPIRES_MS = 30_000
"""How long a proxy keeps a tap without hearing from us; renewed every third of it."""
MAX_DURATION = 3600.0
"""The longest one watch runs (seconds), however long the watcher stays."""

Kind = Literal["Workload", "Service"]


class TapSession(Protocol):
    """What the broker needs of a proxy's stream session (`push/session.py`)."""

    closed: bool

    def send(self, msg: Message) -> None: ...


class TapError(Exception):
    """The tap cannot start; `status` is the HTTP status for the API."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class TapTarget:
    kind: Kind
    namespace: str
    name: str


Labels = Callable[[str, str], dict[str, str]]
"""The labels of Workload (namespace, name), as the store has them."""
Snapshots = Callable[[tuple[str, str]], ProxyConfig | None]
"""The snapshot compiled for workload (namespace, name), if any."""


def sees_service(snapshots: Snapshots, workloads: Sequence[WorkloadInfo], service: str) -> bool:
    """Whether a proxy fronting `workloads` can see requests to Service `namespace/name`: one
    of its snapshots serves it (`node.service`) or has a cluster for it.  Unknown (no
    snapshot yet): True, the proxy filters anyway."""
    ns, _, name = service.partition("/")
    for w in workloads:
        cfg = snapshots((w.namespace, w.name))
        if cfg is None:
            return True
        if cfg.node.service == name and cfg.node.namespace == ns:
            return True
        for c in cfg.clusters:
            md = c.metadata
            if md is not None and md.service == name and (md.namespace or cfg.node.namespace) == ns:
                return True
    return False


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


def bounded(r: TapRecord, headers: bool) -> dict[str, Any]:
    """Record `r` as a watcher gets it, whatever the proxy put in it (attack review A2, ADR
    0060): no headers unless the watch asked for them (a read-only watcher never asks), the
    values of credential headers redacted, at most `MAX_HEADERS` of them, and every string
    cut to the bounds a proxy keeps itself -- a watcher's queue holds `QUEUE` of these."""
    item: dict[str, Any] = msgspec.to_builtins(r)
    for k, v in item.items():
        if isinstance(v, str) and len(v) > MAX_FIELD:
            item[k] = _cut(v, MAX_FIELD)
    if "headers" in item:
        if not headers:
            del item["headers"]
        else:
            item["headers"] = [
                (n := _cut(str(name).lower(), 128),
                 REDACTED if n in REDACTED_HEADERS else _cut(str(value), MAX_HEADER_VALUE))
                for name, value in item["headers"][:MAX_HEADERS]]
    return item


GROUP_LABELS = ("app", "app.kubernetes.io/name")
"""Labels naming the group (a Kubernetes Deployment, an app) a workload belongs to."""


def _fronts(workloads: Sequence[WorkloadInfo], target: TapTarget,
            labels: Labels) -> list[WorkloadInfo]:
    """The workloads of a session a workload tap covers: by name, or by the group labels
    (a Kubernetes Deployment's pods carry its name in `app`), from the store (a hello cannot
    set labels)."""
    out = []
    for w in workloads:
        if w.namespace != target.namespace:
            continue
        if w.name == target.name:
            out.append(w)
            continue
        have = {**labels(w.namespace, w.name), **w.labels}
        if any(have.get(k) == target.name for k in GROUP_LABELS):
            out.append(w)
    return out


@dataclass(eq=False)
class TapWatch:
    """One watcher's tap."""

    id: str
    target: TapTarget
    match: TapMatch
    rate: float
    headers: bool
    queue: asyncio.Queue[dict[str, Any]] = field(
        default_factory=lambda: asyncio.Queue(QUEUE))
    sessions: dict[TapSession, str] = field(default_factory=dict)
    """The proxies this tap was sent to, with the `namespace/name` each is shown as."""
    admitted: dict[TapSession, frozenset[str]] = field(default_factory=dict)
    refused_by: set[TapSession] = field(default_factory=set)
    """Proxies that refused this tap (over their cap): not asked again."""
    owner: str = ""
    """The read-only token's subject that opened it (held to `MAX_WATCHES_PER_READER`);
    empty for admins."""
    dropped: int = 0
    """Items this watcher lost because it did not read fast enough."""
    closed: bool = False

    def put(self, item: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1

    def start_message(self, match: TapMatch) -> TapStart:
        return TapStart(id=self.id, match=match, rate=self.rate, expires_ms=EXPIRES_MS,
                        headers=self.headers)


class TapBroker:
    """Every tap-capable proxy session, and every open watch."""

    def __init__(self, max_watches: int = MAX_WATCHES,
                 labels: Labels = lambda namespace, name: {},
                 snapshots: Snapshots | None = None) -> None:
        self.max_watches = max_watches
        self.labels = labels
        self.snapshots = snapshots
        """With it, a Service tap goes only to the proxies whose config can see the Service
        (`sees_service`), and renewals bring in proxies whose config came to see it."""
        self.sessions: dict[TapSession, list[WorkloadInfo]] = {}
        self.without: dict[TapSession, list[WorkloadInfo]] = {}
        """Connected proxies that did not announce `tap` (an older build): never sent a tap,
        only named to a watcher whose target they see (`untapped`, ADR 0122)."""
        self.watches: dict[str, TapWatch] = {}
        self.refused = 0
        """Records or batches refused (a proxy speaking for a tap or workload not its own)."""
        self._ids = itertools.count(1)

    # -- proxies ---------------------------------------------------------------------------

    def attach(self, session: TapSession, workloads: Sequence[WorkloadInfo],
               features: Sequence[str]) -> None:
        """A proxy connected (after its hello): it takes part in open and later taps if it
        announced the feature."""
        if FEATURE not in features:
            self.without[session] = list(workloads)
            return
        self.sessions[session] = list(workloads)
        for watch in self.watches.values():
            self._enlist(watch, session, self.sessions[session])

    def detach(self, session: TapSession) -> None:
        self.without.pop(session, None)
        if self.sessions.pop(session, None) is None:
            return
        for watch in self.watches.values():
            who = watch.sessions.pop(session, None)
            watch.admitted.pop(session, None)
            watch.refused_by.discard(session)
            if who is not None:
                watch.put({"type": "proxy-gone", "proxy": who})

    def _match_for(self, watch: TapWatch, workloads: list[WorkloadInfo]) -> TapMatch | None:
        """What to ask of a proxy fronting `workloads` for `watch`; None when it does not see
        the watch's target."""
        t = watch.target
        match = watch.match
        if t.kind == "Workload":
            covered = _fronts(workloads, t, self.labels)
            if not covered:
                return None
            if len(covered) == 1:  # a node agent: only that workload's requests
                w = covered[0]
                match = msgspec.structs.replace(match, workload=f"{w.namespace}/{w.name}")
        elif self.snapshots is not None and not sees_service(self.snapshots, workloads,
                                                             match.service):
            return None
        return match

    def untapped(self, watch: TapWatch) -> list[str]:
        """The connected proxies that see the watch's target but cannot be tapped (they did
        not announce `tap`): named to the watcher, so that half a picture is not taken for
        the whole (ADR 0122)."""
        return sorted({f"{w[0].namespace}/{w[0].name}" for session, w in self.without.items()
                       if not session.closed and self._match_for(watch, w) is not None})

    def _enlist(self, watch: TapWatch, session: TapSession,
                workloads: list[WorkloadInfo]) -> bool:
        if session in watch.refused_by:
            return False
        match = self._match_for(watch, workloads)
        if match is None:
            return False
        names = frozenset(f"{w.namespace}/{w.name}" for w in workloads)
        watch.sessions[session] = f"{workloads[0].namespace}/{workloads[0].name}"
        watch.admitted[session] = names
        session.send(watch.start_message(match))
        return True

    # -- watchers --------------------------------------------------------------------------

    def open(self, target: TapTarget, *, path_prefix: str = "", method: str = "",
             status_min: int = 0, status_max: int = 0, authority: str = "",
             direction: Literal["", "inbound", "outbound"] = "", rate: float = 10.0,
             headers: bool = False, reader: str = "") -> TapWatch:
        """`reader`: the subject of a read-only token, held to `MAX_WATCHES_PER_READER`."""
        if len(self.watches) >= self.max_watches:
            self.refused += 1
            raise TapError(429, f"this control plane runs {self.max_watches} taps already; "
                                f"try again when one ends")
        if reader and sum(w.owner == reader for w in self.watches.values()) \
                >= MAX_WATCHES_PER_READER:
            self.refused += 1
            raise TapError(429, f"a read-only token runs at most {MAX_WATCHES_PER_READER} "
                                f"taps at once; end one first")
        service = (f"{target.namespace}/{target.name}" if target.kind == "Service" else "")
        match = TapMatch(service=service, direction=direction, method=method.upper(),
                         path_prefix=path_prefix, authority=authority.lower(),
                         status_min=status_min, status_max=status_max)
        rate = min(max(rate, MIN_RATE), MAX_RATE)
        watch = TapWatch(id=f"t{next(self._ids)}-{secrets.token_hex(4)}", target=target,
                         match=match, rate=rate, headers=headers, owner=reader)
        self.watches[watch.id] = watch
        for session, workloads in list(self.sessions.items()):
            if not session.closed:
                self._enlist(watch, session, workloads)
        return watch

    def renew(self, watch: TapWatch) -> None:
        """Tell the watch's proxies it is still wanted (before `EXPIRES_MS` runs out), and
        start it on proxies whose config came to see its target since."""
        for session, workloads in list(self.sessions.items()):
            if not session.closed:
                # Resent whole: a proxy that ended it (a restart) starts it again.
                self._enlist(watch, session, workloads)

    def close(self, watch: TapWatch) -> None:
        """The watcher went: stop the tap at every proxy now."""
        if watch.closed:
            return
        watch.closed = True
        self.watches.pop(watch.id, None)
        for session in watch.sessions:
            if not session.closed:
                session.send(TapStop(id=watch.id))
        watch.sessions.clear()
        watch.admitted.clear()
        watch.refused_by.clear()

    # -- what proxies send -----------------------------------------------------------------

    def take(self, session: TapSession, msg: TapEvents) -> None:
        watch = self.watches.get(msg.id)
        if watch is None or session not in watch.sessions:
            if watch is not None:
                self.refused += 1
            return  # a tap that just ended (or never was): its late batches are dropped
        who = watch.sessions[session]
        allowed = watch.admitted.get(session, frozenset())
        for r in msg.records[:MAX_RECORDS_PER_BATCH]:
            if r.workload not in allowed:
                self.refused += 1
                continue
            item = bounded(r, watch.headers)
            item["type"] = "request"
            item["proxy"] = who
            watch.put(item)
        if len(msg.records) > MAX_RECORDS_PER_BATCH:
            self.refused += len(msg.records) - MAX_RECORDS_PER_BATCH
        if msg.dropped:
            watch.put({"type": "dropped", "proxy": who, "count": msg.dropped})
        if msg.ended:
            watch.sessions.pop(session, None)
            if msg.ended.startswith("refused"):
                watch.refused_by.add(session)
            watch.put({"type": "ended", "proxy": who, "reason": msg.ended[:200]})


__all__ = ["EXPIRES_MS", "FEATURE", "MAX_DURATION", "MAX_WATCHES", "MAX_WATCHES_PER_READER",
           "QUEUE", "TapBroker", "TapError", "TapSession", "TapTarget", "TapWatch", "bounded"]
