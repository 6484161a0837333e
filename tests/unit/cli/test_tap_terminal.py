"""Attack review A2 (ADR 0060): what `tulle tap` / `tulle top` print of a record cannot drive
the operator's terminal, C1 controls and bidi overrides included.

An outsider's `Host: x\\xc2\\x9b2J` passes the HTTP/1 parser (llhttp allows obs-text in a field
value) and lands in the tap record's `authority` as U+009B, the one-character CSI.
"""

from __future__ import annotations

import re

from tulle.cli.tap import line, safe
from tulle.cli.top import TopTable
from tulle.controlplane.push import reported

HOSTILE = "x\u009b2J\u009d52;c;AAAA\u0007\u202eevil\u2066\u200b"


def test_c1_controls_and_bidi_overrides_are_escaped_in_a_line() -> None:
    r = {"ts_ms": 1, "direction": "inbound", "proxy": "shop/api-0", "method": "GET",
         "authority": HOSTILE, "path": "/", "status": 200, "latency_ms": 1.0,
         "headers": [["x-a", HOSTILE]]}
    text = line(r)
    assert not re.search("[\u0080-\u009f\u202e\u2066\u200b\u0007]", text), ascii(text)
    assert "x\\x9b2J\\x9d52;c;AAAA\\x07\\u202eevil\\u2066\\u200b" in text


def test_top_table_escapes_them_too() -> None:
    t = TopTable()
    t.add({"direction": "inbound", "source": HOSTILE, "workload": "shop/api-0",
           "method": "GET", "path": "/" + HOSTILE, "status": 200, "latency_ms": 1.0})
    out = t.render(5)
    assert not re.search("[\u0080-\u009f\u202e\u2066\u200b\u0007]", out), ascii(out)


def test_the_cli_escapes_what_the_control_plane_escapes() -> None:
    """One character set for both (`reported.shown` for what proxies report)."""
    every = "".join(chr(c) for c in range(0x3000))
    assert safe(every) == reported.shown(every, limit=len(every))
