"""Sockets opened inside a network namespace by a process that stays in the host's (ADR 0049):
they live in that namespace, reachable there and not from the host."""

from __future__ import annotations

import socket
import threading

import pytest
from tests.support.netns import testbed  # noqa: F401

from tulle.net import nsock
from tulle.net.netns import Testbed

pytestmark = pytest.mark.netns


def test_listen_connect_and_get_inside_a_namespace(testbed: Testbed) -> None:  # noqa: F811
    a = testbed.node("10.231.0.2/24")
    b = testbed.node("10.231.0.3/24")
    server = nsock.listen_in(a.name, "10.231.0.2", 18080)
    assert server.get_inheritable()
    # The host has no 10.231.0.2, so the socket is not the host's: from b it answers.
    out = b.run(["python3", "-c", "import socket; socket.create_connection(('10.231.0.2', "
                 "18080), timeout=5).close(); print('ok')"])
    assert out.stdout.strip() == "ok"
    server.accept()[0].close()

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello from a")

    t = threading.Thread(target=answer)
    t.start()
    assert nsock.http_get(b.name, "10.231.0.2", 18080, "/") == (200, "hello from a")
    t.join(5)
    # The calling thread never left the host's namespace.
    with socket.socket() as s, pytest.raises(OSError):
        s.bind(("10.231.0.2", 0))
    server.close()


def test_errors_come_back_to_the_caller(testbed: Testbed) -> None:  # noqa: F811
    a = testbed.node("10.231.0.2/24")
    with pytest.raises(ConnectionRefusedError):
        nsock.connect_in(a.name, "127.0.0.1", 9, timeout=2)
    with pytest.raises(FileNotFoundError):
        nsock.run_in("tl-no-such-namespace", lambda: None)
    for bad in ("../etc", "", "a/b"):
        with pytest.raises(ValueError):
            nsock.run_in(bad, lambda: None)


def _serve_once(server: socket.socket, reply: bytes, repeat: int = 1) -> threading.Thread:
    def run() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            try:
                for _ in range(repeat):
                    conn.sendall(reply)
            except OSError:
                pass  # the client stopped reading: what the bound is for

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_http_get_is_bounded_against_a_hostile_peer(testbed: Testbed) -> None:  # noqa: F811
    a = testbed.node("10.231.0.2/24")
    server = nsock.listen_in(a.name, "10.231.0.2", 18081)
    try:
        # Not HTTP at all: refused with the reason, nothing parsed.
        _serve_once(server, b"\x16\x03\x01 garbage")
        with pytest.raises(OSError, match="not an HTTP answer"):
            nsock.http_get(a.name, "10.231.0.2", 18081, "/metrics")
        # An endless body: read up to the bound, then cut; memory stays bounded.
        chunk = b"x" * 65536
        t = _serve_once(server, b"HTTP/1.0 200 OK\r\n\r\n" + chunk, repeat=1000)
        status, body = nsock.http_get(a.name, "10.231.0.2", 18081, "/metrics")
        assert status == 200 and nsock.MAX_BODY <= len(body) <= nsock.MAX_BODY + 2 * len(chunk)
        t.join(10)
        # A peer that says nothing: the timeout ends the wait.
        held: list[tuple[socket.socket, object]] = []
        threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
        with pytest.raises(TimeoutError):
            nsock.http_get(a.name, "10.231.0.2", 18081, "/", timeout=0.5)
        for conn, _ in held:
            conn.close()
    finally:
        server.close()
