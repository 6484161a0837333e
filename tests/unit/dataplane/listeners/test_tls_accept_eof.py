"""`TLSAccept.eof_received`: a plain half-close before the TLS layer took the socket keeps it
open (the handshake may still answer); the TLS layer's close_notify is answered False, since
the transport shuts down after it whatever the answer (a True only made uvloop log a
warning).  Either way the EOF is kept for the driver."""

from __future__ import annotations

import ssl
from typing import Any, cast

from tulle.dataplane.listeners.tls import TLSAccept


def _accept() -> TLSAccept:
    return TLSAccept(cast(Any, None), ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), lambda alpn: None)


def test_a_half_close_before_the_tls_layer_keeps_the_socket_open() -> None:
    acc = _accept()
    assert acc.eof_received() is True
    assert acc._eof


def test_a_close_notify_from_the_tls_layer_is_answered_false() -> None:
    acc = _accept()
    acc._started = True  # start_tls has the socket: the TLS layer calls us now
    assert acc.eof_received() is False
    assert acc._eof
