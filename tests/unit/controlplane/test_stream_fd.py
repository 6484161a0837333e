"""`tulle control-plane run --stream-fd`: only an inherited, listening TCP socket is taken."""

from __future__ import annotations

import os
import socket

import pytest

from tulle.controlplane.main import ControlPlane, inherited_listener


def test_a_listening_socket_is_served_with_its_own_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        fd = os.dup(listener.fileno())
        cp = ControlPlane("memory", stream_fd=fd)
        assert cp.stream_socket is not None
        assert (cp.stream_host, cp.stream_port) == listener.getsockname()
        assert not cp.stream_socket.getblocking()
        cp.stream_socket.close()


def test_a_socket_that_does_not_listen_is_refused() -> None:
    with socket.socket() as s:
        with pytest.raises(ValueError, match=rf"--stream-fd {s.fileno()}: not a listening TCP"):
            inherited_listener(s.fileno())
        assert s.fileno() >= 0  # not closed behind the caller's back


def test_something_that_is_not_a_socket_is_refused() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match=rf"--stream-fd {r}: "):
            inherited_listener(r)
    finally:
        os.close(r)
        os.close(w)


def test_a_udp_socket_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="not a listening TCP socket"):
            inherited_listener(s.fileno())


# -- attack review A2 (ADR 0060): held, pinned here.

def test_a_listening_unix_socket_is_refused_and_left_open() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d, socket.socket(socket.AF_UNIX) as u:
        u.bind(f"{d}/s")
        u.listen()
        with pytest.raises(ValueError, match="not a listening TCP socket"):
            inherited_listener(u.fileno())
        assert u.fileno() >= 0 and u.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)


def test_an_fd_that_is_not_open_is_refused() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(ValueError, match=rf"--stream-fd {r}: Bad file descriptor"):
        inherited_listener(r)
