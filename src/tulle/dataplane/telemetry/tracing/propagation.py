"""Trace context on the wire: W3C `traceparent`/`tracestate` and B3 (single and multi header).

Why by hand: the proxy reads these headers on every request it traces (sampled or not), and
writes them on every request it forwards.  A few regular-expression matches and one `%`
format are all it takes; an SDK propagator costs tens of microseconds and pulls in packages
the proxy's memory budget has no room for (DESIGN.md section 7).

Rules (each one is an attack test in tests/unit/dataplane/telemetry/tracing/):

* Nothing here raises on a peer's bytes.  A header that does not parse is ignored as if it
  were absent: the request starts a new trace.  Ids are validated to lower-case hex of the
  exact length; all-zero ids and the W3C version `ff` are invalid; a `traceparent` of a
  future version is read by its first 55 characters, as the W3C spec asks.
* What is written is only ever formatted from validated hex (`%b`), so nothing a peer sent
  (CR, LF, a second header) can reach an upstream header through a trace id.  `tracestate`
  is passed on as received only with a valid `traceparent` and only within the spec's
  limits (512 bytes, 32 members, each member by the spec's grammar, no key twice);
  otherwise it is dropped.
* A field that may appear once (`traceparent`, `b3`, each `x-b3-*`) and appears twice is
  read as absent (ADR 0103).
* Reading order: a valid `traceparent` wins; else a B3 single `b3` header; else the
  `x-b3-*` headers.  A B3 header that carries only a sampling decision (`b3: 0`,
  `x-b3-sampled: 1`) keeps the decision and starts a new trace id.
* B3's 64-bit trace ids are left-padded with zeros to W3C's 128 bits.
"""

from __future__ import annotations

import re
from typing import Final

from tulle.dataplane.exchange import Headers

MAX_TRACESTATE: Final = 512
"""Bytes of `tracestate` passed on (W3C: at least 512 must be; longer is dropped here)."""
MAX_TRACESTATE_MEMBERS: Final = 32
MAX_FIELD: Final = 1024
"""Any trace header longer than this is ignored before it is matched."""

NO_DECISION: Final = -1
"""The caller made no sampling decision: the proxy's rate decides."""

_TRACEPARENT: Final = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_B3_SINGLE: Final = re.compile(
    rb"((?:[0-9a-f]{16}){1,2})-([0-9a-f]{16})(?:-([01d]))?(?:-([0-9a-f]{16}))?")
_HEX16_32: Final = re.compile(rb"(?:[0-9a-f]{16}){1,2}")
_HEX16: Final = re.compile(rb"[0-9a-f]{16}")
_MEMBER: Final = re.compile(
    rb"[ \t]*(?:"
    rb"([a-z][a-z0-9_*/-]{0,255}|[a-z0-9][a-z0-9_*/-]{0,240}@[a-z][a-z0-9_*/-]{0,13})"
    rb"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
    rb")?[ \t]*")
"""One `tracestate` list member (W3C Trace Context 3.3.1.3: a simple or multi-tenant key, `=`,
a value of printable ASCII without `,` or `=` that does not end in a space), or an empty one,
with optional whitespace around it; group 1 is the key."""
_DUPLICATE: Final = b"\x00"
"""What a trace field given twice reads as: a value no parser here takes."""
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16
_B3_SAMPLED: Final = {b"1": 1, b"d": 1, b"0": 0, b"true": 1, b"false": 0}

TRACE_HEADERS: Final = frozenset({b"traceparent", b"tracestate", b"b3", b"x-b3-traceid",
                                  b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled",
                                  b"x-b3-flags"})
"""Every field name this module reads or writes."""

W3C: Final = 1
B3: Final = 2
B3_MULTI: Final = 4
FORMATS: Final = {"w3c": W3C, "b3": B3, "b3multi": B3_MULTI}
"""The names of `telemetry.tracing.propagation` and their bits."""

_WRITES: Final = {W3C: (b"traceparent",), B3: (b"b3",),
           B3_MULTI: (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled",
                      b"x-b3-flags")}


class Incoming:
    """The trace context a request arrived with.  `trace_id` / `span_id` are lower-case hex
    (32 / 16 characters) or empty (no context, perhaps a bare sampling decision); `sampled`
    is 1, 0 or `NO_DECISION`."""

    __slots__ = ("sampled", "span_id", "trace_id", "tracestate")

    def __init__(self, trace_id: bytes, span_id: bytes, sampled: int,
                 tracestate: bytes = b"") -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.tracestate = tracestate


def parse_traceparent(value: bytes) -> Incoming | None:
    """A W3C `traceparent`, or None when it is not valid."""
    if len(value) < 55 or len(value) > MAX_FIELD:
        return None
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version, trace_id, span_id, flags = m.groups()
    if version == b"ff" or (version == b"00" and len(value) != 55):
        return None
    if len(value) > 55 and value[55:56] != b"-":  # a future version: more fields after a dash
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return Incoming(trace_id, span_id, int(flags, 16) & 1)


def valid_tracestate(value: bytes) -> bool:
    """Within what this proxy passes on: size and member count, every member by the W3C
    grammar, no key twice (the spec's rules for a list a vendor may propagate; the W3C test
    suite's `test_tracestate_duplicated_keys`, `..._key_illegal_characters`, ...)."""
    if len(value) > MAX_TRACESTATE or value.count(b",") >= MAX_TRACESTATE_MEMBERS:
        return False
    keys: set[bytes] = set()
    for member in value.split(b","):
        m = _MEMBER.fullmatch(member)
        if m is None:
            return False
        key = m.group(1)
        if key is not None:
            if key in keys:
                return False
            keys.add(key)
    return True


def parse_b3(value: bytes) -> Incoming | None:
    """A B3 single header: `{trace}-{span}[-{sampled}[-{parent}]]`, or a bare decision."""
    if len(value) > MAX_FIELD:
        return None
    decision = _B3_SAMPLED.get(value)
    if decision is not None and value in (b"0", b"1", b"d"):
        return Incoming(b"", b"", decision)
    m = _B3_SINGLE.fullmatch(value)
    if m is None:
        return None
    trace_id, span_id, sampled, _parent = m.groups()
    trace_id = trace_id.rjust(32, b"0")
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return Incoming(trace_id, span_id, NO_DECISION if sampled is None else _B3_SAMPLED[sampled])


def parse_b3_multi(trace_id: bytes, span_id: bytes, sampled: bytes,
                   flags: bytes) -> Incoming | None:
    """The `x-b3-*` headers (empty bytes for one that is absent)."""
    decision = NO_DECISION
    if flags == b"1":
        decision = 1  # debug implies sampled
    elif sampled:
        got = _B3_SAMPLED.get(sampled.lower() if len(sampled) <= 5 else b"")
        if got is not None:
            decision = got
    if (trace_id and span_id and len(trace_id) <= 32
            and _HEX16_32.fullmatch(trace_id) is not None
            and _HEX16.fullmatch(span_id) is not None):
        full = trace_id.rjust(32, b"0")
        if full != _ZERO_TRACE and span_id != _ZERO_SPAN:
            return Incoming(full, span_id, decision)
    if decision != NO_DECISION:
        return Incoming(b"", b"", decision)
    return None


def extract(headers: Headers) -> Incoming | None:
    """The context of a request's headers (see the module's reading order); None: none."""
    found = [h for h in headers if h[0] in TRACE_HEADERS]
    return read(found) if found else None


def read(found: Headers) -> Incoming | None:
    """`extract` of the trace fields of a request, already picked out (`TRACE_HEADERS`)."""
    traceparent = tracestate = b3 = b""
    multi: dict[bytes, bytes] | None = None
    for name, value in found:
        # A field that must appear once and came twice is no context at all (W3C test suite:
        # `test_traceparent_duplicated` restarts the trace): taking either copy would let the
        # proxy and the application behind it believe different traces.
        if name == b"traceparent":
            traceparent = _DUPLICATE if traceparent else value
        elif name == b"tracestate":
            # Several fields combine into one list (RFC 9110 5.3).
            tracestate = tracestate + b"," + value if tracestate else value
        elif name == b"b3":
            b3 = _DUPLICATE if b3 else value
        else:
            if multi is None:
                multi = {}
            multi[name] = _DUPLICATE if name in multi else value
    got = None
    if traceparent:
        got = parse_traceparent(traceparent)
        if got is not None:
            if tracestate:
                tracestate = tracestate.strip(b" \t")
                if valid_tracestate(tracestate):
                    got.tracestate = tracestate
            return got
    if b3:
        got = parse_b3(b3)
        if got is not None and got.trace_id:
            return got
    if multi is not None:
        multi_got = parse_b3_multi(multi.get(b"x-b3-traceid", b""),
                                   multi.get(b"x-b3-spanid", b""),
                                   multi.get(b"x-b3-sampled", b""),
                                   multi.get(b"x-b3-flags", b""))
        if multi_got is not None and (multi_got.trace_id or got is None):
            return multi_got
    return got


def written(formats: int) -> frozenset[bytes]:
    """The field names `inject` replaces for `formats` (computed once per tracer)."""
    drop: set[bytes] = set()
    for bit, names in _WRITES.items():
        if formats & bit:
            drop.update(names)
    if formats & W3C:
        drop.add(b"tracestate")
    return frozenset(drop)


def inject(headers: Headers, formats: int, trace_id: bytes, span_id: bytes, parent_id: bytes,
           sampled: bool, tracestate: bytes, drop: frozenset[bytes] | None = None,
           present: bool = True) -> None:
    """Write the context the upstream sees: `span_id` (the proxy's span) as its parent, in
    every format of `formats`, replacing what the request carried in those formats (`drop`:
    `written(formats)`; `present`: False when the request has no trace field at all).
    Formats not configured pass through as received.  `tracestate` goes with `traceparent`
    (empty: none; a received one that was not passed on is removed)."""
    if present:
        if drop is None:
            drop = written(formats)
        if any(n in drop for n, _ in headers):
            headers[:] = [(n, v) for n, v in headers if n not in drop]
    flag = b"1" if sampled else b"0"
    if formats & W3C:
        headers.append((b"traceparent", b"00-%b-%b-0%b" % (trace_id, span_id, flag)))
        if tracestate:
            headers.append((b"tracestate", tracestate))
    if formats & B3:
        if parent_id:
            headers.append((b"b3", b"%b-%b-%b-%b" % (trace_id, span_id, flag, parent_id)))
        else:
            headers.append((b"b3", b"%b-%b-%b" % (trace_id, span_id, flag)))
    if formats & B3_MULTI:
        headers.append((b"x-b3-traceid", trace_id))
        headers.append((b"x-b3-spanid", span_id))
        if parent_id:
            headers.append((b"x-b3-parentspanid", parent_id))
        headers.append((b"x-b3-sampled", flag))
