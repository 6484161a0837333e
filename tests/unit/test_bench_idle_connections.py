"""`bench.idle_connections.open_idle`: connections left open after one full exchange, against a
real keep-alive server on loopback, and nothing left open when the server misbehaves."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from bench.idle_connections import open_idle, spread

BODY = b"x" * 1024


class KeepAlive(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []
    close_after_head = False

    def do_GET(self) -> None:  # noqa: N802 (the http.server spelling)
        type(self).seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if type(self).close_after_head:
            self.close_connection = True
            return
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    KeepAlive.seen = []
    KeepAlive.close_after_head = False
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_each_connection_made_one_exchange_and_stays_open(
        server: http.server.ThreadingHTTPServer) -> None:
    socks = open_idle(server.server_address[1], 5)
    try:
        assert len(socks) == 5
        assert KeepAlive.seen == ["/1k"] * 5
        for s in socks:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):  # open, and nothing more was sent to it
                s.recv(1)
    finally:
        for s in socks:
            s.close()


def test_a_connection_closed_mid_body_fails_the_run_and_closes_the_others(
        server: http.server.ThreadingHTTPServer) -> None:
    KeepAlive.close_after_head = True
    with pytest.raises(RuntimeError, match="closed an idle connection"):
        open_idle(server.server_address[1], 3)
    assert KeepAlive.seen == ["/1k"]  # it stopped at the first failure


def test_spread_is_the_median_with_the_range() -> None:
    assert spread([0.5, 0.1, 0.3]) == {"median": 0.3, "min": 0.1, "max": 0.5}
