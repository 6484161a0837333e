"""Rendering a log record (a dict of fields) as a line: JSON, or a compiled text format.

Why compiled: a text format (`%START_TIME% %REQ(:METHOD)% %RESPONSE_CODE%`, Envoy's syntax)
is parsed once per snapshot into literal pieces and field lookups; a line is then a join.
`%REQ(NAME?ALT):LEN%` reads a request header (pseudo-headers `:method`, `:path`,
`:authority`, `:scheme` are the request line's), the first of NAME and ALT present, cut to
LEN characters; the header values a format needs are copied into the record when it is
made (`TextFormat.headers`), so rendering needs nothing but the record.  A missing or empty
value renders as `-` (Envoy's habit).  Values come from peers (paths, headers): JSON escapes
them; in text, control characters, `"` and `\\` are escaped (`\\x1b`, `\\x22`, `\\x5c`) so a
request can forge neither a line nor a field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from tulle.dataplane.telemetry import clip
from tulle.dataplane.telemetry.access_record import escape_c1
from tulle.dataplane.telemetry.flags import response_flags_long
from tulle.proxyconfig.logs import COMMAND

Record = Mapping[str, Any]
"""The fields of one record (`log_fields.ACCESS_FIELDS` / `FLOW_FIELDS` keys), plus
`REQ(...)` keys holding header values a text format asked for."""

_encode = msgspec.json.Encoder().encode
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\"\\]")
"""C0 and C1 controls (C1 `\\x85` is a line break to some readers), and `"` and `\\` (nginx's
`escape=default`): a quote in a value would move the field boundaries a parser of a quoted
format sees, and an unescaped backslash would make a client's literal `\\x1b` read as an
escaped ESC (ADR 0103)."""


def _escape(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group(0)):02x}"


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    s = value if isinstance(value, str) else str(value)
    return _CONTROL.sub(_escape, s) if _CONTROL.search(s) else s


def render_json(record: Record) -> str:
    """One JSON object on one line, fields in the record's order (msgspec: ~10x the stdlib's
    speed; a JSON-format record has no `REQ(...)` keys, only a text format asks for them).
    DEL and the C1 controls are escaped too (`access_record.escape_c1`, ADR 0099)."""
    return escape_c1(_encode(record)).decode()


class TextFormat:
    """A compiled text format."""

    __slots__ = ("headers", "parts")

    def __init__(self, fmt: str) -> None:
        parts: list[str | Callable[[Record], str]] = []
        headers: list[tuple[str, tuple[bytes, ...], int]] = []
        pos = 0
        for m in COMMAND.finditer(fmt):
            if m.start() > pos:
                parts.append(fmt[pos:m.start()])
            pos = m.end()
            name, arg, length = m.group(1), m.group(2), m.group(3)
            limit = int(length) if length else 0
            if name == "REQ":
                key = f"REQ({arg})"
                names = tuple(n.strip().lower().encode() for n in (arg or "").split("?"))
                headers.append((key, names, limit))
                parts.append(_getter(key, 0))  # cut when copied
            elif name == "RESPONSE_FLAGS_LONG":
                parts.append(lambda r: response_flags_long(r.get("response_flags") or ""))
            else:
                parts.append(_getter(name.lower(), limit))
        if pos < len(fmt):
            parts.append(fmt[pos:])
        self.parts = tuple(parts)
        self.headers = tuple(headers)
        """(record key, header names in order of preference, length limit) per `%REQ%`."""

    def render(self, record: Record) -> str:
        return "".join(p if isinstance(p, str) else p(record) for p in self.parts)


def _getter(key: str, limit: int) -> Callable[[Record], str]:
    if limit:
        return lambda r: _text(r.get(key))[:limit]
    return lambda r: _text(r.get(key))


def request_headers(fmt: TextFormat, pseudo: Mapping[bytes, bytes],
                    headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The `%REQ(...)%` values of `fmt` for one request (`pseudo`: `:method` and friends)."""
    out: dict[str, str] = {}
    for key, names, limit in fmt.headers:
        value = b""
        bound = clip.FIELD
        for name in names:
            v = pseudo.get(name)
            if v is None:
                for n, hv in headers:
                    if n == name:
                        v = hv
                        break
            if v:
                value = v
                if name == b":path":
                    bound = clip.PATH
                break
        text = value.decode("latin-1")
        # The format's own `:LEN` cuts silently (Envoy's meaning); the record held in the
        # sink's queue is bounded whatever the format says, with the marker (ADR 0103).
        out[key] = clip.cut_text(text[:limit] if limit else text, bound)
    return out
