"""Parsing what getsockopt(SO_ORIGINAL_DST) returns; reading it from a socket that was not NATed."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from tulle.net.origdst import original_destination, parse_sockaddr


def sockaddr_in(ip: str, port: int) -> bytes:
    # struct sockaddr_in: sa_family_t (host order), in_port_t (network), in_addr, 8 bytes zero.
    return struct.pack("<H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)


def sockaddr_in6(ip: str, port: int, scope: int = 0) -> bytes:
    return (struct.pack("<H", socket.AF_INET6) + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, ip) + struct.pack("<I", scope))


def test_ipv4_sockaddr() -> None:
    assert parse_sockaddr(sockaddr_in("10.1.2.3", 8080)) == ("10.1.2.3", 8080)


def test_ipv6_sockaddr() -> None:
    assert parse_sockaddr(sockaddr_in6("fd00::1:2", 443)) == ("fd00::1:2", 443)


def test_port_is_network_order() -> None:
    assert parse_sockaddr(sockaddr_in("127.0.0.1", 0x1F90)) == ("127.0.0.1", 8080)
    assert parse_sockaddr(sockaddr_in("127.0.0.1", 1)) == ("127.0.0.1", 1)


def test_garbage_is_none() -> None:
    assert parse_sockaddr(b"") is None
    assert parse_sockaddr(b"\x07\x00" + bytes(14)) is None
    assert parse_sockaddr(struct.pack("<H", socket.AF_INET6) + bytes(10)) is None


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_any_ipv4_round_trips(ip: object, port: int) -> None:
    assert parse_sockaddr(sockaddr_in(str(ip), port)) == (str(ip), port)


@given(st.binary(max_size=40))
def test_random_bytes_never_raise(raw: bytes) -> None:
    parse_sockaddr(raw)


def test_a_connection_that_was_not_redirected() -> None:
    # On loopback with no NAT the kernel either has no conntrack entry (ENOENT -> None) or
    # reports the socket's own local address.  Never anything else.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with socket.create_connection(srv.getsockname()) as cli:
            conn, _ = srv.accept()
            with conn:
                got = original_destination(conn)
                assert got in (None, conn.getsockname())
                assert cli.getpeername() == conn.getsockname()
