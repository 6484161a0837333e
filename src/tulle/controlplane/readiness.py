"""Readiness from the stream: a workload whose proxy is gone leaves its Services' endpoints.

Why through the store (ADR 0040): with two control-plane replicas on one store, a proxy is
connected to one of them, but both compile every Service.  So the replica that holds (or lost)
the stream writes what it saw into the Workload's `status.proxy`, and every replica's compiler
reads it from there like any other input (`compiler/inputs.py` leaves a `Disconnected`
workload out of Service selection).  Nothing here is per replica memory.

What each replica writes:

* `Connected` when a proxy's session starts (after its hello is admitted), with a fresh
  session id and the replica's name -- for a proxy that announces `serving-ack` (ADR 0116),
  only once it serves: at the hello when its `last_version` names a version it runs (started
  from its disk cache, or back from another replica it kept serving through), else at its
  first ACK of the session.  Until then the session is written `Disconnected` with a reason
  saying `starting: ...` (`STARTING`), claiming the workload like `Connected` does, so the
  endpoint is out while the proxy binds its listeners (a restarted sidecar was an endpoint
  60-70 ms before it listened: 10-15 of 300 req/s failed, ADR 0113).  A first snapshot it
  NACKs keeps it out, the reason naming the rejected version;
* `Disconnected` when that session ends: at once when the proxy closed the stream or reset it,
  or said `Draining` (a stopping sidecar, `dataplane/subscribed.py`, ADR 0092: its stream
  stays up for the drain, the reason says `draining`; when that stream ends, the reason says
  how, the state and `since` stay); after the stream's
  liveness timeout when the proxy vanished without a word (no frame for
  `--stream-liveness-timeout`, 30 s by default: three missed pings).  The write only holds if
  the stored session is still this one: a proxy that already reconnected (to this replica or
  another) is never marked out by its old, half-open stream.
* Nothing when the replica itself stops: the proxies reconnect to another one.

Workloads whose proxy never connected have no `status.proxy` and are selected as before
(declared endpoints without a sidecar keep working); only a workload that has had a proxy is
tracked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tulle.controlplane.store.errors import ConflictError, NotFoundError
from tulle.controlplane.store.protocol import ResourceStore

log = logging.getLogger("tulle.controlplane.readiness")

DEFAULT_LIVENESS_TIMEOUT = 30.0
"""Seconds without a frame from a proxy before its stream is closed and its workload marked
Disconnected (the proxy answers every ping, sent every 10 s)."""

State = Literal["Connected", "Disconnected"]

STARTING = "starting: waiting for the proxy to apply its first config"
"""The reason written, with `Disconnected`, for a session whose proxy does not serve yet
(ADR 0116; the CLI's `cli.proxy_state.STARTING_PREFIX` reads the prefix)."""


def first_config_rejected(version: str) -> str:
    """The reason written while a proxy that does not serve yet rejected its first config."""
    return f"starting: the proxy rejected its first config (version {version}); not serving"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def record(store: ResourceStore, namespace: str, name: str, state: State, reason: str,
                 session: str, instance: str, *, ended: Mapping[str, str] | None = None,
                 force: bool = False) -> bool:
    """Write `status.proxy` of one Workload; False when it no longer applies (the Workload is
    gone, or a Disconnected for a session that is no longer the stored one).

    `ended` (for Disconnected): several sessions of this replica that ended, with their
    reasons; the one stored, if any, is written out (else, with none stored, `session`).
    `force` (for Disconnected): whatever session is stored, as after this replica's own
    Connected for `session` (`PresenceWriter` folded that one into this write)."""
    for _ in range(5):
        try:
            current = await store.get("Workload", namespace, name)
        except NotFoundError:
            return False
        status: dict[str, Any] = dict(current.get("status") or {})
        stored = status.get("proxy") or {}
        if state == "Disconnected" and ended and stored.get("session") in ended:
            session = stored["session"]
            reason = ended[session]
        elif state == "Disconnected" and not force and stored.get("session") not in (None,
                                                                                    session):
            return False  # the proxy is back on another stream
        same = stored.get("state") == state and stored.get("session") == session
        if same and stored.get("reason") == reason:
            return True
        # The same session's same state with a new reason (a stream that said `Draining`,
        # then ended, ADR 0092) keeps its `since`: when the workload left the endpoints.
        proxy = {"state": state, "reason": reason,
                 "since": stored.get("since") if same and stored.get("since") else _now(),
                 "session": session, "controlPlane": instance}
        status["proxy"] = proxy
        try:
            await store.update_status({**current, "status": status})
        except ConflictError:
            continue
        except NotFoundError:
            return False
        log.info("workload %s/%s: proxy %s (%s)", namespace, name, state.lower(), reason)
        return True
    log.warning("workload %s/%s: could not record proxy %s (conflicts)", namespace, name,
                state.lower())
    return False


class PresenceWriter:
    """Writes `status.proxy` one at a time, in the order sessions reported them.

    Why a queue: a fleet connecting at once (after a control-plane restart) reports thousands
    of sessions within a second.  Written concurrently, those writes would all queue in the
    store ahead of the admissions of the proxies still saying hello (each consumes a token: a
    store write too).  One write in flight keeps them behind the admissions, and FIFO keeps
    one workload's Connected before its Disconnected.  (`make bench-controlplane` at 200
    Services / 400 proxies: initial sync 2.14 s before readiness, 2.24 s with it.)

    The queue holds each workload once (ADR 0109): reports for a workload still waiting are
    folded into the one write they amount to (`_Pending`).  One report per session start and
    end, in a queue with one write in flight, grew without bound under a proxy reconnecting
    in a loop (78 reconnects/s outran the writer): every other workload's Disconnected
    waited behind that backlog, so a dead proxy stayed in its Services' endpoints.  Folded,
    the queue is at most one entry per workload, and a workload's writes never fall behind
    by more than one round of the queue.
    """

    def __init__(self, store: ResourceStore, instance: str) -> None:
        self.store = store
        self.instance = instance
        self.pending: dict[tuple[str, str], _Pending] = {}
        """Workloads with reports not written yet, in the order of their first report."""
        self._wake = asyncio.Event()
        self.written = 0
        self.folded = 0
        """Reports that joined a workload's pending write instead of making one of their
        own."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop writing; what is still queued is dropped (this replica stops: its proxies
        reconnect elsewhere and report again)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def submit(self, keys: list[tuple[str, str]], connected: bool, reason: str,
               session: str, *, claim: bool = False) -> None:
        """`claim` (a `Disconnected` at a session's start, `STARTING`): written whatever
        session is stored, as a `Connected` is."""
        state: State = "Connected" if connected else "Disconnected"
        for key in keys:
            p = self.pending.get(key)
            if p is None:
                self.pending[key] = p = _Pending()
            else:
                self.folded += 1
            p.add(state, reason, session, claim=claim or connected)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            key = next(iter(self.pending))
            p = self.pending.pop(key)
            ns, name = key
            try:
                if p.final is not None:
                    state, reason, session = p.final
                    await record(self.store, ns, name, state, reason, session, self.instance,
                                 force=True)
                else:
                    first = next(iter(p.ended))
                    await record(self.store, ns, name, "Disconnected", p.ended[first], first,
                                 self.instance, ended=p.ended)
                self.written += 1
            except Exception:
                log.exception("workload %s/%s: cannot record its proxy's state", ns, name)


@dataclass
class _Pending:
    """The reports of one workload not written yet, folded into the write they amount to when
    written in order with `record`'s rules (a session's start, `Connected` or a claiming
    `STARTING`, is written whatever is stored; any other Disconnected only over its own
    session).  Before any start, Disconnected reports depend on what is stored: `ended` keeps
    them by session (the first applies where nothing is stored).  From the first start on the
    outcome is known: `final`."""

    ended: dict[str, str] = field(default_factory=dict)
    final: tuple[State, str, str] | None = None

    def add(self, state: State, reason: str, session: str, *, claim: bool = False) -> None:
        if claim:  # a session's start, `Connected` or `STARTING`
            self.final = (state, reason, session)
        elif self.final is not None:
            if self.final[2] == session:  # its own session's end (or a new reason for it)
                self.final = (state, reason, session)
        else:
            self.ended[session] = reason
