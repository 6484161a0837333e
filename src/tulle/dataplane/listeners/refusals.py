"""Why a transparent listener refused a connection, in the proxy's log, at a bounded rate.

Under `outboundTrafficPolicy: REGISTRY_ONLY` a connection to an address that is no mesh
Service's and no endpoint's is reset before a byte is read: no protocol is known yet to carry
a reason to the client (Istio resets such TCP connections too).  The counter
`tulle_proxy_protocol_errors_total{kind="no_destination"}` counts every one; this log says
which destination and why, so an operator reading the proxy's log after a "connection reset"
finds the policy that decided (ADR 0087).  A destination the listener refuses by name
(`Destination.refuse`: a meshed pod's undeclared port behind a node agent, ADR 0114) is
counted as `kind="destination_refused"` and logged here too, under the same bound.

A client can open refused connections as fast as it likes, so the log is bounded: per
listener, the first refusal is logged at once and then at most one line every `EVERY_S`,
carrying the number refused since the previous line; the destination named is that
line's.
"""

from __future__ import annotations

import logging
from typing import Final

from tulle.logthrottle import ThrottledByKey

EVERY_S: Final = 10.0
"""The shortest time between two lines of one listener."""

log: Final = logging.getLogger("tulle.proxy")


class RefusalLog:
    """The refusals of every listener of a process (`tulle.logthrottle`, keyed by listener)."""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines = ThrottledByKey(log, EVERY_S)

    def no_destination(self, listener: str, ip: str, port: int, now: float) -> None:
        """A connection to `ip`:`port` on `listener` refused: no destination rule and no
        passthrough.  `now`: the loop's clock."""
        self._lines((listener,), now,
                    "listener %s: refused an outbound connection to %s:%d: no mesh Service or "
                    "endpoint has that address and port, and the mesh's outbound policy is "
                    "REGISTRY_ONLY (Mesh.spec.outboundTrafficPolicy.mode)", listener, ip, port)

    def refused(self, listener: str, ip: str, port: int, now: float) -> None:
        """A connection to `ip`:`port` on `listener` refused by a destination rule that says
        so (`Destination.refuse`, ADR 0114).  `now`: the loop's clock; bounded apart from
        `no_destination`'s lines, so one kind never hides the other."""
        self._lines((listener, "refused"), now,
                    "listener %s: refused an outbound connection to %s:%d: that address is a "
                    "meshed workload's and the port is not one it declares; it is never "
                    "passed through around the workload's inbound side (declare the port on "
                    "the Workload to reach it through the mesh)", listener, ip, port)


REFUSALS: Final = RefusalLog()
"""The process's one log of refusals (listeners are named uniquely in a snapshot)."""
