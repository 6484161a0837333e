"""One active health probe of one endpoint: HTTP, gRPC health, or a TCP connect (ADR 0040).

HTTP and gRPC probes go through the cluster's own pool for the endpoint, so they speak the
cluster's protocol with its TLS and mesh identity check, exactly as requests do (a check that
passed over plaintext while requests go over mTLS would prove nothing).  The gRPC probe is
`grpc.health.v1.Health/Check` on the proxy's own HTTP/2 client: its two protobuf messages are
one string field and one enum field, encoded here by hand (no protobuf dependency).  A TCP probe
opens a plain connection and closes it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tulle.dataplane.exchange import Headers, RequestHead, ResponseHead, TunnelStream, UpstreamError
from tulle.dataplane.upstream.lb import EndpointState
from tulle.proxyconfig.health import HealthCheck

if TYPE_CHECKING:
    from tulle.dataplane.upstream.cluster import ClusterRuntime

MAX_BODY = 4096
"""Bytes of a probe's response body kept (a gRPC health answer is 7)."""
GRPC_PATH = b"/grpc.health.v1.Health/Check"
SERVING = 1


def grpc_request(service: str) -> bytes:
    """A length-prefixed `HealthCheckRequest{service}`."""
    raw = service.encode()
    msg = b"" if not raw else b"\x0a" + _varint(len(raw)) + raw
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def grpc_status(body: bytes) -> int:
    """The `status` of a length-prefixed `HealthCheckResponse` (0 UNKNOWN when absent);
    -1 when the body is not one."""
    if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        return -1
    msg, i, status = body[5:], 0, 0
    while i < len(msg):
        key, i = _read_varint(msg, i)
        if key & 7 == 0:
            value, i = _read_varint(msg, i)
            if key >> 3 == 1:
                status = value
        elif key & 7 == 2:
            n, i = _read_varint(msg, i)
            i += n
        else:
            return -1
    return status if i == len(msg) else -1


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while i < len(b) and shift < 64:
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        if not c & 0x80:
            return value, i
        shift += 7
    return -1, len(b) + 1


class _Sink:
    """Collects one probe's response; `done` resolves to (status, body, trailers) or an error
    message."""

    def __init__(self, done: asyncio.Future[tuple[int, bytes, Headers] | str]) -> None:
        self.done = done
        self.status = 0
        self.body = bytearray()

    def _finish(self, value: tuple[int, bytes, Headers] | str) -> None:
        if not self.done.done():
            self.done.set_result(value)

    def on_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        self.status = head.status
        if end_stream:
            self._finish((head.status, b"", head.headers))  # (gRPC: a trailers-only answer)

    def on_informational(self, head: ResponseHead) -> None:
        pass

    def on_response_data(self, data: bytes) -> None:
        if len(self.body) < MAX_BODY:
            self.body += data[:MAX_BODY - len(self.body)]

    def on_response_end(self, trailers: Headers | None) -> None:
        self._finish((self.status, bytes(self.body), trailers or []))

    def on_read_end(self) -> None:
        pass

    def on_upstream_error(self, error: UpstreamError) -> None:
        self._finish(f"{error.flag} {error.detail}")

    def on_upgraded(self, head: ResponseHead, stream: TunnelStream) -> None:
        stream.close()
        self._finish("unexpected 101")

    def pause_request_body(self) -> None:
        pass

    def resume_request_body(self) -> None:
        pass


async def probe(rt: ClusterRuntime, ep: EndpointState, hc: HealthCheck) -> str:
    """Probe `ep` once; "" when it passed, else why it failed (for logs and the admin view)."""
    timeout = hc.timeout_ms / 1000
    if hc.type == "tcp":
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(asyncio.Protocol, ep.address, ep.port), timeout)
        except (OSError, TimeoutError) as exc:
            return f"connect: {exc.strerror if isinstance(exc, OSError) else 'timed out'}"
        transport.close()
        return ""
    authority = (hc.authority or ep.key).encode()
    if hc.type == "grpc":
        body = grpc_request(hc.grpc_service)
        head = RequestHead(b"POST", GRPC_PATH, authority, b"http",
                           [(b"content-type", b"application/grpc"), (b"te", b"trailers")],
                           content_length=len(body), version=b"2")
    else:
        body = b""
        head = RequestHead(b"GET", hc.path.encode(), authority, b"http",
                           [(b"user-agent", b"tulle-health-check")], content_length=0)
    done: asyncio.Future[tuple[int, bytes, Headers] | str] = (
        asyncio.get_running_loop().create_future())
    try:
        stream = rt.pool_for(ep).open_stream(head, _Sink(done), not body)
    except UpstreamError as err:
        return f"{err.flag} {err.detail}"
    if body:
        stream.send_data(body)
        stream.send_end()
    got: tuple[int, bytes, Headers] | str | None = None
    try:
        got = await asyncio.wait_for(done, timeout)
    except TimeoutError:
        return f"timed out after {timeout:g}s"
    finally:
        if got is None:
            # Timed out, or this probe was cancelled (its check changed, its endpoint or
            # cluster left): the try gives back its request slot, its endpoint's count and
            # its connection now.  Left to an endpoint that never answers, a cancelled probe
            # held them for ever (ADR 0106).
            stream.reset()
    if isinstance(got, str):
        return got
    status, data, trailers = got
    if hc.type == "http":
        ok = status in hc.expected_statuses if hc.expected_statuses else 200 <= status < 300
        return "" if ok else f"status {status}"
    grpc = dict(trailers).get(b"grpc-status", b"")
    if status != 200 or grpc != b"0":
        return f"grpc-status {grpc.decode('latin-1') or '-'} (HTTP {status})"
    serving = grpc_status(data)
    return "" if serving == SERVING else f"health status {serving}"
