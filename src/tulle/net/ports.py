"""Who holds a local TCP port, so that "address in use" names the port, the flag that moves it
and the process in the way (issue: a second `tulle proxy run` died with a traceback).

Linux only, stdlib only: the listening socket's inode from /proc/net/tcp{,6}, then the process
whose /proc/PID/fd links to `socket:[inode]`.  Another user's processes may not be readable;
then the port is named without its holder.  Bounded: one pass over /proc.
"""

from __future__ import annotations

import errno
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"


@dataclass(frozen=True, slots=True)
class Wanted:
    """A port a command is about to bind, and the option that changes it."""

    address: str
    port: int
    what: str
    flag: str


def listening_inodes(port: int) -> set[int]:
    """Inodes of the sockets listening on `port` (Linux /proc/net/tcp and tcp6)."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == _LISTEN and int(f[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(f[9]))
    return found


def holder(port: int) -> str | None:
    """`pid 1234 (tulle proxy run ...)` for the process listening on `port`, if it can tell."""
    inodes = {f"socket:[{i}]" for i in listening_inodes(port)}
    if not inodes:
        return None
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                    cmd = " ".join(" ".join(a.decode(errors="replace").split())
                                   for a in raw.split(b"\0") if a)
                    return f"pid {pid} ({cmd[:120] or '?'})"
            except OSError:
                continue
    return None


def in_use(w: Wanted) -> str:
    """The message for `w` found taken."""
    who = holder(w.port)
    return (f"{w.what} {w.address}:{w.port} is already in use"
            + (f" by {who}" if who else "")
            + f"; stop that process or choose another port with {w.flag}")


def first_taken(wanted: list[Wanted]) -> str | None:
    """The message for the first of `wanted` another process listens on (None: all free).
    Binds and closes at once with SO_REUSEADDR, as the real listener will; port 0 is skipped."""
    for w in wanted:
        if w.port == 0:
            continue
        family = socket.AF_INET6 if ":" in w.address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((w.address, w.port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return in_use(w)
                if exc.errno == errno.EADDRNOTAVAIL:
                    return (f"{w.what} {w.address}:{w.port}: no interface has that address; "
                            f"change it with {w.flag.replace('port', 'address')}")
                raise
    return None


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the source ports of outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


class _Picker:
    """Ports below the ephemeral range, in an order of this process's own, each once."""

    def __init__(self) -> None:
        low, high = _ephemeral_range()
        self.ports = [p for p in range(10_000, 30_000) if not low <= p <= high]
        random.Random(os.getpid()).shuffle(self.ports)
        self.next = 0


_picker: _Picker | None = None


def unused_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing is bound to on `address`, for a listener to bind a moment later.

    Why not port 0's pick: the kernel takes that from its ephemeral range, where any
    connection opened before the listener binds (a sidecar dialling its control plane, an
    HTTP client) may get the same port as its source port, and the listener then fails with
    "address already in use" (a CI run lost a sidecar's listener that way).  These ports come
    from 10000-29999 outside the ephemeral range, shuffled per process, each handed out once
    per process (then the order starts over), and only after a bind to it succeeds now.
    For the demo, the tests and the benchmarks, which start listeners they choose ports for.
    """
    global _picker
    picker = _picker or _Picker()
    _picker = picker
    ports = picker.ports
    for _ in range(len(ports)):
        port = ports[picker.next % len(ports)]
        picker.next += 1
        with socket.socket() as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no unused TCP port on {address} below the ephemeral range")


__all__ = ["Wanted", "first_taken", "holder", "in_use", "listening_inodes", "unused_port"]
