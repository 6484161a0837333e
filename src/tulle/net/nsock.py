"""Sockets opened inside another network namespace, from a process that stays in its own.

A socket belongs to the network namespace it was created in for its whole life, whichever
thread or process uses it later.  So a process in the host's namespace can serve or call
something inside a testbed namespace without any route between the two: a short-lived thread
enters the namespace (`setns(2)` changes only the calling thread's), creates the socket, and
hands it back.  `tulle demo` uses this to serve the control plane's proxy stream inside the
testbed while its REST API stays on the host's 127.0.0.1 (ADR 0049), and to read the proxies'
admin /metrics, which listen on each namespace's own loopback.

Linux only, needs CAP_SYS_ADMIN (root).  Python 3.11 has no `os.setns`, hence ctypes.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import Final, TypeVar

CLONE_NEWNET: Final = 0x40000000
NETNS_DIR: Final = "/run/netns"
MAX_BODY: Final = 4 * 1024 * 1024
"""The most `http_get` reads: a proxy's /metrics is well under this."""

T = TypeVar("T")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run_in(namespace: str, fn: Callable[[], T]) -> T:
    """`fn()` in a fresh thread inside the named namespace (`ip netns` name); its result or
    its exception.  The thread ends afterwards, so no pooled thread keeps the namespace."""
    if "/" in namespace or namespace in ("", ".", ".."):
        raise ValueError(f"{namespace!r} is not a network namespace name")
    box: dict[str, object] = {}

    def body() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=body, name=f"netns-{namespace}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def listen_in(namespace: str, host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A TCP socket listening on `host:port` inside `namespace` (inheritable: to be handed to
    a child process with `pass_fds`)."""
    def make() -> socket.socket:
        sock = socket.create_server((host, port), backlog=backlog)
        sock.set_inheritable(True)
        return sock
    return run_in(namespace, make)


def connect_in(namespace: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to `host:port` made from inside `namespace`."""
    return run_in(namespace, lambda: socket.create_connection((host, port), timeout=timeout))


def http_get(namespace: str, host: str, port: int, path: str,
             timeout: float = 5.0) -> tuple[int, str]:
    """One HTTP/1.0 GET from inside `namespace`: (status, body).  For the proxies' admin
    endpoints, which listen on the namespace's own loopback; a body past MAX_BODY is cut."""
    with connect_in(namespace, host, port, timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("ascii"))
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BODY:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"{host}:{port}{path}: not an HTTP answer")
    return int(parts[1]), body.decode("utf-8", "replace")
