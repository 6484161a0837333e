"""The proxy's tap hub (ADR 0056): match before building, a token bucket per tap, a cap on
taps, a deadline, credentials never in a record; scripted requests, injected clocks."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.http.facts import ConnectionFacts
from tulle.dataplane.telemetry.tap import TapHub
from tulle.proxyconfig.model import Cluster, Listener, Metadata, Node, ProxyConfig
from tulle.proxyconfig.stream import TapStart
from tulle.proxyconfig.tap import MAX_RECORDS_PER_BATCH, MAX_TAPS, REDACTED, TapMatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def hub() -> tuple[TapHub, Clock]:
    clock = Clock()
    h = TapHub(clock=clock, wall=lambda: 1_700_000_000.0)
    h.configure(ProxyConfig(
        version="1", node=Node(name="web-0", namespace="shop", service="web"),
        listeners=[Listener(name="out", port=1, direction="outbound"),
                   Listener(name="in", port=2, direction="inbound")],
        clusters=[Cluster(name="api", metadata=Metadata(service="api"))]))
    return h, clock


def request(listener: str = "out", path: bytes = b"/x", method: bytes = b"GET",
            status: int = 200, cluster: str = "api", identity: str = "",
            headers: list[tuple[bytes, bytes]] | None = None, version: bytes = b"1.1",
            grpc_status: str = "", flags: str = "") -> Any:
    facts = ConnectionFacts(listener, "", ("10.0.0.9", 4242))
    facts.peer_identity = identity
    head = RequestHead(method, path, b"api", b"http", headers or [], version=version)
    return SimpleNamespace(conn=SimpleNamespace(facts=facts), head=head, grpc_status=grpc_status,
                           status=status, flags=flags, cluster=cluster, bytes_in=3,
                           bytes_out=7, start=99.75, upstream_host="10.0.0.5:80")  # the hub's
    # clock reads 100.0: 250 ms after the head


def start(h: TapHub, tap_id: str = "t1", rate: float = 100.0, expires_ms: int = 30_000,
          headers: bool = False, **match: Any) -> None:
    assert h.start(TapStart(id=tap_id, match=TapMatch(**match), rate=rate,
                            expires_ms=expires_ms, headers=headers))


def records(h: TapHub) -> list[Any]:
    return [r for b in h.flush() for r in b.records]


def test_a_record_names_both_ends_and_what_happened() -> None:
    h, _ = hub()
    start(h)
    h.see(request())
    h.see(request("in", identity="spiffe://td/ns/shop/sa/caller"))
    out, inn = records(h)
    assert (out.direction, out.workload, out.service, out.source, out.destination) == (
        "outbound", "shop/web-0", "shop/api", "shop/web-0", "10.0.0.5:80")
    assert (out.method, out.authority, out.path, out.status, out.protocol) == (
        "GET", "api", "/x", 200, "HTTP/1.1")
    assert (out.latency_ms, out.bytes_in, out.bytes_out) == (250.0, 3, 7)
    assert out.ts_ms == 1_700_000_000_000 - 250
    assert (inn.direction, inn.service, inn.source, inn.mtls) == (
        "inbound", "shop/web", "spiffe://td/ns/shop/sa/caller", True)
    plain = request("in")
    h.see(plain)
    (r,) = records(h)
    assert (r.source, r.mtls) == ("10.0.0.9:4242", False)


def test_only_matching_requests_are_recorded() -> None:
    h, _ = hub()
    start(h, "a", method="POST")
    start(h, "b", path_prefix="/api/", status_min=500, status_max=599)
    start(h, "c", direction="inbound", service="shop/web")
    start(h, "d", workload="shop/other")
    start(h, "e", authority="API")
    h.see(request(method=b"POST", status=201))
    h.see(request(path=b"/api/v1", status=503))
    h.see(request(path=b"/api/v1", status=200))
    h.see(request("in", path=b"/z"))
    h.see(request("unknown-listener"))
    got: dict[str, list[str]] = {}
    for b in h.flush():
        got[b.id] = [r.path for r in b.records]
    assert got == {"a": ["/x"], "b": ["/api/v1"], "c": ["/z"],
                   "e": ["/x", "/api/v1", "/api/v1", "/z"]}


def test_the_bucket_bounds_records_and_counts_the_rest() -> None:
    h, clock = hub()
    start(h, rate=2)
    for _ in range(50):
        h.see(request())
    (batch,) = h.flush()
    assert (len(batch.records), batch.dropped) == (2, 48)
    clock.now += 1.0  # two more tokens
    for _ in range(5):
        h.see(request())
    (batch,) = h.flush()
    assert (len(batch.records), batch.dropped) == (2, 3)


def test_pending_records_are_bounded_even_at_the_highest_rate() -> None:
    h, clock = hub()
    start(h, rate=1e9)  # clamped to MAX_RATE: a token every 10 ms
    for _ in range(10 * MAX_RECORDS_PER_BATCH):
        clock.now += 0.01
        h.see(request())
    (batch,) = h.flush()
    assert len(batch.records) == MAX_RECORDS_PER_BATCH
    assert batch.dropped == 9 * MAX_RECORDS_PER_BATCH


def test_a_tap_ends_at_its_deadline_unless_renewed() -> None:
    h, clock = hub()
    start(h, "short", expires_ms=1000)
    start(h, "renewed", expires_ms=1000)
    clock.now += 0.9
    start(h, "renewed", expires_ms=1000)
    clock.now += 0.2
    h.see(request())
    batches = h.flush()
    assert [(b.id, b.ended, len(b.records)) for b in batches] == [
        ("short", "expired", 0), ("renewed", "", 1)]
    assert [t.id for t in h.taps] == ["renewed"]
    start(h, "long", expires_ms=10**9)  # capped: two minutes
    clock.now += 121
    assert [b.ended for b in h.flush()] == ["expired", "expired"]
    assert h.taps == ()


def test_taps_are_capped_and_a_bad_id_is_refused() -> None:
    h, _ = hub()
    for i in range(MAX_TAPS):
        start(h, f"t{i}")
    assert not h.start(TapStart(id="one-more"))
    assert not h.start(TapStart(id=""))
    assert not h.start(TapStart(id="x" * 500))
    assert h.refused == 3 and len(h.taps) == MAX_TAPS
    ended = [b for b in h.flush() if b.ended]
    assert [b.id for b in ended] == ["one-more", "", "x" * 64]
    assert "refused" in ended[0].ended
    h.stop("t0")
    assert len(h.taps) == MAX_TAPS - 1
    h.clear()
    assert h.taps == () and h.flush() == []


def test_credentials_are_never_in_a_record_and_headers_only_when_asked() -> None:
    h, _ = hub()
    start(h, "with", headers=True)
    start(h, "without")
    secret = [(b"Authorization", b"Bearer tok-9f8e7d"), (b"cookie", b"sid=c00k1e"),
              (b"proxy-authorization", b"Basic x"), (b"x-long", b"v" * 1000),
              (b"x-plain", b"ok")]
    h.see(request(headers=secret))
    by_id = {b.id: b.records[0] for b in h.flush()}
    assert by_id["without"].headers == []
    hdrs = dict(by_id["with"].headers)
    assert hdrs["authorization"] == hdrs["cookie"] == hdrs["proxy-authorization"] == REDACTED
    assert hdrs["x-plain"] == "ok" and len(hdrs["x-long"]) == 256 + 3
    assert "tok-9f8e7d" not in repr(by_id["with"]) and "c00k1e" not in repr(by_id["with"])


def test_a_nan_or_huge_rate_is_clamped() -> None:
    h, _ = hub()
    start(h, rate=float("nan"))
    h.see(request())
    h.see(request())
    (batch,) = h.flush()
    assert (len(batch.records), batch.dropped) == (1, 1)


def test_a_flood_of_starts_queues_a_bounded_number_of_answers() -> None:
    h, _ = hub()
    for i in range(10_000):
        h.start(TapStart(id=f"t{i}"))
    assert len(h.taps) == MAX_TAPS and h.refused == 10_000 - MAX_TAPS
    answers = h.flush()
    assert len([b for b in answers if b.ended]) == MAX_TAPS  # the rest only counted
    assert all(b.id for b in answers)


GRPC = [(b"content-type", b"application/grpc+proto"), (b"te", b"trailers")]


def test_a_grpc_call_is_recorded_with_its_status_as_the_golden_metrics_count_it() -> None:
    """ADR 0119: the status sent; CANCELLED when the caller left; INTERNAL for a 200 without
    one; gRPC's mapping of an HTTP status; nothing for a request that is not a gRPC call (an
    HTTP/1 request with gRPC's content type is not one, as for the golden metrics)."""
    h, _ = hub()
    start(h)
    for r in (request(version=b"2", headers=GRPC, grpc_status="14"),
              request(version=b"2", headers=GRPC, grpc_status="0"),
              request(version=b"2", headers=GRPC, grpc_status="77"),
              request(version=b"2", headers=GRPC, flags="DC"),
              request(version=b"2", headers=GRPC),
              request(version=b"2", headers=GRPC, status=503),
              request(version=b"2"),
              request(headers=GRPC, grpc_status="14")):
        h.see(r)
    assert [r.grpc_status for r in records(h)] == ["14", "0", "2", "1", "13", "14", "", ""]
