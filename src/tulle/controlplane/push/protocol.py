"""The proxy stream's wire format: length-prefixed msgspec JSON messages, sans I/O.

Why not gRPC/xDS: grpcio + protobuf add ~10 MB RSS to every proxy (measured), a third of its
budget (ADR 0009).  Every proxy already carries msgspec; a frame is a 4-byte big-endian length
and one JSON object tagged by `type`.  The same bytes run over plain TCP today and over mTLS
once identities exist.  An xDS adapter for Envoy and proxyless gRPC (ROADMAP 7) is a separate
endpoint of the control plane, where grpcio's cost is acceptable.

Exchange:

    proxy -> cp   Hello(node, workload, last_version)
    cp -> proxy   Snapshot(version, config)             full config, first and on resync
    cp -> proxy   DeltaMsg(delta)                       afterwards, against the last ACKed version
    proxy -> cp   Ack(version) | Nack(version, reason)  for each Snapshot/Delta
    either        Ping / Pong                           keepalive
    cp -> proxy   Error(reason)                         then close (unknown workload, bad auth)
"""

from __future__ import annotations

from typing import Any

import msgspec

from tulle.proxyconfig.delta import Delta
from tulle.proxyconfig.model import ProxyConfig

MAX_FRAME = 64 * 1024 * 1024
"""Largest frame once a proxy has said `hello` (a snapshot of a big mesh is tens of MB)."""
HELLO_MAX_FRAME = 64 * 1024
"""Largest frame before `hello`: a hello is a few hundred bytes, and a peer that has not said
who it is must not make the control plane buffer megabytes."""
PROTOCOL_VERSION = 1


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class WorkloadInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a proxy says about the workload it fronts, to register it."""

    name: str
    namespace: str = "default"
    address: str = ""
    service_account: str = "default"
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    ports: list[dict[str, Any]] = msgspec.field(default_factory=list)
    zone: str = ""
    outbound_port: int = 0
    """The loopback port of the outbound listener (0: the mesh default, 15001)."""


class Hello(_Msg, frozen=True, tag="hello"):
    workload: WorkloadInfo
    last_version: str = ""
    """The version the proxy is serving (from its disk cache), so a resync can be a no-op."""
    protocol: int = PROTOCOL_VERSION
    token: str = ""


class Snapshot(_Msg, frozen=True, tag="snapshot"):
    version: str
    config: ProxyConfig
    """Typed on the wire: msgspec encodes it ~15x faster than plain values, and the proxy's
    decode checks every field (with its path) before the semantic check runs."""


class DeltaMsg(_Msg, frozen=True, tag="delta"):
    delta: Delta


class Ack(_Msg, frozen=True, tag="ack"):
    version: str


class Nack(_Msg, frozen=True, tag="nack"):
    version: str
    reason: str


class Ping(_Msg, frozen=True, tag="ping"):
    pass


class Pong(_Msg, frozen=True, tag="pong"):
    pass


class Error(_Msg, frozen=True, tag="error"):
    reason: str


Message = Hello | Snapshot | DeltaMsg | Ack | Nack | Ping | Pong | Error

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)


class FrameError(ValueError):
    """The peer sent bytes that are not a valid frame; the stream must be closed."""


def encode(msg: Message) -> bytes:
    body = _encoder.encode(msg)
    return len(body).to_bytes(4, "big") + body


class FrameDecoder:
    """Feed bytes, get messages.  Raises FrameError on an oversized or undecodable frame."""

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

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        buf = self._buf
        while len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if n > self._max:
                raise FrameError(f"frame of {n} bytes exceeds the {self._max} byte limit")
            if len(buf) < 4 + n:
                break
            body = bytes(buf[4:4 + n])
            del buf[:4 + n]
            try:
                out.append(_decoder.decode(body))
            except msgspec.DecodeError as exc:
                raise FrameError(f"undecodable message: {exc}") from exc
        return out
