"""HTTP/2 codec on libnghttp2: the same seam as `http2.py` (bytes in, events out, no I/O).

Why: the pure-Python h2 stack cost 220-300 us per exchange and 77% of the proxy's CPU under
gRPC; libnghttp2 (Debian's, through the cffi module built from `ng2/shim.c`, ADR 0051) does
the framing, HPACK, flow control and the RFC 9113 checks in C.  What Python does per feed is
one `nghttp2_session_mem_recv`, one pass over a flat list of events, and one `mem_send`.

The rules of `http2.py` hold, with these differences of engine:

* Rule 2: outbound DATA waits in a C queue per stream (`shim.c`), read by nghttp2 within the
  peer's windows; `send_data` reports the queue above the high-water mark (after sending what
  the windows allow), and `SendDrained` follows when it empties.
* Rule 5: nghttp2 validates every inbound field (RFC 9113 8.2.1, 8.2.2: CR/LF/NUL, upper-case
  names, connection-specific fields, `te` other than `trailers`, surrounding whitespace) and a
  field it finds invalid makes the request malformed: a stream error (RST_STREAM
  PROTOCOL_ERROR, `StreamRejected` status 0), where h2 made some of them connection errors.
  Which fields stay out of the HPACK table is decided in C (`no_index`): credentials, short
  cookies and per-request ids, as before.  Heads go out through `_pack`, which applies
  `h2translate._filtered`'s rule without building tuples, joined with NUL into one buffer;
  a field holding a NUL itself is refused (the head is not sent), never split.
* Rule 6: nghttp2 keeps a connection going after a graceful GOAWAY both ways by itself.
* Rules 8 and 9: nghttp2 refuses a stream past our SETTINGS_MAX_CONCURRENT_STREAMS alone
  (REFUSED_STREAM) and reports it, which spends the premature-reset budget; the frame budgets
  (`h2guard.py`) still read frame headers before nghttp2 sees the bytes.  nghttp2's own limits
  stay on behind them (CONTINUATION frames per block, queued control frames).
* One read is decoded in steps of at most `TL_KEEP` decoded bytes (shim.c pauses, `feed`
  collects and goes on): HPACK decodes ~40 bytes into ~128 KB, and a read decoded whole once
  filled hundreds of megabytes (ADR 0110).
* Closed streams are forgotten (nghttp2's `no_closed_streams`); the codec keeps per stream
  only what the reset budget needs (`_unanswered`) and our own pending resets (`_ours`).
"""

from __future__ import annotations

from typing import Any, Final

from tulle.dataplane.exchange import MAX_INFORMATIONAL, Headers, RequestHead, ResponseHead
from tulle.dataplane.protocols.h2common import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    MAX_WINDOW,
    NO_ERROR,
    PROTOCOL_ERROR,
    H2Abuse,
    H2Limits,
    H2ProtocolError,
)
from tulle.dataplane.protocols.h2events import (
    DataReceived,
    EndReceived,
    Event,
    GoAwayReceived,
    InformationalFlood,
    InformationalReceived,
    RequestReceived,
    ResetReceived,
    ResponseReceived,
    SendDrained,
    StreamRejected,
)
from tulle.dataplane.protocols.h2fields import FieldMemo
from tulle.dataplane.protocols.h2guard import (
    PREMATURE_LIFETIME,
    RAPID_RESET_KIND,
    Abuse,
    FrameGuard,
    ResetBudget,
)
from tulle.dataplane.protocols.h2translate import (
    _OUT_SKIP,
    MALFORMED,
    decode_trailers,
    request_head,
    response_head,
)
from tulle.dataplane.protocols.ng2._ng2 import ffi, lib

# The C functions of every read and write, bound once: a call through `lib.name` (or
# `ffi.name`) looks the name up on each call.
_recv: Final = lib.tl_recv
_clear: Final = lib.tl_clear
_mem_send: Final = lib.tl_mem_send
_submit_headers: Final = lib.tl_submit_headers
_send_data: Final = lib.tl_send_data
_send_end: Final = lib.tl_send_end
_pending: Final = lib.tl_pending
_consume: Final = lib.nghttp2_session_consume
_remote_settings: Final = lib.nghttp2_session_get_remote_settings
_unpack: Final = ffi.unpack
_buffer: Final = ffi.buffer

# Event types of shim.c.  (`Final`: the compiled module has them as C constants.)
_HEADERS: Final = 1
_DATA: Final = 2
_END: Final = 3
_RESET: Final = 4
_CLOSE: Final = 5
_GOAWAY: Final = 6
_DRAINED: Final = 7
_INVALID: Final = 8
_FRAME_HEADERS: Final = 1
_HCAT_REQUEST: Final = 0
_ERR_REFUSED_STREAM: Final = 533
_ERR_BAD_CLIENT_MAGIC: Final = -903
_ERR_FLOODED: Final = -904
_ERR_TOO_MANY_CONTINUATIONS: Final = -905
_SETTINGS_MAX_CONCURRENT_STREAMS: Final = 3
_SPACE: Final = (0x20, 0x09)
_PING: Final = b"tullepng"
_SHUTDOWN_NOTICE: Final[Any] = getattr(lib, "nghttp2_submit_shutdown_notice", None)
"""(`NgCodec.shutdown_notice`; absent from a cffi module built before ADR 0113.)"""

CONTINUATION_FLOOD_KIND: Final = "h2_continuation_flood"
CONTROL_QUEUE_KIND: Final = "h2_control_queue_flood"


def _pack(flat: list[bytes], headers: Headers, trailers: bool = False) -> None:
    """Append the regular fields of an exchange head to `flat` as HTTP/2 sends them (rule 5 of
    http2.py, as `h2translate._filtered`): no pseudo or hop-by-hop field, no framing field
    (`te: trailers` kept outside trailers), surrounding whitespace trimmed."""
    skip = _OUT_SKIP
    for n, raw in headers:
        if n.startswith(b":") or (n in skip and (trailers or n != b"te" or raw != b"trailers")):
            continue
        flat.append(n)
        flat.append(raw.strip(b" \t") if raw and (raw[0] in _SPACE or raw[-1] in _SPACE)
                    else raw)


_DEFAULT_LIMITS: Final = H2Limits()


class NgCodec:
    """One HTTP/2 connection, client or server side, on libnghttp2."""

    __slots__ = ("_guard", "_interim", "_limit", "_memo", "_ours", "_out", "_resets", "_t",
                 "_terminated", "_unanswered", "_write_blocked", "client_side", "goaway_sent",
                 "high_water")

    def __init__(self, *, client_side: bool, limits: H2Limits = _DEFAULT_LIMITS,
                 now: float = 0.0) -> None:
        hard = limits.max_header_bytes * 2
        # (windows capped at HTTP/2's 2^31 - 1 here too: past 2^32 - 1 the C call refuses them)
        t = lib.tl_new(0 if client_side else 1, limits.max_concurrent_streams,
                       min(limits.stream_window, MAX_WINDOW),
                       min(limits.connection_window, MAX_WINDOW), hard)
        if t == ffi.NULL:
            raise MemoryError("nghttp2 session")
        self._t = ffi.gc(t, lib.tl_del)
        self._limit = limits.max_header_bytes
        self.client_side = client_side
        self.high_water = limits.high_water
        self._write_blocked = False
        self.goaway_sent = False
        self._terminated = False
        self._out: list[bytes] = []
        """Bytes nghttp2 produced before `data_to_send` was asked for them."""
        g = limits.guard
        self._guard = FrameGuard(g, now) if g is not None and not client_side else None
        self._resets = (ResetBudget(g.max_premature_resets)
                        if g is not None and not client_side and g.max_premature_resets else None)
        self._unanswered: dict[int, float] = {}
        """Server side with a reset budget: streams without a response head -> opened at."""
        self._ours: set[int] = set()
        """Streams we reset with an error code whose close is still to be reported (and
        ignored: the driver already knows)."""
        self._interim: dict[int, int] = {}
        """Client side: streams that got 1xx heads and no final one yet -> how many."""
        self._memo = FieldMemo()
        """What this connection already accepted: server side, request fields and the
        authority (`request_head`); client side, trailer fields (`decode_trailers`).  Never
        both: the two checks differ (a trailer value also may not start or end with
        whitespace)."""

    # -- inbound -------------------------------------------------------------------------

    def feed(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Bytes from the peer -> events.  `now` (monotonic seconds) feeds the abuse budgets."""
        t = self._t
        guard = self._guard
        if guard is not None:
            if t.data_frames:
                guard.data_sent += t.data_frames
                t.data_frames = 0
            try:
                guard.scan(data, now, self._write_blocked)
            except Abuse as exc:
                self._terminate(ENHANCE_YOUR_CALM)
                raise H2Abuse(exc.kind, exc.detail) from exc
        rv: int = _recv(t, data, len(data))
        events: list[Event] = []
        if t.paused:
            rv = self._feed_paused(data, rv, events, now)
        if rv < 0:
            self._fatal(rv)
        nev: int = t.nev
        if nev:
            self._collect(events, now, nev)
        self._pump()
        if t.term_code and not self._terminated:
            self._terminated = True
            self._raise_terminated()
        nev = t.nev
        if nev:
            self._collect(events, now, nev)
        return events

    def _feed_paused(self, data: bytes, rv: int, events: list[Event], now: float) -> int:
        """shim.c paused the read: its arena holds as much as one read may fill (TL_KEEP, ADR
        0110).  Collect it, then feed the rest (through a pointer: slicing `data` at each pause
        would copy the rest again and again); returns the last `tl_recv`'s result."""
        t = self._t
        buf = ffi.from_buffer("uint8_t[]", data)
        done = 0
        n = len(data)
        while t.paused and rv >= 0:
            done += rv
            nev: int = t.nev
            if nev:
                self._collect(events, now, nev)
            else:  # only blocks nghttp2 dropped: forget them all the same
                _clear(t)
            rv = _recv(t, buf + done, n - done)
        return rv

    def _collect(self, events: list[Event], now: float, nev: int) -> None:
        """Read the `nev` event words shim.c queued (typed, so the compiled loop reads them as
        C integers) and the arena they point into, once."""
        t = self._t
        ev: list[int] = _unpack(t.ev, nev)
        alen: int = t.alen
        arena: bytes = _buffer(t.arena, alen)[:] if alen else b""
        _clear(t)
        client = self.client_side
        ours = self._ours
        for i in range(0, len(ev), 5):
            typ = ev[i]
            sid = ev[i + 1]
            if typ == _DATA:
                off = ev[i + 3]
                n = ev[i + 4]
                events.append(DataReceived(sid, arena[off:off + n], n))
            elif typ == _HEADERS:
                if ours and sid in ours:
                    # A stream we reset: the rest of the read may still hold its heads (a 1xx
                    # flood's thousands, ADR 0115); nobody wants them, so none is decoded.
                    continue
                off = ev[i + 3]
                n = ev[i + 4]
                parts = arena[off:off + n - 1].split(b"\0") if n else []
                fields = [(parts[k], parts[k + 1]) for k in range(0, len(parts) - 1, 2)]
                flags = ev[i + 2]
                end = bool(flags & 1)
                if not client:
                    if flags >> 1 == 0:
                        self._on_request(sid, fields, end, now, events)
                    else:
                        self._on_trailers(sid, fields, now, events)
                elif parts and parts[0] == b":status":
                    head = response_head(fields)
                    if head.status < 200:
                        self._informational(sid, head, events)
                    else:
                        if self._interim:
                            self._interim.pop(sid, None)
                        events.append(ResponseReceived(sid, head, end))
                else:
                    self._on_trailers(sid, fields, now, events)
            elif typ == _END:
                events.append(EndReceived(sid, None))
            elif typ == _RESET:
                if self._interim:
                    self._interim.pop(sid, None)
                self._ours.discard(sid)
                self._on_reset(sid, ev[i + 2], now, events)
            elif typ == _CLOSE:
                if self._interim:
                    self._interim.pop(sid, None)
                if sid in self._ours:
                    self._ours.discard(sid)
                else:  # a stream error nghttp2 raised: the peer broke a stream rule
                    self._on_reset(sid, ev[i + 2], now, events)
            elif typ == _DRAINED:
                events.append(SendDrained(sid))
            elif typ == _GOAWAY:
                events.append(GoAwayReceived(ev[i + 2], ev[i + 3]))
            elif typ == _INVALID:
                self._on_invalid(sid, ev[i + 2], ev[i + 3], events)

    def _informational(self, sid: int, head: ResponseHead, events: list[Event]) -> None:
        """A 1xx head: passed on up to `MAX_INFORMATIONAL` a stream; past it the stream is
        reset and `InformationalFlood` says why (its further heads are dropped: `_ours`)."""
        n = self._interim.get(sid, 0) + 1
        if n > MAX_INFORMATIONAL:
            del self._interim[sid]
            self.reset(sid, PROTOCOL_ERROR)
            events.append(InformationalFlood(sid))
            return
        self._interim[sid] = n
        events.append(InformationalReceived(sid, head))

    def _on_request(self, sid: int, fields: list[tuple[bytes, bytes]], end: bool, now: float,
                    events: list[Event]) -> None:
        head = request_head(fields, self._limit, self._memo)
        if end and not isinstance(head, tuple) and head.content_length:
            # RFC 9113 8.1.1 (nghttp2 checks it too; kept so both engines agree)
            head = (0, MALFORMED, "content-length on a request without a body")
        if isinstance(head, tuple):
            if head[0] == 0:  # malformed: reset here, the driver only counts it
                self.reset(sid, PROTOCOL_ERROR)
            events.append(StreamRejected(sid, head[0], head[1], head[2], end))
            return
        if self._resets is not None:
            self._unanswered[sid] = now
        events.append(RequestReceived(sid, head, end))

    def _on_trailers(self, sid: int, fields: list[tuple[bytes, bytes]], now: float,
                     events: list[Event]) -> None:
        trailers = decode_trailers(fields, self._memo if self.client_side else None)
        if trailers is not None:
            events.append(EndReceived(sid, trailers))
            return
        # rule 7: a malformed trailer section is a stream error too (and, provoked by the
        # peer, counts as a reset it sent: MadeYouReset, CVE-2025-8671)
        opened = self._unanswered.pop(sid, None) if self._unanswered else None
        self.reset(sid, PROTOCOL_ERROR)
        events.append(ResetReceived(sid, PROTOCOL_ERROR))
        if opened is not None and now - opened < PREMATURE_LIFETIME:
            self._premature()

    def _on_reset(self, sid: int, code: int, now: float, events: list[Event]) -> None:
        opened = self._unanswered.pop(sid, None) if self._unanswered else None
        events.append(ResetReceived(sid, code))
        # Counted whoever sent the RST_STREAM: nghttp2 resets a stream itself when the peer
        # breaks a stream rule, and a reset the peer provokes costs what one it sends does.
        if opened is not None and now - opened < PREMATURE_LIFETIME:
            self._premature()

    def _on_invalid(self, sid: int, what: int, error: int, events: list[Event]) -> None:
        if error == _ERR_REFUSED_STREAM:
            # A stream opened past our limit cost a decode and got nothing: it counts against
            # the same budget as a premature reset.
            if self._resets is not None:
                self._premature()
            return
        if (not self.client_side and what & 0xFF == _FRAME_HEADERS
                and what >> 8 == _HCAT_REQUEST):
            # A request head nghttp2 found malformed (RFC 9113 8.1.1): it resets the stream;
            # the driver counts it.  Its close is then ours to ignore.
            self._ours.add(sid)
            detail = ffi.string(lib.nghttp2_strerror(-error)).decode()
            events.append(StreamRejected(sid, 0, MALFORMED, detail, False))

    def _premature(self) -> None:
        """A stream the peer opened ended by a reset before its response began."""
        assert self._resets is not None
        try:
            self._resets.premature()
        except Abuse as exc:
            self._terminate(ENHANCE_YOUR_CALM)
            raise H2Abuse(exc.kind, exc.detail) from exc

    def _fatal(self, rv: int) -> None:
        """nghttp2 gave up on the input: GOAWAY, and say why."""
        t = self._t
        if t.too_large:
            kind, code, detail = ("header_too_large", ENHANCE_YOUR_CALM,
                                  f"header block above {2 * self._limit} bytes")
        elif rv == _ERR_FLOODED:
            kind, code, detail = CONTROL_QUEUE_KIND, ENHANCE_YOUR_CALM, "outbound queue flooded"
        elif rv == _ERR_TOO_MANY_CONTINUATIONS:
            kind, code, detail = (CONTINUATION_FLOOD_KIND, ENHANCE_YOUR_CALM,
                                  "too many CONTINUATION frames")
        else:
            kind, code = "h2_protocol_error", PROTOCOL_ERROR
            detail = ffi.string(lib.nghttp2_strerror(rv)).decode()
        self._terminate(code)
        if code == ENHANCE_YOUR_CALM and kind != "header_too_large":
            raise H2Abuse(kind, detail)
        raise H2ProtocolError(kind, detail)

    def _raise_terminated(self) -> None:
        """nghttp2 found a connection error and queued GOAWAY itself."""
        t = self._t
        code = t.term_code - 1
        detail = ffi.string(t.errmsg).decode(errors="replace") or f"GOAWAY {code}"
        if t.lib_error == _ERR_TOO_MANY_CONTINUATIONS:
            raise H2Abuse(CONTINUATION_FLOOD_KIND, detail)
        if t.lib_error == _ERR_FLOODED:
            raise H2Abuse(CONTROL_QUEUE_KIND, detail)
        if code == ENHANCE_YOUR_CALM:
            raise H2Abuse(RAPID_RESET_KIND, detail)
        raise H2ProtocolError("h2_protocol_error", detail)

    def _terminate(self, code: int) -> None:
        if not self._terminated:
            self._terminated = True
            self.goaway_sent = True
            lib.nghttp2_session_terminate_session(self._t.s, code)
        self._pump()

    def ack(self, stream_id: int, n: int) -> None:
        """The driver consumed `n` flow-controlled bytes of `stream_id`: reopen the window."""
        if n > 0:
            _consume(self._t.s, stream_id, n)

    # -- outbound ------------------------------------------------------------------------

    def _pump(self) -> None:
        t = self._t
        n: int = _mem_send(t)
        if n > 0:
            self._out.append(_buffer(t.obuf, n)[:])

    def data_to_send(self) -> bytes:
        self._pump()
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def next_stream_id(self) -> int:
        return int(lib.nghttp2_session_get_next_stream_id(self._t.s))

    def _submit(self, sid: int, flat: list[bytes], end: bool) -> int:
        """HEADERS from `flat` (name, value, name, ...), joined with NUL: shim.c splits it and
        refuses a field holding a NUL of its own (HTTP/2 forbids it) rather than split it."""
        blob = b"\0".join(flat)
        return int(_submit_headers(self._t, sid, end, blob, len(blob), len(flat) // 2))

    def send_request(self, head: RequestHead, scheme: bytes, end_stream: bool) -> int:
        """Open a stream with `head` (client side); H2ProtocolError when nghttp2 refuses."""
        if head.authority:
            flat = [b":method", head.method, b":scheme", scheme, b":authority", head.authority,
                    b":path", head.path or b"/"]
        else:  # RFC 9113 8.3.1: no authority to convey, no :authority
            flat = [b":method", head.method, b":scheme", scheme, b":path", head.path or b"/"]
        _pack(flat, head.headers)
        if head.content_length is not None:
            flat += (b"content-length", b"%d" % head.content_length)
        sid = self._submit(-1, flat, end_stream)
        if sid < 0:
            raise H2ProtocolError("h2_protocol_error",
                                  ffi.string(lib.nghttp2_strerror(sid)).decode())
        return sid

    def send_response(self, stream_id: int, head: ResponseHead, end_stream: bool) -> bool:
        status = head.status
        flat = [b":status", b"%d" % status]
        _pack(flat, head.headers)
        if head.content_length is not None and status >= 200 and status != 204:
            flat += (b"content-length", b"%d" % head.content_length)
        return self._headers(stream_id, flat, end_stream)

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> bool:
        """A header block as given (a local reply's); False when the stream is gone."""
        flat: list[bytes] = []
        for n, v in headers:
            flat.append(n)
            flat.append(v)
        return self._headers(stream_id, flat, end_stream)

    def _headers(self, stream_id: int, flat: list[bytes], end_stream: bool) -> bool:
        if self._unanswered and self._unanswered.pop(stream_id, None) is not None:
            self._resets.answered()  # type: ignore[union-attr]  # set only with a budget
        return self._submit(stream_id, flat, end_stream) >= 0

    def send_data(self, stream_id: int, data: bytes) -> bool:
        """Queue `data`; send what the windows allow.  True when the queue is above high water
        (once, until `SendDrained`)."""
        t = self._t
        queued: int = _send_data(t, stream_id, data, len(data))
        if queued > self.high_water:
            self._pump()
            if _pending(t, stream_id) > self.high_water:
                return bool(lib.tl_mark_over(t, stream_id))
        return False

    def send_end(self, stream_id: int, trailers: Headers | None = None) -> None:
        if trailers:
            flat: list[bytes] = []
            _pack(flat, trailers, trailers=True)
            if flat:
                blob = b"\0".join(flat)
                if _send_end(self._t, stream_id, blob, len(blob), len(flat) // 2) == -2:
                    self.reset(stream_id, INTERNAL_ERROR)  # a trailer we cannot send as is
                return
        _send_end(self._t, stream_id, ffi.NULL, 0, 0)

    @property
    def idle(self) -> bool:
        """Nothing queued for any stream."""
        return not self._t.active

    def pending(self, stream_id: int) -> int:
        return int(_pending(self._t, stream_id))

    @property
    def write_blocked(self) -> bool:
        """True while the transport is above its high-water mark: DATA stays queued here."""
        return self._write_blocked

    @write_blocked.setter
    def write_blocked(self, blocked: bool) -> None:
        self._write_blocked = blocked
        lib.tl_set_write_blocked(self._t, blocked)

    def flush(self) -> list[Event]:
        """Send queued DATA the windows now allow; returns the streams that drained."""
        self._pump()
        events: list[Event] = []
        nev: int = self._t.nev
        if nev:
            self._collect(events, 0.0, nev)
        return events

    def reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        if self._unanswered:
            self._unanswered.pop(stream_id, None)
        # Server side, what was submitted before goes out before the RST_STREAM: nghttp2
        # would otherwise drop a response head still queued on the stream (a trailers-only
        # gRPC reply followed by RST_STREAM(NO_ERROR) for the unread request body).  Client
        # side, a request whose HEADERS are still queued is better cancelled unsent.
        if not self.client_side:
            self._pump()
        if lib.tl_reset(self._t, stream_id, error_code) and error_code != NO_ERROR:
            self._ours.add(stream_id)

    def goaway(self, error_code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        """GOAWAY.  With NO_ERROR the streams up to `last_stream_id` go on (graceful);
        with an error code the connection is done."""
        self.goaway_sent = True
        last = self.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        if error_code != NO_ERROR:
            self._terminated = True
        lib.nghttp2_submit_goaway(self._t.s, 0, last, error_code, ffi.NULL, 0)

    def shutdown_notice(self) -> None:
        """A server's GOAWAY with the highest possible last stream (RFC 9113 6.8): the client
        opens no new stream here, and streams still arriving are taken (libnghttp2 refuses
        them after any other GOAWAY).  A `goaway` follows when the connection is to end.
        (None with a cffi module built before it: no notice, the final GOAWAY alone.)"""
        if _SHUTDOWN_NOTICE is not None:
            _SHUTDOWN_NOTICE(self._t.s)

    def ping(self, opaque: bytes = _PING) -> None:
        lib.nghttp2_submit_ping(self._t.s, 0, opaque)

    # -- state ---------------------------------------------------------------------------

    @property
    def highest_inbound_stream_id(self) -> int:
        return int(lib.nghttp2_session_get_last_proc_stream_id(self._t.s))

    @property
    def open_outbound_streams(self) -> int:
        return int(self._t.outbound)

    @property
    def remote_max_concurrent_streams(self) -> int:
        return int(_remote_settings(
            self._t.s, _SETTINGS_MAX_CONCURRENT_STREAMS))

    def stream_open(self, stream_id: int) -> bool:
        return bool(lib.nghttp2_session_find_stream(self._t.s, stream_id) != ffi.NULL)
