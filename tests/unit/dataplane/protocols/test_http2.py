"""The HTTP/2 codec, fed with frames from a real `h2` peer (no sockets): head translation,
flow control, trailers, limits, protocol errors and graceful GOAWAY."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from tulle.dataplane.exchange import RequestHead, ResponseHead
from tulle.dataplane.protocols.h2common import H2Limits, H2ProtocolError
from tulle.dataplane.protocols.h2engine import ENGINE, H2Codec
from tulle.dataplane.protocols.h2events import (
    DataReceived,
    EndReceived,
    GoAwayReceived,
    InformationalReceived,
    RequestReceived,
    ResetReceived,
    ResponseReceived,
    SendDrained,
    StreamRejected,
)
from tulle.dataplane.protocols.h2translate import grpc_trailers_only


def peer(client_side: bool, **cfg: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding=None, **cfg))
    conn.initiate_connection()
    return conn


def pair(limits: H2Limits | None = None) -> tuple[h2.connection.H2Connection, H2Codec]:
    """A real h2 client and our server-side codec, with the handshake exchanged."""
    client = peer(True)
    server = H2Codec(client_side=False, limits=limits or H2Limits())
    assert server.feed(client.data_to_send()) == []
    client.receive_data(server.data_to_send())
    server.feed(client.data_to_send())  # SETTINGS ACK
    return client, server


def request(client: h2.connection.H2Connection, extra: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
            end: bool = True, authority: bytes | None = b"svc.example") -> int:
    sid = client.get_next_available_stream_id()
    headers = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/a?b=1")]
    if authority is not None:
        headers.append((b":authority", authority))
    client.send_headers(sid, [*headers, *extra], end_stream=end)
    return sid


def test_request_head_becomes_a_request_head_without_hop_by_hop_headers() -> None:
    client, server = pair()
    request(client, [(b"te", b"trailers"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
                     (b"content-length", b"5"), (b"x-a", b"1")], end=False)
    (ev,) = server.feed(client.data_to_send())
    assert isinstance(ev, RequestReceived)
    head = ev.head
    assert (head.method, head.path, head.authority, head.scheme, head.version) == (
        b"POST", b"/a?b=1", b"svc.example", b"https", b"2")
    assert head.content_length == 5
    # framing is `content_length` only: no content-length field in `headers` (exchange.py)
    assert head.headers == [(b"te", b"trailers"), (b"x-a", b"1"), (b"cookie", b"a=1; b=2")]
    assert not ev.end_stream


def test_host_header_stands_in_for_a_missing_authority() -> None:
    client, server = pair()
    request(client, [(b"host", b"h.example")], authority=None)
    (ev,) = server.feed(client.data_to_send())
    assert isinstance(ev, RequestReceived)
    assert ev.head.authority == b"h.example"
    assert all(n != b"host" for n, _ in ev.head.headers)
    assert ev.end_stream


def test_connection_specific_headers_from_a_peer_are_dropped() -> None:
    client = peer(True, validate_outbound_headers=False)
    server = H2Codec(client_side=False)
    server.feed(client.data_to_send())
    request(client, [(b"connection", b"keep-alive"), (b"keep-alive", b"1"), (b"upgrade", b"x"),
                     (b"transfer-encoding", b"chunked"), (b"proxy-connection", b"x"),
                     (b"x-kept", b"1")])
    (ev,) = server.feed(client.data_to_send())
    assert isinstance(ev, RequestReceived)
    assert ev.head.headers == [(b"x-kept", b"1")]


def test_te_other_than_trailers_is_malformed() -> None:
    client = peer(True, validate_outbound_headers=False)
    server = H2Codec(client_side=False)
    server.feed(client.data_to_send())
    sid = request(client, [(b"te", b"gzip")])
    if ENGINE == "nghttp2":  # a stream error (RFC 9113 8.2.2, 8.1.1): the connection lives on
        (ev,) = server.feed(client.data_to_send())
        assert isinstance(ev, StreamRejected) and ev.status == 0
        resets = [e for e in client.receive_data(server.data_to_send())
                  if isinstance(e, h2.events.StreamReset)]
        assert [(e.stream_id, e.error_code) for e in resets] == [(sid, 1)]
        return
    with pytest.raises(H2ProtocolError):  # h2 makes it a connection error (5.4.1 allows it)
        server.feed(client.data_to_send())
    events = client.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.ConnectionTerminated) and e.error_code == 1
               for e in events)


def test_body_end_and_trailers_arrive_as_events() -> None:
    client, server = pair()
    sid = request(client, end=False)
    server.feed(client.data_to_send())
    client.send_data(sid, b"hello")
    client.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    events = server.feed(client.data_to_send())
    assert [type(e) for e in events] == [DataReceived, EndReceived]
    data, end = events
    assert isinstance(data, DataReceived) and data.data == b"hello" and data.flow_length == 5
    assert isinstance(end, EndReceived) and end.trailers == [(b"grpc-status", b"0")]


def test_data_is_acknowledged_only_when_the_driver_says_so() -> None:
    client, server = pair(H2Limits(stream_window=65_535, connection_window=65_535))
    sid = request(client, end=False)
    server.feed(client.data_to_send())
    for _ in range(4):
        client.send_data(sid, b"x" * 10_000)
    server.feed(client.data_to_send())
    assert client.local_flow_control_window(sid) == 65_535 - 40_000
    assert server.data_to_send() == b""  # nothing acknowledged yet
    server.ack(sid, 40_000)
    client.receive_data(server.data_to_send())
    assert client.local_flow_control_window(sid) == 65_535


def test_outbound_data_waits_for_the_peers_window_and_reports_draining() -> None:
    client, server = pair(H2Limits(high_water=10_000))
    sid = request(client)
    server.feed(client.data_to_send())
    server.send_response(sid, ResponseHead(200, [(b"x-r", b"1")]), False)
    over = server.send_data(sid, b"d" * 100_000)
    assert over  # above high water: the driver pauses the producer
    server.send_end(sid, [(b"grpc-status", b"0")])
    received = 0
    drained = False
    ended = False
    trailers = None
    for _ in range(100):
        for ev in client.receive_data(server.data_to_send()):
            if isinstance(ev, h2.events.DataReceived):
                received += len(ev.data)
                client.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = ev.headers
            elif isinstance(ev, h2.events.StreamEnded):
                ended = True
        if ended:
            break
        events = server.feed(client.data_to_send())
        drained = drained or any(isinstance(e, SendDrained) for e in events)
    assert received == 100_000 and ended and drained
    assert trailers == [(b"grpc-status", b"0")]
    assert server.idle


def test_first_flight_never_exceeds_the_default_window() -> None:
    client, server = pair()
    sid = request(client)
    server.feed(client.data_to_send())
    server.send_response(sid, ResponseHead(200, []), False)
    server.send_data(sid, b"d" * 200_000)
    got = sum(len(e.data) for e in client.receive_data(server.data_to_send())
              if isinstance(e, h2.events.DataReceived))
    assert got == 65_535
    assert server.pending(sid) == 200_000 - 65_535


def test_oversized_head_is_refused_on_its_stream_and_huge_one_kills_the_connection() -> None:
    client, server = pair(H2Limits(max_header_bytes=4096))
    request(client, [(b"x-big", b"a" * 5000)])
    (ev,) = server.feed(client.data_to_send())
    assert isinstance(ev, StreamRejected) and ev.status == 431 and ev.kind == "header_too_large"
    request(client, [(b"x-huge", b"a" * 9000)])
    with pytest.raises(H2ProtocolError) as err:
        server.feed(client.data_to_send())
    assert err.value.kind == "header_too_large"
    assert any(isinstance(e, h2.events.ConnectionTerminated)
               for e in client.receive_data(server.data_to_send()))


def test_connect_is_refused_with_501() -> None:
    client, server = pair()
    client.send_headers(1, [(b":method", b"CONNECT"), (b":authority", b"x:443")])
    (ev,) = server.feed(client.data_to_send())
    assert isinstance(ev, StreamRejected) and ev.status == 501


def test_a_bad_preface_gets_goaway_protocol_error() -> None:
    server = H2Codec(client_side=False)
    server.data_to_send()
    with pytest.raises(H2ProtocolError) as err:
        server.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert err.value.kind == "h2_protocol_error"
    probe = peer(True)
    events = probe.receive_data(server.data_to_send())
    assert [e.error_code for e in events if isinstance(e, h2.events.ConnectionTerminated)] == [1]


def test_graceful_goaway_lets_open_streams_finish_both_ways() -> None:
    client, server = pair()
    sid = request(client, end=False)
    server.feed(client.data_to_send())
    server.goaway()
    events = client.receive_data(server.data_to_send())
    (term,) = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert term.last_stream_id == sid and term.error_code == 0
    # The client (a real h2 peer would, RFC 9113 6.8) still finishes its request...
    client.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
    client.send_data(sid, b"tail", end_stream=True)
    assert [type(e) for e in server.feed(client.data_to_send())] == [DataReceived, EndReceived]
    # ...and our side can still answer it.
    assert server.send_response(sid, ResponseHead(204, []), True)


def test_client_side_keeps_reading_after_a_received_goaway() -> None:
    origin = peer(False)
    codec = H2Codec(client_side=True)
    origin.receive_data(codec.data_to_send())
    codec.feed(origin.data_to_send())
    sid = codec.send_request(RequestHead(b"GET", b"/", b"o.example", b"http", []), b"http", True)
    origin.receive_data(codec.data_to_send())
    origin.send_headers(sid, [(b":status", b"103"), (b"link", b"</a>")])
    origin.close_connection(0, last_stream_id=sid)
    origin.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN  # graceful
    origin.send_headers(sid, [(b":status", b"200"), (b"content-length", b"2")])
    origin.send_data(sid, b"ok", end_stream=True)
    events = codec.feed(origin.data_to_send())
    assert [type(e) for e in events] == [InformationalReceived, GoAwayReceived, ResponseReceived,
                                         DataReceived, EndReceived]
    resp = events[2]
    assert isinstance(resp, ResponseReceived) and resp.head.status == 200
    assert resp.head.content_length == 2


def test_peer_reset_is_reported_and_drops_queued_data() -> None:
    client, server = pair()
    sid = request(client)
    server.feed(client.data_to_send())
    server.send_response(sid, ResponseHead(200, []), False)
    server.send_data(sid, b"d" * 100_000)
    client.receive_data(server.data_to_send())
    client.reset_stream(sid, 8)
    (ev,) = server.feed(client.data_to_send())
    assert isinstance(ev, ResetReceived) and ev.error_code == 8
    assert server.pending(sid) == 0 and server.idle


def test_grpc_trailers_only_maps_http_status_and_percent_encodes() -> None:
    headers = dict(grpc_trailers_only(503, "upstream down: caf\u00e9 100%"))
    assert headers[b":status"] == b"200"
    assert headers[b"grpc-status"] == b"14"
    assert headers[b"grpc-message"] == b"upstream down: caf%C3%A9 100%25"
    assert dict(grpc_trailers_only(404, "x"))[b"grpc-status"] == b"12"
    assert dict(grpc_trailers_only(418, "x"))[b"grpc-status"] == b"2"


# -- abuse and malformed requests -----------------------------------------------------------

def _guarded(**kw: int) -> tuple[h2.connection.H2Connection, H2Codec]:
    from tulle.dataplane.protocols.h2guard import GuardLimits
    return pair(H2Limits(guard=GuardLimits(**kw), max_concurrent_streams=2))  # type: ignore[arg-type]


def test_a_stream_past_the_concurrency_limit_is_refused_and_the_connection_lives_on() -> None:
    client, server = _guarded()
    # The client ignores our limit of 2 (h2 would refuse to send the third stream itself).
    client.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100
    client.remote_settings.acknowledge()
    a, b, c = request(client, end=False), request(client, end=False), request(client)
    if ENGINE == "nghttp2":
        # nghttp2 refuses alone only streams past a limit not yet acknowledged; past the
        # acknowledged one it is a connection error (RFC 9113 5.1.2 allows a stream error)
        with pytest.raises(H2ProtocolError):
            server.feed(client.data_to_send())
        got = client.receive_data(server.data_to_send())
        assert [e.error_code for e in got if isinstance(e, h2.events.ConnectionTerminated)] == [1]
        return
    events = server.feed(client.data_to_send())
    assert [type(e) for e in events] == [RequestReceived, RequestReceived]
    got = client.receive_data(server.data_to_send())
    resets = [e for e in got if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(c, 7)]  # REFUSED_STREAM
    server.reset(a)  # a slot frees up: the next stream is taken
    d = request(client)
    (ev,) = server.feed(client.data_to_send())
    assert isinstance(ev, RequestReceived) and ev.stream_id == d and b < d


def test_premature_resets_beyond_the_budget_are_cut_off_with_enhance_your_calm() -> None:
    from tulle.dataplane.protocols.h2common import H2Abuse
    client, server = _guarded(max_premature_resets=3)
    for _ in range(3):
        sid = request(client)
        client.reset_stream(sid)
        server.feed(client.data_to_send(), now=1.0)
    answered = request(client)
    server.feed(client.data_to_send(), now=1.0)
    server.send_response(answered, ResponseHead(200, []), True)  # earns one back
    late = request(client)
    server.feed(client.data_to_send(), now=1.0)
    client.reset_stream(late)
    server.feed(client.data_to_send(), now=2.5)  # reset after 1.5 s: not premature
    sid = request(client)
    client.reset_stream(sid)
    server.feed(client.data_to_send(), now=3.0)
    sid = request(client)
    client.reset_stream(sid)
    with pytest.raises(H2Abuse) as err:
        server.feed(client.data_to_send(), now=3.0)
    assert err.value.kind == "h2_rapid_reset"
    (term,) = [e for e in client.receive_data(server.data_to_send())
               if isinstance(e, h2.events.ConnectionTerminated)]
    assert term.error_code == 11


def test_a_ping_flood_is_refused_before_h2_parses_it() -> None:
    from hyperframe.frame import PingFrame

    from tulle.dataplane.protocols.h2common import H2Abuse
    client, server = _guarded(burst=50)
    flood = PingFrame(0, b"12345678").serialize() * 51
    with pytest.raises(H2Abuse) as err:
        server.feed(flood, now=0.0)
    assert err.value.kind == "h2_ping_flood"
    events = client.receive_data(server.data_to_send())
    assert not any(isinstance(e, h2.events.PingAckReceived) for e in events)  # none answered
    (term,) = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert term.error_code == 11


def test_malformed_request_is_reset_with_protocol_error_and_not_passed_on() -> None:
    client, server = pair()
    sid = request(client, [(b"x(y", b"1")], end=False)
    (ev,) = server.feed(client.data_to_send())
    assert isinstance(ev, StreamRejected) and ev.status == 0
    assert ev.kind == "h2_malformed_request"
    resets = [e for e in client.receive_data(server.data_to_send())
              if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(sid, 1)]
    later = request(client)  # a stream error: the connection goes on
    (ev,) = server.feed(client.data_to_send())
    assert isinstance(ev, RequestReceived) and ev.stream_id == later


def test_content_length_on_a_request_that_ends_with_its_headers_is_malformed() -> None:
    # Found by fuzz.h2_request: passed on, an HTTP/1 origin waits for a body that never comes.
    client, server = pair()
    sid = request(client, [(b"content-length", b"5")], end=True)
    (ev,) = server.feed(client.data_to_send())
    assert isinstance(ev, StreamRejected) and ev.kind == "h2_malformed_request"
    resets = [e for e in client.receive_data(server.data_to_send())
              if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(sid, 1)]
    zero = request(client, [(b"content-length", b"0")], end=True)  # zero is consistent
    (ev,) = server.feed(client.data_to_send())
    assert isinstance(ev, RequestReceived) and ev.stream_id == zero


def test_malformed_trailers_reset_the_stream() -> None:
    client, server = pair()
    sid = request(client, end=False)
    server.feed(client.data_to_send())
    client.send_headers(sid, [(b"x-t", b"a\x01b")], end_stream=True)
    events = server.feed(client.data_to_send())
    assert [(type(e), e.stream_id) for e in events] == [(ResetReceived, sid)]


def test_streams_opened_past_the_limit_spend_the_premature_reset_budget() -> None:
    from tulle.dataplane.protocols.h2common import H2Abuse
    client, server = _guarded(max_premature_resets=2)
    client.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100
    client.remote_settings.acknowledge()
    request(client, end=False), request(client, end=False)
    request(client), request(client)  # refused: the budget of 2 is spent
    if ENGINE == "nghttp2":  # past the acknowledged limit: a connection error at once
        with pytest.raises(H2ProtocolError):
            server.feed(client.data_to_send())
        return
    server.feed(client.data_to_send())
    request(client)
    with pytest.raises(H2Abuse) as err:
        server.feed(client.data_to_send())
    assert err.value.kind == "h2_rapid_reset"


def test_malformed_requests_leave_no_per_stream_state() -> None:
    # Found by an outside review: a malformed HEADERS without END_STREAM left its stream id in
    # the codec's skip-end set for the connection's life (nothing ever removed it).
    client, server = pair()
    for _ in range(50):
        request(client, [(b"x(y", b"1")], end=False)
        server.feed(client.data_to_send())
        client.receive_data(server.data_to_send())
    if ENGINE == "nghttp2":
        assert not server._ours and not server._unanswered
    else:
        assert not server._skip_end and not server._unanswered and not server._trailers


@pytest.mark.parametrize("provoke", ["bad_trailers", "data_after_end"])
def test_resets_the_peer_provokes_spend_the_premature_reset_budget(provoke: str) -> None:
    # MadeYouReset (CVE-2025-8671): the stream is reset by us (or by h2), not by the peer, but
    # the peer made it happen and the upstream request is dropped all the same.
    from tulle.dataplane.protocols.h2common import H2Abuse
    client, server = _guarded(max_premature_resets=2)
    if ENGINE == "nghttp2" and provoke == "data_after_end":
        # nghttp2 makes DATA on a half-closed stream a connection error: nothing to count
        sid = request(client)
        server.feed(client.data_to_send())
        with pytest.raises(H2ProtocolError):
            server.feed(b"\x00\x00\x01\x00\x00" + sid.to_bytes(4, "big") + b"x")
        return
    with pytest.raises(H2Abuse) as err:
        for _ in range(3):
            sid = request(client, end=provoke != "bad_trailers")
            server.feed(client.data_to_send())
            if provoke == "bad_trailers":
                client.send_headers(sid, [(b"x-t", b"a\x01b")], end_stream=True)
                wire = client.data_to_send()
            else:  # h2 would not send it: a raw DATA frame on the half-closed stream
                wire = b"\x00\x00\x01\x00\x00" + sid.to_bytes(4, "big") + b"x"
            server.feed(wire)
            client.receive_data(server.data_to_send())
    assert err.value.kind == "h2_rapid_reset"
