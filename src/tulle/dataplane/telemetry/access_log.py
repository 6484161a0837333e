"""Access logs: one record per HTTP request, made when the request is over.

Why here and not a route filter: every request of every listener is logged (Envoy's
listener access log), including those refused before routing (404 NR, 400 DPE, 503 OL), and
observers see only the end (DESIGN.md section 4).  The request stream calls `log()` from
`record()` once per request when its listener's snapshot has `telemetry.access_log`; a proxy
without it pays one attribute test per request.

`log()` decides first (filter, then sampling: two comparisons and at most one random draw),
then builds the record: the fields `proxyconfig/log_fields.ACCESS_FIELDS` lists, in that
order, from the stream (its record), the request head and the connection's facts.  The
record goes to the sink's bounded queue (`sinks.py`); writing, and rendering a text format,
happen off the request path.  For JSON lines the record is its line, written when the request
ends by `access_record.access_line` (in C where that is built: ADR 0076) straight from the
request's bytes and integers: into the file sink's C batch (`Lines.access`, ADR 0080), which
the sink's thread writes as it is, or, without the C encoder, as a bytes object the thread
joins with its batch; text formats and OTLP sinks get a dict (ADR 0062).  Response flags are
Envoy's (`telemetry/flags.py`, shared with the metrics).

Identities: `source_principal` is the verified peer of an inbound connection (its client
certificate's SPIFFE ID); `destination_principal` is the SPIFFE ID an outbound cluster's TLS
requires (`expected_spiffe_ids`, when it names exactly one: the only identity the upstream
can have had).  The proxy's own side is `telemetry.principal` (the control plane names it;
empty in a static config that does not).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from tulle.dataplane.http.retry import Retrier
from tulle.dataplane.telemetry import clip
from tulle.dataplane.telemetry.access_record import access_line, json_lines, line_batch, record_of
from tulle.dataplane.telemetry.flags import flag_details, response_flags
from tulle.dataplane.telemetry.logformat import TextFormat, render_json, request_headers
from tulle.dataplane.telemetry.sinks import LineSink, OtlpLogSink, build_sink
from tulle.proxyconfig.logs import AccessLogTelemetry

if TYPE_CHECKING:
    from tulle.dataplane.http.facts import ConnectionFacts
    from tulle.dataplane.http.stream import RequestStream
    from tulle.dataplane.telemetry.otlp.common import Value

_log: Final = logging.getLogger("tulle.telemetry.logs")
_time_ns: Final = time.time_ns
_PROTOCOLS: Final = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0", b"2": "HTTP/2"}


def _us(seconds: float) -> int:
    """Seconds as whole microseconds, rounded half up: the record's milliseconds are this
    over 1000 (`round(seconds * 1000, 3)` for the non-negative durations a record has,
    without round()'s decimal conversion; exact below 2**53 µs)."""
    return int(seconds * 1e6 + 0.5)


def _ms(seconds: float) -> float:
    """Seconds as milliseconds rounded to 3 decimals (what a record's durations read)."""
    return float(_us(seconds)) / 1000.0




_ZERO_TRACE: Final = b"0" * 32
_B3_FIELDS: Final = frozenset({b"x-b3-traceid", b"b3"})


def trace_id_of(headers: list[tuple[bytes, bytes]], known: bytes = b"") -> str | None:
    """The trace id the request carries (W3C `traceparent`, B3 multi or single header),
    as 32 lowercase hex digits; None without one.  The proxy's own tracing writes its
    context on the request head before routing, so this is also the proxy's trace.
    `known`: the proxy's own trace id (validated lowercase hex): a `traceparent` carrying it
    needs no second check."""
    b3 = None
    for n, v in headers:
        if n == b"traceparent":
            parts = v.split(b"-")
            if len(parts) >= 4 and len(parts[1]) == 32:
                tid = parts[1]
                if tid == known and known != _ZERO_TRACE:
                    return known.decode()
                return _hex(tid, 32)
        elif n == b"x-b3-traceid":
            b3 = _hex(v, 32) if len(v) == 32 else _hex(b"0" * 16 + v, 32) if len(v) == 16 else None
        elif n == b"b3" and b3 is None:
            first = v.split(b"-", 1)[0]
            if len(first) in (16, 32):
                b3 = _hex(first.rjust(32, b"0"), 32)
    return b3


_HEX: Final = re.compile("[0-9a-f]*")


def _hex(value: bytes, n: int) -> str | None:
    text = value.decode("latin-1").lower()
    if len(text) != n or _HEX.fullmatch(text) is None or not text.strip("0"):
        return None
    return text


def _address(a: tuple[str, int] | None) -> str | None:
    if a is None:
        return None
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def _carries(traceparent: bytes, trace_id: bytes) -> bool:
    """Whether a `traceparent` field reads `vv-<trace_id>-<16 characters>-...`: then
    `trace_id_of` (four or more parts, the second of 32 characters) answers `trace_id`, valid
    as the proxy's own context is, without splitting the field."""
    return (len(traceparent) >= 55 and traceparent[2] == 45 and traceparent[35] == 45
            and traceparent[52] == 45 and traceparent[0] != 45 and traceparent[1] != 45
            and traceparent[3:35] == trace_id)


class ConnectionFields:
    """The record's fields that come from the connection (and the cluster's TLS), made once
    per connection instead of once per request (ADR 0066)."""

    __slots__ = ("cluster", "ctx", "dest", "direction", "listener", "logger", "peer", "sni",
                 "source")

    def __init__(self, logger: AccessLogger, ctx: object, cluster: str, peer: str | None,
                 sni: str | None, source: str | None, dest: str | None, direction: str,
                 listener: str) -> None:
        self.logger = logger
        self.ctx = ctx
        self.cluster = cluster
        self.peer = peer
        self.sni = sni
        self.source = source
        self.dest = dest
        self.direction = direction
        self.listener = listener


class AccessLogger:
    """One snapshot's access log: its decision, its record, its sink."""

    __slots__ = ("batched", "cfg", "duration_min", "encode", "errors_only", "failing", "filtered",
                 "lines", "principal", "sample", "sink", "status_min", "structs", "text")

    def __init__(self, cfg: AccessLogTelemetry, resource: Mapping[str, Value],
                 principal: str = "") -> None:
        self.cfg = cfg
        self.principal = principal or None
        """The proxy's own SPIFFE ID (`telemetry.principal`); None: unnamed."""
        f = cfg.filter
        self.status_min = f.status_min
        self.duration_min = f.duration_min_ms / 1000
        self.errors_only = f.errors_only
        self.filtered = bool(f.status_min or f.duration_min_ms or f.errors_only)
        self.sample = cfg.sample_percent / 100
        self.text = TextFormat(cfg.text_format) if cfg.format == "text" else None
        render = self.text.render if self.text is not None else render_json
        self.sink: LineSink | OtlpLogSink = build_sink("access_log", cfg.sink, render,
                                                       self.text is not None, resource)
        sink = self.sink
        self.structs = self.text is None and isinstance(sink, LineSink)
        """JSON lines: records are their lines (`access_record.access_line`), joined a batch
        at a time (the text format and OTLP read records as mappings: dicts)."""
        self.encode: Callable[..., Any] = access_line if self.structs else record_of
        """What a record's values become, chosen once: its JSON line, else a dict; called
        with the values as its arguments (no tuple of 28 made and taken apart per request)."""
        self.failing = False
        """A record failed to encode already (logged once, then only counted)."""
        self.lines: LineSink | None = None
        """The sink again when it is a line sink (a direct call of its compiled `offer`
        instead of a method looked up on a union)."""
        self.batched = False
        """JSON lines go straight into the line sink's C batch: `encode` is its `access`,
        whose result (an int) the sink counts (`LineSink.took`; ADR 0080)."""
        if isinstance(sink, LineSink):
            self.lines = sink
            if self.structs:
                batch = line_batch(sink.max_queue)
                if batch is not None:
                    sink.use_batch(batch)
                    self.encode = batch.access
                    self.batched = True
                else:  # lines as bytes, queued and joined a batch at a time
                    sink.lines = json_lines

    def wanted(self, status: int, flags: str, duration: float) -> bool:
        """The filter and the sampling decision for one request."""
        if self.filtered and not (
                (self.status_min and status >= self.status_min)
                or (self.duration_min and duration >= self.duration_min)
                or (self.errors_only and (status >= 500 or status == 0 or bool(flags)))):
            return False
        sample = self.sample
        return sample >= 1.0 or (sample > 0.0 and random.random() < sample)

    def log(self, stream: RequestStream, now: float) -> None:
        """The request is over (`RequestStream.record`): maybe write its record."""
        duration = now - stream.start
        if not self.wanted(stream.status, stream.flags, duration):
            return
        wall_ns = _time_ns() - int(duration * 1e9)
        lines = self.lines
        if lines is not None:
            try:
                record = self.record(stream, now, duration, wall_ns)
            except Exception:  # a line it cannot encode (a lone surrogate in a name), or a
                # bug: the record is lost and counted, as the writer's rendering counts it
                # (in this thread's own count, `SinkStats`), and the request ends as usual;
                # the first such failure is logged
                stats = lines.stats
                stats.offered += 1
                stats.loop_failed += 1
                if not self.failing:
                    self.failing = True
                    _log.exception("access_log: a record could not be encoded; such records "
                                   "are counted failed")
                return
            if self.batched:
                lines.took(record)  # type: ignore[arg-type]  # (`Lines.access`'s int)
            else:
                lines.offer(record, wall_ns)
        else:
            self.sink.offer(self.record(stream, now, duration, wall_ns), wall_ns)

    def fields(self, stream: RequestStream, facts: ConnectionFacts) -> ConnectionFields:
        """What a record takes from its connection, kept on the connection's facts for its
        next requests (made again after a swap of this logger, of the listener's context
        or when the request's cluster differs)."""
        cached = facts.log_fields
        ctx = stream.conn.ctx
        cluster = stream.cluster
        if (isinstance(cached, ConnectionFields) and cached.logger is self
                and cached.ctx is ctx and cached.cluster == cluster):
            return cached
        inbound = facts.direction == "inbound"
        destination = None
        if not inbound:
            rt = ctx.clusters.get(cluster)
            tls = rt.cfg.tls if rt is not None else None
            if tls is not None and len(tls.expected_spiffe_ids) == 1:
                destination = tls.expected_spiffe_ids[0]
        made = ConnectionFields(
            self, ctx, cluster, _address(facts.peer), facts.sni or None,
            (facts.peer_identity or None) if inbound else self.principal,
            self.principal if inbound else destination, facts.direction, facts.listener)
        facts.log_fields = made
        return made

    def record(self, stream: RequestStream, now: float, duration: float,
               wall_ns: int) -> dict[str, Any] | bytes | int:
        """The request's record: its JSON line (`access_record.access_line`) for a JSON line
        sink, or what its C batch made of it (`LineSink.took` reads the int), else a dict
        (text formats, OTLP)."""
        head = stream.head
        headers = head.headers
        request_id: bytes | None = None
        user_agent: bytes | None = None
        forwarded: bytes | None = None
        traceparent = b""
        traced = False
        for n, v in headers:  # one pass for the headers a record names
            if n == b"x-request-id":
                request_id = v
            elif n == b"user-agent":
                user_agent = v
            elif n == b"x-forwarded-for":
                forwarded = v
            elif n == b"traceparent":
                if not traced:
                    traceparent = v
                traced = True
            elif len(n) <= 12 and n in _B3_FIELDS:  # (a length test before a hash)
                traced = True
        conn = self.fields(stream, stream.facts)
        flags = stream.flags
        first_byte = stream.first_byte
        up_start = stream.up_start
        tried = stream.tried
        attempts = 0
        if tried is not None:  # a Retrier's count, or the one try (an isinstance test: a
            # getattr with a default made and dropped an AttributeError per request)
            attempts = tried.retries + 1 if isinstance(tried, Retrier) else 1
        elif up_start:
            attempts = 1
        route = stream.route
        route_name = route.name if route is not None else None
        cluster: str | None = stream.cluster
        if cluster == "-":
            cluster = None
        protocol = _PROTOCOLS.get(head.version)
        if protocol is None:
            protocol = head.version.decode("latin-1")
        status = stream.status
        upstream_host = stream.upstream_host or None
        trace_id: str | bytes | None = None
        if traced:
            trace = stream.trace
            known = trace.trace_id if trace is not None else b""
            if traceparent and known and _carries(traceparent, known):
                trace_id = known  # the proxy's own context, as it wrote it (hex: ASCII)
            else:
                trace_id = trace_id_of(headers, known)
        authz = stream.authz or None
        # A queued record holds what the client sent: each value within its bound (ADR 0103,
        # `clip.py`), so a sink that stops reading holds a bounded record per queue slot.
        method = head.method
        if len(method) > clip.FIELD:
            method = clip.cut(method, clip.FIELD)
        path = head.path
        if len(path) > clip.PATH:
            path = clip.cut(path, clip.PATH)
        authority = head.authority
        if len(authority) > clip.FIELD:
            authority = clip.cut(authority, clip.FIELD)
        if user_agent is not None and len(user_agent) > clip.AGENT:
            user_agent = clip.cut(user_agent, clip.AGENT)
        if request_id is not None and len(request_id) > clip.FIELD:
            request_id = clip.cut(request_id, clip.FIELD)
        if forwarded is not None and len(forwarded) > clip.FORWARDED:
            forwarded = clip.cut_head(forwarded, clip.FORWARDED)
        if flags:
            short, details = response_flags(flags), flag_details(flags) or None
        else:
            short, details = "-", None
        made = self.encode(  # `ACCESS_FIELDS`' order; header fields as their bytes, the
            # start time as nanoseconds (ADR 0076)
            wall_ns, method or None, path or None, protocol, status,
            short, details, stream.bytes_in, stream.bytes_out, _us(duration),
            _us(first_byte - stream.start) if first_byte else None,
            _us(now - up_start) if up_start else None, upstream_host, cluster, route_name,
            attempts, request_id, trace_id, authority or None, user_agent, forwarded,
            conn.peer, conn.sni, conn.source, conn.dest, conn.direction, conn.listener, authz)
        if self.structs:  # the line itself, or the batch's answer
            return made  # type: ignore[no-any-return]
        record: dict[str, Any] = made
        text = self.text
        if text is not None and text.headers:
            pseudo = {b":method": head.method, b":path": head.path,
                      b":authority": head.authority, b":scheme": head.scheme}
            record.update(request_headers(text, pseudo, headers))
        return record
