"""Which protocol object serves a freshly accepted connection on a listener.

One table from a listener's `protocol` (and `mode`) to a downstream driver.  Detection, TCP relay
and HTTP/2 plug in here; the server knows nothing about protocols.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tulle.dataplane.listeners.context import ListenerHandle
from tulle.dataplane.listeners.http1 import H1Downstream

ProtocolFactory = Callable[[], asyncio.Protocol]


def protocol_factory(handle: ListenerHandle) -> ProtocolFactory:
    """The factory `loop.create_server` calls for each accepted connection."""
    cfg = handle.ctx.cfg
    if cfg.protocol == "http1" and cfg.mode == "explicit" and cfg.tls is None:
        return lambda: H1Downstream(handle)
    raise NotImplementedError(
        f"listener {cfg.name}: protocol {cfg.protocol!r} in {cfg.mode} mode is not available")
