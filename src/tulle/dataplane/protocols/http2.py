"""HTTP/2 codec: a thin seam over `h2.connection.H2Connection`.  Bytes in, events out.  No I/O.

Why a seam: h2 is pure Python and its events carry raw header lists; the drivers want the
exchange values (`RequestHead`, `ResponseHead`) that HTTP/1 produces too, so both protocols
meet in the middle and translation needs nothing else.  A faster drop-in (jh2) can replace h2
behind this class later.

The codec is split in three: this module drives h2's connection (streams, flow control, GOAWAY,
abuse budgets); `h2translate.py` turns header lists into exchange heads and back (rules 1, 5
and 7, and gRPC's form of a local reply); `h2events.py` holds the events it hands out.

Rules of the codec:

1. Heads leave here as exchange values: pseudo-headers become method/path/authority/scheme or
   the status, names are lower case, hop-by-hop headers are gone (`te` survives only as
   `trailers`), `host` folds into the authority, split `cookie` fields are joined again
   (RFC 9113 8.2.3).  Heads going out get the pseudo-headers back and the same filter.
2. Outbound DATA never exceeds the peer's window: `send_data` queues per stream and sends what
   the windows allow; the rest goes out from `flush` when a WINDOW_UPDATE or SETTINGS arrives.
   `send_data` says when a stream's queue is above the high-water mark; a `SendDrained` event
   says when it emptied again, so the driver can pause and resume the producer.
3. Inbound DATA is acknowledged only when the driver says so (`ack`): the driver decides when
   the bytes were consumed, which is what makes a slow reader throttle the sender.
4. A request head larger than the limit is refused on its stream (`StreamRejected`, 431);
   a header block beyond twice the limit, and any frame h2 finds malformed, is a connection
   error: `feed` raises `H2ProtocolError` after queueing GOAWAY.
5. Header checks are split by what they protect.  Inbound, h2 validates every header block
   (`validate_inbound_headers`: illegal characters, upper case, connection-specific fields,
   pseudo-header rules): that is what keeps a peer's CR/LF or NUL away from an HTTP/1 upstream,
   and it stays on.  h2's normalisation both ways and its outbound validation are off: heads
   reach here as exchange values (lower-case names, hop-by-hop fields gone, see exchange.py)
   and `_filtered` (h2translate.py) does the rest of what h2 did per header — drops pseudo and
   hop-by-hop fields, trims surrounding whitespace, and keeps `authorization`, `proxy-authorization` and
   short `cookie` values out of the HPACK dynamic table (never-indexed), as h2 and nghttp2 do;
   per-request IDs (`x-request-id`, trace ids) stay out too, so they do not churn the table.
   Split `cookie` fields are joined by `request_head` itself.  HPACK itself goes through the
   remembering coders of `hpack_memo.py` (same bytes, less Python per header block).
6. GOAWAY is graceful both ways (RFC 9113 6.8: streams up to the last stream id go on).  h2's
   connection state machine closes on any GOAWAY (python-hyper/h2#1181), so a received GOAWAY
   is reported without closing h2's state (`_GracefulStateMachine`), and a graceful GOAWAY we
   send is a frame we serialise ourselves; refusing newer streams is the driver's job.
7. What h2 lets through but HTTP/1 would read differently is checked on the way in
   (`h2fields.py`, from `h2translate.py`): `:method` a token, `:path` origin-form (or `*` for
   OPTIONS), `:authority` host[:port] without userinfo, field names tokens, values without
   control characters, one `content-length` of digits (an equal repeat collapses, RFC 9110
   8.6).  Failing that the request is malformed: RST_STREAM(PROTOCOL_ERROR) here (RFC 9113
   8.1.1), reported as `StreamRejected` with status 0 so the driver counts it; nothing is
   forwarded.  h2's own checks (CR/LF/NUL, whitespace, upper case, connection-specific fields)
   stay connection errors, which RFC 9113 5.4.1 allows.
8. A stream past our SETTINGS_MAX_CONCURRENT_STREAMS is refused alone (`_Connection`):
   RST_STREAM(REFUSED_STREAM), the connection lives on.
9. Server side, abuse budgets (`h2guard.py`): frame headers are counted before h2 parses the
   bytes, premature resets as h2 reports them, whoever sent the RST_STREAM (a reset the peer
   provokes counts as one it sends).  A blown budget queues GOAWAY(ENHANCE_YOUR_CALM)
   and `feed` raises `H2Abuse`.
10. Client side, a request's HEADERS are encoded when the bytes are asked for
    (`data_to_send`), not when the request is opened: a request reset before then is dropped
    whole, and neither its HEADERS nor an RST_STREAM for it reach the peer (ADR 0132).  HPACK
    rules out encoding it and then leaving it unsent: the peer's table would lack its
    entries.  libnghttp2 does the same for the other engine (shim.c `tl_reset`).
"""

from __future__ import annotations

from collections import deque

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from h2.events import Event as H2Event
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame

from tulle.dataplane.exchange import MAX_INFORMATIONAL, Headers, RequestHead, ResponseHead
from tulle.dataplane.protocols.h2common import (  # noqa: F401  (re-exported)
    CANCEL,
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
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
    Abuse,
    FrameGuard,
    ResetBudget,
)
from tulle.dataplane.protocols.h2translate import (
    MALFORMED,
    decode_trailers,
    encode_request,
    encode_response,
    encode_trailers,
    request_head,
    response_head,
)
from tulle.dataplane.protocols.hpack_memo import MemoDecoder, MemoEncoder


def _raw(headers: object) -> list[tuple[bytes, bytes]]:
    """h2 hands out HeaderTuples of bytes (header_encoding=None); this is only a typed view."""
    return headers  # type: ignore[return-value]


_DEFAULT_LIMITS = H2Limits()


class _GracefulStateMachine(h2.connection.H2ConnectionStateMachine):
    """h2's connection state machine, except that receiving GOAWAY does not close it.

    Done in the transition table rather than by overriding `process_input`, which h2 calls for
    every frame sent or received."""

    _transitions = {
        **h2.connection.H2ConnectionStateMachine._transitions,
        **{(state, h2.connection.ConnectionInputs.RECV_GOAWAY): (None, state)
           for state in h2.connection.ConnectionState
           if state is not h2.connection.ConnectionState.CLOSED},
    }


class _Connection(h2.connection.H2Connection):
    """h2's connection, except that a stream past our SETTINGS_MAX_CONCURRENT_STREAMS is
    refused on its own, RST_STREAM(REFUSED_STREAM) (RFC 9113 5.1.2), where h2 raises
    TooManyStreamsError, a connection error, before even decoding the block."""

    refused = 0
    """Streams refused so far and not yet reported to the codec."""

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[H2Event]]:
        try:
            return super()._receive_headers_frame(frame)
        except h2.exceptions.TooManyStreamsError:
            if self.config.client_side:
                raise
        # Decode the block anyway: HPACK's dynamic table must stay in step with the peer's.
        headers = h2.connection._decode_headers(self.decoder, frame.data)
        events = self.state_machine.process_input(h2.connection.ConnectionInputs.RECV_HEADERS)
        stream = self._get_or_create_stream(frame.stream_id,
                                            h2.connection.AllowedStreamIDs.ODD)
        frames, _ = stream.receive_headers(headers, "END_STREAM" in frame.flags,
                                           self.config.header_encoding)
        frames.extend(stream.reset_stream(h2.errors.ErrorCodes.REFUSED_STREAM))
        self.refused += 1
        return frames, events


# -- the connection -------------------------------------------------------------------------

class _Out:
    """Per-stream outbound queue: DATA waiting for window, then maybe trailers/END_STREAM."""

    __slots__ = ("chunks", "end", "over", "size", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.end = False
        self.trailers: Headers | None = None
        self.over = False


class H2Codec:
    """One HTTP/2 connection, client or server side."""

    __slots__ = (
        "_conn",
        "_drained",
        "_extra",
        "_frames_sent",
        "_guard",
        "_interim",
        "_limit",
        "_memo",
        "_out",
        "_resets",
        "_skip_end",
        "_trailers",
        "_unanswered",
        "_unsent",
        "_unsent_next",
        "client_side",
        "goaway_sent",
        "high_water",
        "write_blocked",
    )

    def __init__(self, *, client_side: bool, limits: H2Limits = _DEFAULT_LIMITS,
                 now: float = 0.0) -> None:
        cfg = h2.config.H2Configuration(client_side=client_side, header_encoding=None,
                                        validate_inbound_headers=True,
                                        normalize_inbound_headers=False,
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False)  # rule 5
        conn = _Connection(config=cfg)
        conn.state_machine = _GracefulStateMachine()
        hard = limits.max_header_bytes * 2
        codes = h2.settings.SettingCodes
        initial: dict[h2.settings.SettingCodes, int] = {
            codes.MAX_HEADER_LIST_SIZE: hard,
            codes.INITIAL_WINDOW_SIZE: limits.stream_window,
        }
        if client_side:
            initial[codes.ENABLE_PUSH] = 0
        else:
            initial[codes.MAX_CONCURRENT_STREAMS] = limits.max_concurrent_streams
        conn.local_settings = h2.settings.Settings(client=client_side, initial_values=initial)
        conn.decoder = MemoDecoder(hard)
        conn.encoder = MemoEncoder()
        conn.initiate_connection()
        if limits.connection_window > 65_535:
            conn.increment_flow_control_window(limits.connection_window - 65_535)
        self._conn = conn
        self._limit = limits.max_header_bytes
        self.client_side = client_side
        self.high_water = limits.high_water
        self.write_blocked = False
        """True while the transport is above its high-water mark: DATA stays queued here."""
        self._out: dict[int, _Out] = {}
        self._trailers: dict[int, Headers] = {}
        self._skip_end: set[int] = set()
        self._interim: dict[int, int] = {}
        """Client side: streams that got 1xx heads and no final one -> how many; -1 for one
        reset for too many, until the end of the read that did it."""
        self._drained: list[Event] = []
        self._extra = b""
        self.goaway_sent = False
        g = limits.guard
        self._guard = FrameGuard(g, now) if g is not None and not client_side else None
        self._resets = (ResetBudget(g.max_premature_resets)
                        if g is not None and not client_side and g.max_premature_resets else None)
        self._unanswered: dict[int, float] = {}
        """Server side with a reset budget: streams without a response head -> opened at."""
        self._frames_sent = 0
        self._memo = FieldMemo() if not client_side else None
        self._unsent: dict[int, tuple[list[tuple[bytes, bytes]], bool]] = {}
        """Client side: requests opened whose HEADERS are not encoded yet (stream id -> fields,
        END_STREAM), in stream id order; encoded by `data_to_send` (rule 10)."""
        self._unsent_next = 0
        """The stream id after the last one `send_request` gave (h2 learns of an id when its
        HEADERS are encoded, and a cancelled one never is)."""

    # -- inbound -------------------------------------------------------------------------

    def feed(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Bytes from the peer -> events.  `now` (monotonic seconds) feeds the abuse budgets."""
        guard = self._guard
        try:
            if guard is not None:
                if self._frames_sent:
                    guard.data_sent += self._frames_sent
                    self._frames_sent = 0
                guard.scan(data, now, self.write_blocked)
            conn = self._conn
            raw = conn.receive_data(data)
            if conn.refused:
                # A stream opened past our limit cost a decode and got nothing: it counts
                # against the same budget as a premature reset.
                n, conn.refused = conn.refused, 0
                if self._resets is not None:
                    for _ in range(n):
                        self._resets.premature()
        except Abuse as exc:
            self._calm_down()
            raise H2Abuse(exc.kind, exc.detail) from exc
        except h2.exceptions.DenialOfServiceError as exc:
            raise H2ProtocolError("header_too_large", str(exc)) from exc
        except h2.exceptions.ProtocolError as exc:
            if self._conn.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                # h2 rejects a bad preface before its own error handling: say GOAWAY ourselves.
                self._conn.close_connection(PROTOCOL_ERROR)
            raise H2ProtocolError("h2_protocol_error", str(exc) or type(exc).__name__) from exc
        events: list[Event] = []
        window_moved = False
        for ev in raw:
            if isinstance(ev, h2.events.DataReceived):
                events.append(DataReceived(ev.stream_id or 0, ev.data or b"",
                                           ev.flow_controlled_length or 0))
            elif isinstance(ev, h2.events.RequestReceived):
                self._on_request(ev, events, now)
            elif isinstance(ev, h2.events.ResponseReceived):
                sid = ev.stream_id or 0
                end = ev.stream_ended is not None
                if end:
                    self._skip_end.add(sid)
                if self._interim:
                    if self._interim.get(sid, 0) < 0:
                        continue
                    self._interim.pop(sid, None)
                events.append(ResponseReceived(sid, response_head(_raw(ev.headers)), end))
            elif isinstance(ev, h2.events.StreamEnded):
                sid = ev.stream_id or 0
                if sid in self._skip_end:
                    self._skip_end.discard(sid)
                else:
                    events.append(EndReceived(sid, self._trailers.pop(sid, None)))
            elif isinstance(ev, h2.events.TrailersReceived):
                sid = ev.stream_id or 0
                trailers = decode_trailers(_raw(ev.headers))
                if trailers is not None:
                    self._trailers[sid] = trailers
                else:  # rule 7: a malformed trailer section is a stream error too
                    opened = self._unanswered.get(sid) if self._unanswered else None
                    self.reset(sid, PROTOCOL_ERROR)
                    self._skip_end.add(sid)
                    events.append(ResetReceived(sid, PROTOCOL_ERROR))
                    if opened is not None and now - opened < PREMATURE_LIFETIME:
                        # A reset the peer provoked is a reset the peer sent (MadeYouReset,
                        # CVE-2025-8671): else HEADERS + bad trailers would open and drop
                        # upstream requests past the rapid-reset budget.
                        self._premature()
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                sid = ev.stream_id or 0
                n = self._interim.get(sid, 0)
                if n < 0:
                    continue  # reset for a flood: the rest of the read is dropped
                if n >= MAX_INFORMATIONAL:  # (ADR 0115; h2 decoded the whole read already)
                    self.reset(sid, PROTOCOL_ERROR)
                    self._interim[sid] = -1
                    events.append(InformationalFlood(sid))
                    continue
                self._interim[sid] = n + 1
                events.append(InformationalReceived(sid, response_head(_raw(ev.headers))))
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                window_moved = True
            elif isinstance(ev, h2.events.StreamReset):
                sid = ev.stream_id or 0
                opened = self._unanswered.pop(sid, None)
                self._forget(sid)
                events.append(ResetReceived(sid, int(ev.error_code or 0)))
                # Counted whoever sent the RST_STREAM: h2 resets a stream itself when the peer
                # breaks a stream rule (DATA after END_STREAM, window overflow), and a reset
                # the peer provokes costs what one it sends does (MadeYouReset, CVE-2025-8671).
                # (Our own `reset` forgets the stream first, so it never counts here.)
                if opened is not None and now - opened < PREMATURE_LIFETIME:
                    self._premature()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                events.append(GoAwayReceived(ev.last_stream_id or 0, int(ev.error_code or 0)))
        if self._interim and -1 in self._interim.values():  # the flooded streams are gone
            self._interim = {k: v for k, v in self._interim.items() if v > 0}
        if window_moved:
            for sid, out in list(self._out.items()):
                self._flush_stream(sid, out)
        if self._drained:
            events.extend(self._drained)
            self._drained = []
        return events

    def _on_request(self, ev: h2.events.RequestReceived, events: list[Event],
                    now: float) -> None:
        sid = ev.stream_id or 0
        end = ev.stream_ended is not None
        if end:
            self._skip_end.add(sid)
        head = request_head(_raw(ev.headers), self._limit, self._memo)
        if end and not isinstance(head, tuple) and head.content_length:
            # RFC 9113 8.1.1: content-length must equal the DATA that follows, and none does.
            # h2 checks DATA against it but not a HEADERS frame that ends the stream; passed on,
            # an HTTP/1 origin would wait for a body that never comes.
            head = (0, MALFORMED, "content-length on a request without a body")
        if isinstance(head, tuple):
            if head[0] == 0:  # malformed: reset here, the driver only counts it
                self.reset(sid, PROTOCOL_ERROR)
                if end:  # its StreamEnded follows in this batch; else nothing will remove it
                    self._skip_end.add(sid)
            events.append(StreamRejected(sid, head[0], head[1], head[2], end))
            return
        if self._resets is not None:
            self._unanswered[sid] = now
        events.append(RequestReceived(sid, head, end))

    def _premature(self) -> None:
        """A stream the peer opened ended by a reset before its response began."""
        assert self._resets is not None
        try:
            self._resets.premature()
        except Abuse as exc:
            self._calm_down()
            raise H2Abuse(exc.kind, exc.detail) from exc

    def _calm_down(self) -> None:
        """An abuse budget is blown: GOAWAY(ENHANCE_YOUR_CALM), nothing more is read."""
        if self._conn.state_machine.state is not h2.connection.ConnectionState.CLOSED:
            self._conn.close_connection(ENHANCE_YOUR_CALM)

    def ack(self, stream_id: int, n: int) -> None:
        """The driver consumed `n` flow-controlled bytes of `stream_id`: reopen the window."""
        if n <= 0:
            return
        try:
            self._conn.acknowledge_received_data(n, stream_id)
        except h2.exceptions.ProtocolError:
            pass  # the stream closed meanwhile; h2 already credited the connection window

    # -- outbound ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        if self._unsent:
            self._send_unsent()
        data = self._conn.data_to_send()
        if self._extra:
            data, self._extra = data + self._extra, b""
        return data

    def next_stream_id(self) -> int:
        return max(self._conn.get_next_available_stream_id(), self._unsent_next)

    def send_request(self, head: RequestHead, scheme: bytes, end_stream: bool) -> int:
        """Open a stream with `head` (client side); its HEADERS are encoded at `data_to_send`
        (rule 10).  What h2 would refuse now it refuses now (a closed connection, the peer's
        concurrency limit), as h2 errors: the caller decides."""
        conn = self._conn
        if conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
            raise h2.exceptions.ProtocolError("the connection is closed")
        unsent = self._unsent
        limit = conn.remote_settings.max_concurrent_streams
        if conn.open_outbound_streams + len(unsent) >= limit:
            raise h2.exceptions.TooManyStreamsError(f"Max outbound streams is {limit}")
        sid = self.next_stream_id()
        unsent[sid] = (encode_request(head, scheme), end_stream)
        self._unsent_next = sid + 2
        return sid

    def _send_unsent(self) -> None:
        """Encode the HEADERS of the requests opened since the last write, in stream id order,
        then what their bodies have queued.  One h2 refuses after all (the peer lowered its
        concurrency limit, or the connection closed, in between) is reported as libnghttp2
        reports it: reset with REFUSED_STREAM, which is safe to retry."""
        unsent, self._unsent = self._unsent, {}
        conn = self._conn
        for sid, (headers, end) in unsent.items():
            try:
                conn.send_headers(sid, headers, end_stream=end)
            except h2.exceptions.ProtocolError:
                self._forget(sid)
                self._drained.append(ResetReceived(sid, REFUSED_STREAM))
                continue
            out = self._out.get(sid)
            if out is not None:
                self._flush_stream(sid, out)

    def send_response(self, stream_id: int, head: ResponseHead, end_stream: bool) -> bool:
        return self.send_headers(stream_id, encode_response(head), end_stream)

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> bool:
        """False when the stream is gone (peer reset) or h2 refused the headers."""
        if self._unanswered and self._unanswered.pop(stream_id, None) is not None:
            self._resets.answered()  # type: ignore[union-attr]  # set only with a budget
        try:
            self._conn.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError:
            self._forget(stream_id)
            return False
        return True

    def send_data(self, stream_id: int, data: bytes) -> bool:
        """Queue `data`; send what the windows allow.  True when the queue is above high water."""
        out = self._out.get(stream_id)
        if out is None:
            out = self._out[stream_id] = _Out()
        if data:
            out.chunks.append(data)
            out.size += len(data)
        self._flush_stream(stream_id, out)
        if out.size > self.high_water and not out.over:
            out.over = True
            return True
        return False

    def send_end(self, stream_id: int, trailers: Headers | None = None) -> None:
        out = self._out.get(stream_id)
        if out is None:
            out = self._out[stream_id] = _Out()
        out.end = True
        out.trailers = encode_trailers(trailers) if trailers else None
        self._flush_stream(stream_id, out)

    @property
    def idle(self) -> bool:
        """Nothing queued for any stream."""
        return not self._out

    def pending(self, stream_id: int) -> int:
        out = self._out.get(stream_id)
        return out.size if out is not None else 0

    def flush(self) -> list[Event]:
        """Send queued DATA the windows now allow; returns the streams that drained."""
        for sid, out in list(self._out.items()):
            self._flush_stream(sid, out)
        drained, self._drained = self._drained, []
        return drained

    def _flush_stream(self, sid: int, out: _Out) -> None:
        if self._unsent and sid in self._unsent:
            return  # its HEADERS have not left: its DATA follows them (`_send_unsent`)
        conn = self._conn
        chunks = out.chunks
        try:
            while chunks and not self.write_blocked:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    return
                chunk = chunks[0]
                if len(chunk) <= window:
                    chunks.popleft()
                    out.size -= len(chunk)
                    last = not chunks and out.end and out.trailers is None
                    conn.send_data(sid, chunk, end_stream=last)
                    self._frames_sent += 1
                    if last:
                        self._done(sid, out)
                        return
                else:
                    chunks[0] = chunk[window:]
                    out.size -= window
                    conn.send_data(sid, chunk[:window])
                    self._frames_sent += 1
            if chunks:
                return
            if out.end:
                if out.trailers is not None:
                    conn.send_headers(sid, out.trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
                self._done(sid, out)
            elif out.over:
                out.over = False
                self._drained.append(SendDrained(sid))
        except h2.exceptions.ProtocolError:
            self._forget(sid)  # the peer reset or closed the stream: drop what was queued

    def _done(self, sid: int, out: _Out) -> None:
        self._out.pop(sid, None)
        if out.over:
            self._drained.append(SendDrained(sid))

    def _forget(self, sid: int) -> None:
        if self._interim and self._interim.get(sid, 0) > 0:
            del self._interim[sid]
        if self._unanswered:
            self._unanswered.pop(sid, None)
        self._out.pop(sid, None)
        self._trailers.pop(sid, None)
        self._skip_end.discard(sid)

    def reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        self._forget(stream_id)
        if self._unsent and self._unsent.pop(stream_id, None) is not None:
            return  # its HEADERS never left: nothing is sent for it, nor reported (rule 10)
        try:
            self._conn.reset_stream(stream_id, error_code)
        except h2.exceptions.ProtocolError:
            pass  # already closed: nothing to reset

    def goaway(self, error_code: int = NO_ERROR, last_stream_id: int | None = None) -> None:
        """GOAWAY.  With NO_ERROR the streams up to `last_stream_id` go on (graceful);
        with an error code the connection is done."""
        self.goaway_sent = True
        if error_code != NO_ERROR:
            self._conn.close_connection(error_code, last_stream_id=last_stream_id)
            return
        last = self.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        self._extra += GoAwayFrame(0, last_stream_id=last, error_code=NO_ERROR).serialize()

    def shutdown_notice(self) -> None:
        """A GOAWAY with the highest possible last stream (RFC 9113 6.8): the client opens no
        new stream here; streams still arriving are taken (h2 does not see the frame)."""
        self._extra += GoAwayFrame(0, last_stream_id=2**31 - 1, error_code=NO_ERROR).serialize()

    def ping(self, opaque: bytes = b"tullepng") -> None:
        self._conn.ping(opaque)

    # -- state ---------------------------------------------------------------------------

    @property
    def highest_inbound_stream_id(self) -> int:
        return int(self._conn.highest_inbound_stream_id)

    @property
    def open_outbound_streams(self) -> int:
        return int(self._conn.open_outbound_streams) + len(self._unsent)

    @property
    def remote_max_concurrent_streams(self) -> int:
        return int(self._conn.remote_settings.max_concurrent_streams)

    def stream_open(self, stream_id: int) -> bool:
        return stream_id in self._conn.streams and not self._conn.streams[stream_id].closed
