"""The strict origin the fuzz targets compare the proxy against: h11 parsing what the proxy would
send.  If the proxy accepted a message and re-framed it, a strict HTTP/1.1 parser must see exactly
one message with the same method / target / status and body, and nothing after it.
"""

from __future__ import annotations

import h11


def origin_reads_request(wire: bytes) -> tuple[bytes, bytes, bytes]:
    """Parse `wire` as a strict server would: (method, target, body); raise if it is not exactly
    one complete request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(wire)
    method = target = b""
    body = b""
    ended = False
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Request):
            method, target = bytes(ev.method), bytes(ev.target)
        elif isinstance(ev, h11.Data):
            body += bytes(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            ended = True
            break
        elif ev is h11.NEED_DATA or ev is h11.PAUSED:
            break
        else:
            raise AssertionError(f"unexpected h11 event {ev!r}")
    if not ended:
        raise AssertionError("the origin did not see a complete request")
    if conn.trailing_data[0]:
        raise AssertionError(f"bytes after the request: {conn.trailing_data[0][:60]!r}")
    return method, target, body


def origin_reads_response(wire: bytes, head_request: bool) -> tuple[int, bytes]:
    """Parse `wire` as a strict client that sent one GET (or HEAD): (status, body)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=b"HEAD" if head_request else b"GET", target=b"/",
                          headers=[(b"host", b"x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(wire)
    status = 0
    body = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Response):
            status = ev.status_code
        elif isinstance(ev, h11.Data):
            body += bytes(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            if conn.trailing_data[0]:
                raise AssertionError(f"bytes after the response: {conn.trailing_data[0][:60]!r}")
            return status, body
        elif isinstance(ev, h11.InformationalResponse):
            continue
        else:
            raise AssertionError(f"the client did not see one complete response: {ev!r}")
