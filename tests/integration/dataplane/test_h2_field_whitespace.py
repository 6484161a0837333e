"""Attack review A1 (ADR 0045): a field value with whitespace around it never reaches a header
match over HTTP/2 either.  Over HTTP/1 the codec strips it (RFC 9110 5.5); RFC 9113 8.2.1 makes
it malformed in HTTP/2, and the engine refuses it before anything is routed."""

from __future__ import annotations

import pytest
from tests.integration.dataplane.test_hostile_http2 import PROTOCOL_ERROR, setup
from tests.support.h2raw import RawH2, request


@pytest.mark.parametrize("value", [b"true ", b" true", b"true\t"])
async def test_whitespace_around_a_value_is_refused_and_never_forwarded(value: bytes) -> None:
    async with setup() as (srv, p):
        c = await RawH2.connect(p.port())
        sid = c.headers(request("GET", "/p", extra=[(b"x-debug", value)]))
        await c.wait_stream(sid)
        assert sid not in c.status
        assert PROTOCOL_ERROR in (c.resets.get(sid), c.goaway_code)
        assert srv.requests == []
