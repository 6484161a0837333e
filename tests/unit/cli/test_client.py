"""`--server` / `TULLE_SERVER`: HOST:PORT means http://, anything else that is not an http(s)
URL is a usage error saying the form expected (never urllib's "unknown url type"); a control
plane that resets the connection after the request went out is "cannot reach", as a refused
connect is."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import click
import pytest

from tulle.cli.client import DEFAULT_SERVER, APIError, call, server_url, stream


def test_host_port_means_http_and_a_trailing_slash_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TULLE_SERVER", raising=False)
    assert server_url("127.0.0.1:15681") == "http://127.0.0.1:15681"
    assert server_url("https://cp.example:443/") == "https://cp.example:443"
    assert server_url(None) == DEFAULT_SERVER
    monkeypatch.setenv("TULLE_SERVER", "localhost:9")
    assert server_url(None) == "http://localhost:9"


@pytest.mark.parametrize(("value", "says"), [
    ("ftp://cp:21", "expected http://HOST:PORT"),
    ("http://cp:http", "port is not a number"),
    ("http://cp:99999", "port is not a number"),
    ("http://cp:1/?a=b", "no query or fragment"),
    ("http://", "expected http://HOST:PORT"),
])
def test_anything_else_is_a_usage_error(value: str, says: str) -> None:
    with pytest.raises(click.UsageError) as exc:
        server_url(value)
    assert says in str(exc.value) and value in str(exc.value)


@pytest.fixture
def resetting_server() -> Iterator[str]:
    """Reads each request's first bytes, then resets the connection (SO_LINGER 0), as a
    control plane that stops mid-request does: nothing of an answer is sent."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.05)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():  # (bounded by the test's end: `done`)
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        srv.close()


def test_a_reset_after_the_request_is_cannot_reach_not_a_raw_error(
        resetting_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tulle get --watch` printed `error: ConnectionResetError: [Errno 104] ...` (and a plain
    call raised it raw) when the control plane stopped between the request and its answer:
    urllib wraps only errors before the request is sent."""
    monkeypatch.setenv("TULLE_TOKEN", "t")
    for attempt in (lambda: call(resetting_server, "GET", "/api/v1/resources/workloads"),
                    lambda: next(stream(resetting_server, "/api/v1/resources/workloads"))):
        with pytest.raises(APIError) as exc:
            attempt()
        assert str(exc.value).startswith(
            f"cannot reach the control plane at {resetting_server}: "), str(exc.value)


def test_the_apis_warning_headers_are_printed_on_stderr_as_text_only(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """ADR 0131: a read of resources carries `Warning: 299 - "text"` while an older proxy
    leaves out config in use; the CLI prints the text as kubectl does, and nothing a header
    carries can move the terminal (control characters are dropped); other codes are not ours."""
    import http.server

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            body = b'{"items": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Warning", '299 - "1 connected proxy leaves out\x1b[2J config"')
            self.send_header("Warning", '199 - "someone else\'s"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=srv.handle_request, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("TULLE_TOKEN", "t")
        got = call(f"http://127.0.0.1:{srv.server_address[1]}", "GET", "/api/v1/x")
    finally:
        thread.join(5)
        srv.server_close()
    assert got == {"items": []}
    err = capsys.readouterr().err
    assert err == "Warning: 1 connected proxy leaves out[2J config\n", err
