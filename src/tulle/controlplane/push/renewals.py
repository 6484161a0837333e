"""How many certificates one admitted stream may have signed: a token bucket per stream.

Why: a renewal `Csr` on an admitted stream was signed every time it arrived, in the stream's
read loop.  A proxy that holds one valid credential (a leaked token, a compromised workload)
could send a few hundred CSRs in one write and have each signed on the event loop -- measured:
200 CSRs in one write, 200 certificates signed (attack review A1, ADR 0045) -- every other
proxy's stream and the REST API waiting meanwhile.  A real proxy renews each certificate once
per half-life, plus once when a CA rotation asks it to: a bucket of `BURST` renewals per
fronted workload, refilled with one per workload every `cert_ttl / 4` (at most every
`MAX_REFILL` seconds, so a short-lived certificate setup still renews freely), is never empty
for it, and holds a flood to a handful of signatures.

`renew` is a session's handling of a renewal `Csr` (kept here, with its budget, so that
`session.py` stays about the stream itself).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec

from tulle.controlplane.ca.authority import CsrError
from tulle.controlplane.push.trust import record_signed
from tulle.proxyconfig.stream import Csr, Error

if TYPE_CHECKING:
    from tulle.controlplane.push.session import ProxySession

log = logging.getLogger("tulle.controlplane.push")

BURST = 4
"""Renewals a stream may ask for at once, per workload it fronts."""
MAX_REFILL = 60.0
"""Seconds: a stream earns at least one renewal per workload this often."""


class RenewalBudget:
    """`take(now)` is True while the stream may have one more certificate signed."""

    __slots__ = ("_at", "_capacity", "_granted", "_interval", "_tokens")

    def __init__(self, workloads: int, cert_ttl_s: float, now: float) -> None:
        n = max(1, workloads)
        self._capacity = float(BURST * n)
        self._tokens = self._capacity
        self._interval = min(MAX_REFILL, max(cert_ttl_s / 4, 0.001)) / n
        """Seconds per renewal earned (all workloads together)."""
        self._at = now
        self._granted = 0
        """Renewals the control plane asked for and not yet used (`grant`)."""

    def grant(self, n: int) -> None:
        """The control plane asked the stream to renew now (a rotation's reissue): its next
        `n` renewals are not taken from the bucket.  Back-to-back rotations once emptied it,
        and the renewal a rotation waits for was refused and the stream closed.  Bounded:
        asking again does not add up, at most `n` are outstanding."""
        self._granted = max(self._granted, n)

    def take(self, now: float) -> bool:
        if self._granted > 0:
            self._granted -= 1
            return True
        self._tokens = min(self._capacity, self._tokens + (now - self._at) / self._interval)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def budget(session: ProxySession) -> RenewalBudget:
    """The stream's renewal budget, made at its first use (admitted streams only)."""
    if session.renewals is None:
        assert session.admitted is not None and session.server.admission is not None
        session.renewals = RenewalBudget(len(session.admitted.all()),
                                         session.server.admission.cert_ttl.total_seconds(),
                                         asyncio.get_running_loop().time())
    return session.renewals


def _refuse(session: ProxySession, reason: str) -> None:
    """The renewal is refused and the stream ends, saying why (the proxy keeps its current
    certificate and reconnects)."""
    session.send(Error(reason=reason))
    session.writer.close()
    session.closed = True


def renew(session: ProxySession, msg: Csr) -> None:
    """Sign a renewal CSR for the identity the stream was admitted as (for a node, the one of
    the workload the CSR names); a refused CSR ends the stream with the reason."""
    admission, admitted = session.server.admission, session.admitted
    if admission is None or admitted is None:
        _refuse(session, "this control plane issues no certificates")
        return
    if not budget(session).take(asyncio.get_running_loop().time()):
        log.warning("proxy %s/%s: renewal refused: too many certificate requests on one "
                    "stream; stream closed", admitted.namespace, admitted.workload)
        _refuse(session, "renewal refused: too many certificate requests on this stream; "
                         "reconnect and renew at half-life")
        return
    who = admitted
    if msg.workload:
        ns, _, name = msg.workload.partition("/")
        found = session.admitted_by_key().get((ns, name))
        if found is None or found is admitted:
            _refuse(session, f"renewal for {msg.workload!r}: not a further workload this "
                             f"stream was admitted for")
            return
        who = found
    try:
        cert = admission.sign(msg.csr, who.identity, who.workload)
        record_signed([s for s in session.node_statuses
                       if (s.namespace, s.name) == (who.namespace, who.workload)],
                      cert, admission.state)
        session.send(cert if who is admitted else msgspec.structs.replace(
            cert, workload=msg.workload))
    except CsrError as exc:
        log.warning("proxy %s/%s: renewal refused: %s", who.namespace, who.workload, exc)
        _refuse(session, str(exc))
