"""The access log's record on a scripted request: the connection's fields made once per
connection and made again when what they came from changes; the proxy's own trace id taken
without splitting its `traceparent` (ADR 0066)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
from typing import Any

import msgspec
import pytest

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.http.facts import ConnectionFacts
from tulle.dataplane.http.port import StreamConn
from tulle.dataplane.http.stream import RequestStream
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.telemetry.access_log import AccessLogger, _carries, trace_id_of
from tulle.dataplane.telemetry.access_record import AccessRecord
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.telemetry.starttime import start_time
from tulle.dataplane.upstream.cluster import ClusterRuntime
from tulle.proxyconfig.logs import AccessLogTelemetry
from tulle.proxyconfig.model import Cluster, Settings

DB = "spiffe://mesh.local/ns/data/sa/db"
WEB = "spiffe://mesh.local/ns/shop/sa/web"
ME = "spiffe://mesh.local/ns/shop/sa/api"
T = b"4bf92f3577b34da6a3ce929d0e0e4736"


def _logger(principal: str = ME) -> AccessLogger:
    cfg = msgspec.convert({"sink": {"kind": "file", "path": "/dev/null"}}, AccessLogTelemetry)
    return AccessLogger(cfg, {}, principal)


def _cluster(name: str, identities: list[str] | None) -> ClusterRuntime:
    raw: dict[str, Any] = {"name": name, "endpoints": [{"address": "127.0.0.1", "port": 1}]}
    if identities is not None:
        raw["tls"] = {"expected_spiffe_ids": identities}
    return ClusterRuntime(msgspec.convert(raw, Cluster), Settings(), ProxyMetrics(), [], {})


class _Ctx(ListenerContext):
    """A stand-in listener context with real clusters (the compiled record reads them; a
    subclass: compiled code checks the declared class)."""

    def __init__(self, clusters: dict[str, ClusterRuntime]) -> None:
        self.clusters = clusters


def _ctx(db_identity: str | None) -> Any:
    return _Ctx({"db": _cluster("db", [db_identity] if db_identity else []),
                 "plain": _cluster("plain", None)})


def _stream(facts: ConnectionFacts, ctx: Any, cluster: str = "db",
            headers: list[tuple[bytes, bytes]] | None = None) -> RequestStream:
    conn = StreamConn()
    conn.facts, conn.ctx = facts, ctx
    head = RequestHead(b"GET", b"/a", b"web:80", b"http", headers or [], version=b"1.1")
    s = RequestStream(conn, head, True, 10.0)
    s.status, s.cluster = 200, cluster
    return s


def _record(log: AccessLogger, s: RequestStream) -> AccessRecord:
    line = log.record(s, 10.5, 0.5, 1_700_000_000_000_000_000)
    if log.batched:  # written into the sink's C batch (ADR 0080): read back from it
        assert line == 1
        line = _written(log)
    assert isinstance(line, bytes) and line.endswith(b"\n")  # a JSON line sink's record
    assert line.count(b"\n") == 1
    return msgspec.json.decode(line, type=AccessRecord)


def _written(log: AccessLogger) -> bytes:
    """What the logger's C batch holds, written to a pipe by the batch itself."""
    assert log.lines is not None and log.lines.batch is not None
    r, w = os.pipe()
    try:
        count, err = log.lines.batch.write(w)
        assert (count, err) == (1, 0)
        return os.read(r, 1 << 20)
    finally:
        os.close(r)
        os.close(w)


def _who(rec: AccessRecord) -> tuple[Any, ...]:
    return (rec.downstream_remote_address, rec.requested_server_name, rec.source_principal,
            rec.destination_principal, rec.direction, rec.listener)


def test_an_outbound_connections_fields_follow_the_cluster_and_the_context() -> None:
    log = _logger()
    facts = ConnectionFacts("out", "outbound", ("::1", 5000), sni="db.local")
    ctx = _ctx(DB)
    first = _record(log, _stream(facts, ctx))
    assert _who(first) == ("[::1]:5000", "db.local", ME, DB, "outbound", "out")
    kept = facts.log_fields
    assert kept is not None
    assert _who(_record(log, _stream(facts, ctx))) == _who(first)
    assert facts.log_fields is kept  # the second request took them as they were
    # Another cluster on the same connection: its own destination identity.
    assert _record(log, _stream(facts, ctx, "plain")).destination_principal is None
    assert _record(log, _stream(facts, ctx)).destination_principal == DB
    # A swap gave the listener a context whose cluster expects another identity.
    assert _record(log, _stream(facts, _ctx(WEB))).destination_principal == WEB
    assert _record(log, _stream(facts, _ctx(None))).destination_principal is None


def test_an_inbound_connections_fields_follow_the_logger() -> None:
    facts = ConnectionFacts("in", "inbound", ("10.0.0.7", 41000))
    facts.peer_identity = WEB
    ctx = _ctx(None)
    rec = _record(_logger(), _stream(facts, ctx))
    assert _who(rec) == ("10.0.0.7:41000", None, WEB, ME, "inbound", "in")
    # A new snapshot's logger names the proxy differently: the next record says so.
    other = "spiffe://mesh.local/ns/shop/sa/api-v2"
    assert _record(_logger(other), _stream(facts, ctx)).destination_principal == other
    assert _record(_logger(""), _stream(facts, ctx)).destination_principal is None


def test_the_records_fields_from_the_connection_equal_the_dict_records() -> None:
    """The text format's dict record computes every field per request: the struct, with
    fields kept per connection, says the same."""
    cfg = msgspec.convert({"sink": {"kind": "file", "path": "/dev/null"}, "format": "text",
                           "text_format": "%START_TIME%"}, AccessLogTelemetry)
    text_log = AccessLogger(cfg, {}, ME)
    log = _logger()
    facts = ConnectionFacts("out", "outbound", ("127.0.0.1", 5000))
    ctx = _ctx(DB)
    for _ in range(2):
        s = _stream(facts, ctx, headers=[(b"traceparent", b"00-" + T + b"-00f067aa0ba902b7-01"),
                                         (b"x-request-id", b"r1"), (b"user-agent", b"probe")])
        as_dict = text_log.record(s, 10.5, 0.5, 1_700_000_000_000_000_000)
        assert isinstance(as_dict, dict)
        assert msgspec.to_builtins(_record(log, s)) == as_dict


def test_the_own_trace_short_cut_answers_what_trace_id_of_answers() -> None:
    span = b"00f067aa0ba902b7"
    values = [b"00-" + T + b"-" + span + b"-01", b"00-" + T + b"-" + span + b"-00",
              b"01-" + T + b"-" + span + b"-01-extra", b"00-" + T + b"-" + span + b"01",
              b"0-" + T + b"-" + span + b"-01", b"-0-" + T + b"-" + span + b"-01",
              b"00-" + T.upper() + b"-" + span + b"-01", b"00-" + T + b"-" + span,
              b"00-" + T[:31] + b"-" + span + b"-01", b"00-" + T + b"--" + span + b"01",
              b"000-" + T + b"-" + span + b"-01", b"00-" + T + b"-" + span[:15] + b"-01-"]
    for value in values:
        for known in (T, b"1" * 32):
            if _carries(value, known):
                assert trace_id_of([(b"traceparent", value)], known) == known.decode(), value
    assert _carries(values[0], T) and _carries(values[2], T)
    assert not _carries(values[0], b"1" * 32)


def test_the_trace_id_of_a_record_is_the_first_traceparents() -> None:
    log = _logger()
    facts = ConnectionFacts("out", "outbound", ("127.0.0.1", 5000))
    other = b"0af7651916cd43dd8448eb211c80319c"
    s = _stream(facts, _ctx(None), headers=[
        (b"b3", other + b"-00f067aa0ba902b7-1"),
        (b"traceparent", b"00-" + T + b"-00f067aa0ba902b7-01"),
        (b"traceparent", b"00-" + other + b"-00f067aa0ba902b7-01")])
    assert _record(log, s).trace_id == T.decode()
    s = _stream(facts, _ctx(None), headers=[(b"x-b3-traceid", other[16:])])
    assert _record(log, s).trace_id == "0" * 16 + other[16:].decode()
    s = _stream(facts, _ctx(None), headers=[(b"b3", other + b"-00f067aa0ba902b7-1")])
    assert _record(log, s).trace_id == other.decode()


def _reference(ns: int) -> str:
    at = dt.datetime.fromtimestamp(ns // 1_000_000 / 1000, dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def test_start_time_is_envoys_utc_milliseconds_across_every_boundary() -> None:
    """Within a millisecond (the cached text), into the next one, across a second, a minute
    and a day, backwards (a record may end before the previous one started), and at random."""
    base = 1_764_806_399_998_000_000  # 2025-12-03T23:59:59.998Z: a day ends 2 ms later
    steps = [0, 1, 999_999, 1_000_000, 1_000_001, 2_000_000, 61_000_000_000, -5_000_000, 0]
    draws = random.Random(7)
    steps += [draws.randrange(0, 10**17) for _ in range(300)]
    for step in steps:
        ns = base + step
        assert start_time(ns) == _reference(ns), ns
    assert start_time(0) == "1970-01-01T00:00:00.000Z"
    assert start_time(1_999_999_999) == "1970-01-01T00:00:01.999Z"


def test_a_record_that_cannot_be_a_json_line_is_lost_and_counted_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    """A name with a lone surrogate (msgspec refuses to encode it, the C encoder hands it to
    msgspec): the request ends as usual, the record is counted failed and the first such
    failure logged, the next good one is written (ADR 0076)."""
    log = _logger()
    sink = log.lines
    assert sink is not None
    bad = ConnectionFacts("out-\udc80", "outbound", ("127.0.0.1", 5000))
    with caplog.at_level(logging.ERROR, logger="tulle.telemetry.logs"):
        log.log(_stream(bad, _ctx(None)), 10.5)
        log.log(_stream(bad, _ctx(None)), 10.5)
    assert (sink.stats.offered, sink.stats.failed) == (2, 2)
    assert len([r for r in caplog.records if "could not be encoded" in r.message]) == 1
    log.log(_stream(ConnectionFacts("out", "outbound", ("127.0.0.1", 5000)), _ctx(None)), 10.5)
    held = sink.batch if log.batched else sink._queue
    assert held is not None
    assert (sink.stats.offered, sink.stats.failed, len(held)) == (3, 2, 1)
