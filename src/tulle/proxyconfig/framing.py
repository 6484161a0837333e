"""Length-prefixed frames for the proxy stream, sans I/O: bytes in, whole frame bodies out.

A frame is a 4-byte big-endian length and that many bytes of body.  This module knows nothing
about what a body means (`stream.py` decodes the message envelope); it only bounds what a peer
can make us buffer, and refuses the bound at the length prefix, before any of the body arrives.
Both ends of the stream use it: the control plane and the proxy's agent.
"""

from __future__ import annotations

MAX_FRAME = 64 * 1024 * 1024
"""Largest frame once a proxy has said `hello` (a snapshot of a big mesh is tens of MB)."""
HELLO_MAX_FRAME = 64 * 1024
"""Largest frame before `hello`: a hello is a few hundred bytes, and a peer that has not said
who it is must not make the control plane buffer megabytes."""


class FrameError(ValueError):
    """The peer sent bytes that are not a valid frame; the stream must be closed."""


def frame(body: bytes) -> bytes:
    """One frame around `body`."""
    return len(body).to_bytes(4, "big") + body


class FrameSplitter:
    """Feed bytes, get frame bodies.  Raises FrameError on an oversized frame."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    @property
    def max_frame(self) -> int:
        return self._max

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        """Raise (or lower) the bound for the frames still to come (e.g. after `hello`)."""
        self._max = value

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        while len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if n > self._max:
                raise FrameError(f"frame of {n} bytes exceeds the {self._max} byte limit")
            if len(buf) < 4 + n:
                break
            out.append(bytes(buf[4:4 + n]))
            del buf[:4 + n]
        return out
