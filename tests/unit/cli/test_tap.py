"""`tulle tap`'s lines: readable, and safe for the terminal whatever a proxy sent."""

from __future__ import annotations

from tulle.cli.tap import line, notice
from tulle.cli.tap_stream import tap_query


def test_a_line_shows_the_request_and_escapes_control_characters() -> None:
    r = {"ts_ms": 1_700_000_000_123, "direction": "inbound", "proxy": "shop/api-0",
         "method": "GET", "authority": "api", "path": "/x\x1b[2J\r\n", "status": 503,
         "latency_ms": 12.34, "flags": "UF", "source": "spiffe://td/ns/shop/sa/a",
         "destination": "shop/api-0", "mtls": True,
         "headers": [["x-a", "1\x07"]]}
    text = line(r)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    first, header = text.split("\n")
    assert ".123 inbound  shop/api-0 GET api/x\\x1b[2J\\x0d\\x0a -> 503 12.3ms flags=UF" in first
    assert first.endswith("src=spiffe://td/ns/shop/sa/a dst=shop/api-0 tls=true")
    assert header == "    x-a: 1\\x07"


def test_notices() -> None:
    assert notice({"type": "started", "proxies": ["a", "b"]}) == "# tapping 2 proxies: a, b"
    assert notice({"type": "started", "proxies": []}) == (
        "# tapping 0 proxies: none connected yet")
    assert notice({"type": "heartbeat"}) is None


def test_the_query() -> None:
    assert tap_query("deploy/web", "shop", path="/a", headers=True, method="") == {
        "kind": "deploy", "name": "web", "namespace": "shop", "path": "/a", "headers": "true"}
